"""ROME editor: batched target vectors at one layer, then rank-one updates one fact at a time."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from torch import nn

from editing.architecture import layout_of
from editing.locate.context import context_prefixes
from editing.locate.keys import encode_prompts
from editing.locate.settings import target_settings
from editing.locate.spread import check_layers, keys_at
from editing.locate.statistics import describe, moments_for
from editing.locate.target_vectors import optimise_targets
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
            ctx_rows = encode_prompts(tokenizer, [r.prompt for r in requests], [r.subject for r in requests], hparams.fact_token, prefixes)
            keys = keys_at(model, layout, [layer], ctx_rows, hparams.batch_size)[layer]  # [n, d0]
            # δ on the block output at the fact token = a shift of this layer's MLP output there
            t0 = time.perf_counter()
            targets = optimise_targets(model, tokenizer, requests, layout.block_module(layer), target_settings(hparams), prefixes)
            t_targets = time.perf_counter() - t0
        finally:
            model.train(was_training)
        mom2 = moments[layer].mom2.to(keys.device) if layer in moments else None
        cinv_keys = regularised_inverse_apply(mom2, keys.T, hparams.mom2_ridge)  # [d0, n]
        u, v = rome_factors(keys.T, targets.delta.T, cinv_keys)
        tensors = packed(layout, layer, u, v, hparams.lowrank)
        stats = {
            "requests": len(requests),
            "layer": layer,
            "prefixes": len(prefixes),
            "target_steps": targets.steps,
            "target_nll_first": float(targets.nll_first.mean()),
            "target_nll_last": float(targets.nll_last.mean()),
            "target_seconds": round(t_targets, 3),
            "update_norm": float((u @ v).norm()),
            "statistics": describe(moments),
            "seconds": round(time.perf_counter() - started, 3),
            "stored_bytes": stored_bytes(tensors),
        }
        log.info("rome: %d requests in %.1fs", len(requests), stats["seconds"])
        return EditResult(tensors=tensors, state=dict(context.state), stats=stats)
