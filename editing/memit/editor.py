"""MEMIT editor: targets for the whole batch, then the closed-form update spread over layers."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
from torch import nn

from editing.locate.spread import check_layers, spread_update
from editing.locate.statistics import describe, moments_for
from editing.locate.weights import stored_bytes
from editing.memit.core import memit_factors
from editing.memit.hparams import MEMITHParams
from editing.protocol import EditContext, EditResult
from infra.domain import EditRequest
from infra.errors import InvalidInput

log = logging.getLogger(__name__)


class MEMITEditor:
    name = "memit"

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: MEMITHParams,
        context: EditContext | None = None,
    ) -> EditResult:
        if not requests:
            raise InvalidInput("memit: no edit requests")
        context = context or EditContext()
        started = time.perf_counter()
        layers = check_layers(model, hparams.layers, "memit")
        moments = moments_for(model, tokenizer, layers, hparams.mom2_n_samples, context)
        t_stats = time.perf_counter() - started

        def solve(layer: int, keys: torch.Tensor, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return memit_factors(keys, resid, moments[layer].mom2.to(keys.device), hparams.mom2_update_weight)

        was_training = model.training
        model.eval()
        try:
            out = spread_update(model, tokenizer, requests, hparams, solve, "memit", context=context)
        finally:
            model.train(was_training)
        stats = out.stats | {
            "statistics": describe(moments),
            "stats_seconds": round(t_stats, 3),
            "seconds": round(time.perf_counter() - started, 3),
            "stored_bytes": stored_bytes(out.tensors),
        }
        log.info("memit: %d requests in %.1fs", len(requests), stats["seconds"])
        return EditResult(tensors=out.tensors, stats=stats, unwritten=out.unreached)
