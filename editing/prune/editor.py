"""PRUNE editor: runs the base editor, accumulates its raw update, serves the restrained sum.

Carried state per edited parameter: `prune.raw.<param>` (the raw accumulated ΔW_N, [d1, d0]
float32 in the math orientation) and `prune.sigma_max.<param>` (σ_max of the original weight).
The delta of refresh N is F(ΔW_N) - F(ΔW_{N-1}), so the served weights are W + F(ΔW_N).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Sequence

import torch
from torch import nn

from editing.architecture import layout_of
from editing.prune.core import condition_number, restrain, spectral_norm
from editing.prune.hparams import PRUNEHParams
from editing.locate.weights import param, stored_bytes, update_of
from editing.protocol import EditContext, EditResult
from infra.domain import EditRequest
from infra.errors import InvalidInput

log = logging.getLogger(__name__)

RAW = "prune.raw.{name}"
SIGMA = "prune.sigma_max.{name}"


class PRUNEEditor:
    name = "prune"

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: PRUNEHParams,
        context: EditContext | None = None,
    ) -> EditResult:
        from editing.registry import get_editor, hparams_for_model

        if not requests:
            raise InvalidInput("prune: no edit requests")
        context = context or EditContext()
        started = time.perf_counter()
        base_hp = hparams_for_model(hparams.base, model, hparams.base_overrides)
        own = {k: v for k, v in context.state.items() if k.startswith("prune.")}
        base_context = dataclasses.replace(context, state={k: v for k, v in context.state.items() if not k.startswith("prune.")})
        base = get_editor(hparams.base).compute(model, tokenizer, requests, base_hp, base_context)
        transposed = layout_of(model).transposed_weights

        tensors: dict[str, torch.Tensor] = {}
        state: dict[str, torch.Tensor] = dict(base.state) | own
        per_param: dict[str, Any] = {}
        names = sorted({k.split("::", 1)[0] for k in base.tensors})
        for name in names:
            step = update_of(base.tensors, name).double()
            step = step.T if transposed else step  # [d1, d0]
            w_now = param(model, name).detach().double()
            w_now = w_now.T if transposed else w_now
            raw_t = own.get(RAW.format(name=name))
            sigma_t = own.get(SIGMA.format(name=name))
            if raw_t is None:
                raw_prev = torch.zeros_like(step)
                served_prev = torch.zeros_like(step)
                sigma_max = spectral_norm(w_now)  # the weights carry no PRUNE update yet
            else:
                if sigma_t is None or tuple(raw_t.shape) != tuple(step.shape):
                    raise InvalidInput(f"prune: carried state of {name} is incomplete or has shape {tuple(raw_t.shape)}, expected {tuple(step.shape)}")
                raw_prev = raw_t.double()
                sigma_max = float(sigma_t)
                served_prev, _ = restrain(raw_prev, sigma_max, hparams.reduce, hparams.alpha)
            w_orig = w_now - served_prev
            raw_new = raw_prev + step
            served_new, shrunk = restrain(raw_new, sigma_max, hparams.reduce, hparams.alpha)
            change = served_new - served_prev  # [d1, d0]
            change = change.T if transposed else change
            tensors[f"{name}::dense"] = change.float().contiguous()
            state[RAW.format(name=name)] = raw_new.float().contiguous()
            state[SIGMA.format(name=name)] = torch.tensor([sigma_max], dtype=torch.float64)
            per_param[name] = {
                "sigma_max_w": sigma_max,
                "sigma1_raw": spectral_norm(raw_new),
                "sigma1_served": spectral_norm(served_new),
                "shrunk": shrunk,
                "cond_raw": condition_number(w_orig + raw_new),
                "cond_served": condition_number(w_orig + served_new),
                "cond_orig": condition_number(w_orig),
            }
        stats = {
            "base": hparams.base,
            "base_hparams": dataclasses.asdict(base_hp),
            "base_stats": base.stats,
            "per_param": per_param,
            "seconds": round(time.perf_counter() - started, 3),
            "stored_bytes": stored_bytes(tensors),
        }
        log.info("prune(%s): %d requests; %s", hparams.base, len(requests),
                 {n: (round(p["cond_raw"], 1), round(p["cond_served"], 1)) for n, p in per_param.items()})
        return EditResult(tensors=tensors, state=state, stats=stats, unwritten=base.unwritten)
