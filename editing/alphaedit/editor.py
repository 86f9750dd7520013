"""AlphaEdit editor: MEMIT's layer loop with the null-space-projected solve and carried edited keys.

Carried state (one entry per edited layer, `alphaedit.keys.<layer>`, [d0, r] float32): a factor F
with F F^T = the sum of K K^T over the keys of every earlier edit, read on the edited model (the
keys themselves while r < d0; see `grow_key_factor`). It comes in through `EditContext.state` and
goes out, grown by this batch's keys, in `EditResult.state`. Deltas written before the factor form
carry the dense sum as `alphaedit.kkt.<layer>` [d0, d0]; it is read and converted.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
from torch import nn

from editing.alphaedit.core import alphaedit_factors, gram_factor, grow_key_factor
from editing.alphaedit.projector import cached_projector
from editing.alphaedit.hparams import AlphaEditHParams
from editing.architecture import layout_of
from editing.locate.spread import check_layers, keys_at, spread_update
from editing.locate.statistics import describe, moments_for
from editing.locate.weights import stored_bytes
from editing.protocol import EditContext, EditResult
from infra.domain import EditRequest
from infra.errors import InvalidInput

log = logging.getLogger(__name__)

STATE_KEY = "alphaedit.keys.{layer}"
DENSE_STATE_KEY = "alphaedit.kkt.{layer}"


def carried_factor(state: dict[str, torch.Tensor], layer: int, d0: int) -> torch.Tensor | None:
    """The carried key factor of `layer` in float64 [d0, r] (None before the first edit)."""
    factor = state.get(STATE_KEY.format(layer=layer))
    if factor is not None:
        if factor.dim() != 2 or factor.size(0) != d0:
            raise InvalidInput(f"alphaedit: carried keys of layer {layer} have shape {tuple(factor.shape)}, expected ({d0}, r)")
        return factor.double().cpu()
    dense = state.get(DENSE_STATE_KEY.format(layer=layer))
    if dense is not None:
        if tuple(dense.shape) != (d0, d0):
            raise InvalidInput(f"alphaedit: carried keys of layer {layer} have shape {tuple(dense.shape)}, expected {(d0, d0)}")
        return gram_factor(dense.double().cpu())
    return None


class AlphaEditEditor:
    name = "alphaedit"

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: AlphaEditHParams,
        context: EditContext | None = None,
    ) -> EditResult:
        if not requests:
            raise InvalidInput("alphaedit: no edit requests")
        context = context or EditContext()
        started = time.perf_counter()
        layers = check_layers(model, hparams.layers, "alphaedit")
        moments = moments_for(model, tokenizer, layers, hparams.mom2_n_samples, context)
        projectors: dict[int, torch.Tensor] = {}
        null_dims: dict[str, int] = {}
        projector_cached: dict[str, bool] = {}
        for layer in layers:
            projectors[layer], null_dims[str(layer)], projector_cached[str(layer)] = cached_projector(
                moments[layer], hparams.nullspace_threshold, hparams.nullspace_relative, context.cache
            )
            if null_dims[str(layer)] == 0:
                raise InvalidInput(
                    f"alphaedit: the null space of layer {layer}'s keys is empty at threshold "
                    f"{hparams.nullspace_threshold}; raise nullspace_threshold"
                )
        d0 = moments[layers[0]].mom2.size(0)
        factors = {layer: carried_factor(context.state, layer, d0) for layer in layers}
        carried = {
            layer: f @ f.T if f is not None else torch.zeros(d0, d0, dtype=torch.float64) for layer, f in factors.items()
        }
        t_stats = time.perf_counter() - started

        def solve(layer: int, keys: torch.Tensor, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            device = keys.device
            return alphaedit_factors(keys, resid, projectors[layer].to(device), hparams.l2, carried[layer].to(device))

        new_state: dict[str, torch.Tensor] = {}

        def remember_keys(edited: nn.Module, edited_layers: list[int], ctx_rows: Any) -> None:
            # keys of this batch, read on the model with the batch's updates in place
            keys = keys_at(edited, layout_of(edited), edited_layers, ctx_rows, hparams.batch_size)
            for layer, k in keys.items():
                new_state[STATE_KEY.format(layer=layer)] = grow_key_factor(factors[layer], k.double().cpu().T).float().contiguous()

        was_training = model.training
        model.eval()
        try:
            out = spread_update(model, tokenizer, requests, hparams, solve, "alphaedit", after=remember_keys, context=context)
        finally:
            model.train(was_training)
        # nothing written (every target unreached): the carried keys stay as they were
        state = new_state or {k: v for k, v in context.state.items() if k.startswith("alphaedit.")}
        stats = out.stats | {
            "statistics": describe(moments),
            "null_space_dim": null_dims,
            "projector_cached": projector_cached,
            "stats_seconds": round(t_stats, 3),
            "seconds": round(time.perf_counter() - started, 3),
            "stored_bytes": stored_bytes(out.tensors),
            "state_bytes": stored_bytes(new_state),
        }
        log.info("alphaedit: %d requests in %.1fs, null-space dims %s", len(requests), stats["seconds"], null_dims)
        return EditResult(tensors=out.tensors, state=state, stats=stats, unwritten=out.unreached)
