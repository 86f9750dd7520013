"""ROME editor: batched target vectors at one layer, then rank-one updates one fact at a time."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
from torch import nn

from editing.architecture import layout_of
from editing.locate.context import context_prefixes
from editing.locate.keys import encode_prompts
from editing.locate.spread import batch_targets, check_layers, keys_at, unreached_requests
from editing.locate.statistics import describe, moments_for
from editing.locate.weights import packed, stored_bytes
from editing.protocol import EditContext, EditResult
from editing.rome.core import regularised_inverse_apply, rome_factors
from editing.rome.hparams import ROMEHParams
from infra.domain import EditRequest
from infra.errors import InvalidInput

log = logging.getLogger(__name__)


class ROMEEditor:
    name = "rome"

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: ROMEHParams,
        context: EditContext | None = None,
    ) -> EditResult:
        if not requests:
            raise InvalidInput("rome: no edit requests")
        context = context or EditContext()
        started = time.perf_counter()
        layout = layout_of(model)
        layer = check_layers(model, [hparams.layer], "rome")[0]
        moments = moments_for(model, tokenizer, [layer], hparams.mom2_n_samples, context) if hparams.mom2_adjustment else {}
        was_training = model.training
        model.eval()
        try:
            prefixes = context_prefixes(model, tokenizer, hparams.context_templates, seed=hparams.seed)
            # δ on the block output at the fact token = a shift of this layer's MLP output there
            t0 = time.perf_counter()
            all_targets, from_cache = batch_targets(model, tokenizer, requests, layout.block_module(layer), hparams, prefixes, context)
            t_targets = time.perf_counter() - t0
            unreached = unreached_requests(all_targets, hparams.reach_nll)
            kept = [i for i in range(len(requests)) if i not in unreached]
            if kept:
                ctx_rows = encode_prompts(tokenizer, [requests[i].prompt for i in kept], [requests[i].subject for i in kept],
                                          hparams.fact_token, prefixes)
                keys = keys_at(model, layout, [layer], ctx_rows, hparams.batch_size)[layer]  # [n, d0]
        finally:
            model.train(was_training)
        base_stats = {"requests": len(requests), "unreached": len(unreached), "targets_from_cache": from_cache,
                      "layer": layer, "prefixes": len(prefixes), "target_steps": all_targets.steps,
                      "target_nll_first": float(all_targets.nll_first.mean()),
                      "target_nll_last": float(all_targets.nll_last.mean()), "target_seconds": round(t_targets, 3)}
        if not kept:
            return EditResult(tensors={}, stats=base_stats, unwritten=unreached)
        shift = all_targets.delta[torch.tensor(kept, device=all_targets.delta.device)]
        mom2 = moments[layer].mom2.to(keys.device) if layer in moments else None
        cinv_keys = regularised_inverse_apply(mom2, keys.T, hparams.mom2_ridge)  # [d0, n]
        u, v = rome_factors(keys.T, shift.T, cinv_keys)
        tensors = packed(layout, layer, u, v, hparams.lowrank)
        stats = base_stats | {
            "update_norm": float((u @ v).norm()),
            "statistics": describe(moments),
            "seconds": round(time.perf_counter() - started, 3),
            "stored_bytes": stored_bytes(tensors),
        }
        log.info("rome: %d requests in %.1fs", len(requests), stats["seconds"])
        return EditResult(tensors=tensors, stats=stats, unwritten=unreached)
