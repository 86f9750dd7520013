"""F-Learning editor: learn the old facts, subtract λ times that change, learn the new facts.

The model is modified only temporarily (θ' for the learning phase) and restored bit for bit.
Requests without a `target_true` (pure insertions) take part in learning only.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from editing.adapters.lora import factor_tensors
from editing.adapters.targets import target_modules, weight_names
from editing.adapters.training import chunked_answer_loss, dense_finetune
from editing.batches import answer_batch
from editing.flearning.core import combined_dense, combined_factors, forget_dense
from editing.flearning.hparams import FLearningHParams
from editing.lora.editor import train_lora
from editing.protocol import EditContext, EditResult
from editing.trainable import only_these_trainable
from infra.domain import EditRequest
from infra.errors import InvalidInput

log = logging.getLogger(__name__)


@contextmanager
def subtracted(model: nn.Module, updates: Mapping[str, torch.Tensor], lam: float) -> Iterator[None]:
    """Temporarily set each named weight to θ − λ ΔW; the exact original tensors come back afterwards."""
    params = dict(model.named_parameters())
    saved = {name: params[name].detach().clone() for name in updates}
    try:
        with torch.no_grad():
            for name, delta in updates.items():
                params[name].copy_(forget_dense(params[name].detach(), delta.to(params[name].device), lam))
        yield
    finally:
        with torch.no_grad():
            for name, tensor in saved.items():
                params[name].copy_(tensor)


class FLearningEditor:
    name = "flearning"

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: FLearningHParams,
        context: EditContext | None = None,
    ) -> EditResult:
        if not requests:
            raise InvalidInput("flearning: no edit requests")
        started = time.perf_counter()
        old = [r for r in requests if r.target_true is not None and r.target_true != r.target_new]
        forgetting = bool(old) and hparams.lam > 0 and hparams.forget_steps > 0
        new_prompts, new_answers = [r.prompt for r in requests], [r.target_new for r in requests]
        was_training = model.training
        model.eval()
        try:
            if hparams.variant == "full":
                tensors, old_losses, new_losses = self._full(model, tokenizer, old, new_prompts, new_answers, hparams, forgetting)
            else:
                tensors, old_losses, new_losses = self._lora(model, tokenizer, old, new_prompts, new_answers, hparams, forgetting)
        finally:
            model.train(was_training)
        log.info("flearning(%s): %d requests (%d with an old object), forget %d steps, learn %d steps, loss %.4f -> %.4f",
                 hparams.variant, len(requests), len(old), len(old_losses), len(new_losses), new_losses[0], new_losses[-1])
        return EditResult(
            tensors=tensors,
            stats={"forget_steps": len(old_losses), "forget_loss_first": old_losses[0] if old_losses else None,
                   "forget_loss_last": old_losses[-1] if old_losses else None, "steps": len(new_losses),
                   "loss_first": new_losses[0], "loss_last": new_losses[-1], "forgotten": len(old) if forgetting else 0,
                   "seconds": time.perf_counter() - started},
        )

    @staticmethod
    def _full(model, tokenizer, old, new_prompts, new_answers, hparams, forgetting):  # noqa: ANN001, ANN205
        names = weight_names(target_modules(model, hparams.layers, hparams.modules, "flearning"))
        all_params = dict(model.named_parameters())
        params = {name: all_params[name] for name in names}
        device = next(model.parameters()).device
        adam = dict(lr=hparams.lr, weight_decay=hparams.weight_decay)
        old_deltas: dict[str, torch.Tensor] = {}
        old_losses: list[float] = []
        with only_these_trainable(model, names):
            if forgetting:
                old_batch = answer_batch(tokenizer, [r.prompt for r in old], [r.target_true for r in old]).to(device)
                old_deltas, old_losses = dense_finetune(
                    params, lambda: chunked_answer_loss(model, old_batch, hparams.batch_size, hparams.objective),
                    steps=hparams.forget_steps, lr=hparams.forget_lr, weight_decay=hparams.weight_decay, early_stop_loss=0.0)
            new_batch = answer_batch(tokenizer, new_prompts, new_answers).to(device)
            with subtracted(model, old_deltas, hparams.lam):
                new_deltas, new_losses = dense_finetune(
                    params, lambda: chunked_answer_loss(model, new_batch, hparams.batch_size, hparams.objective),
                    steps=hparams.steps, early_stop_loss=hparams.early_stop_loss, **adam)
        tensors = {f"{name}::dense": combined_dense(old_deltas.get(name), new_deltas[name], hparams.lam) for name in names}
        return tensors, old_losses, new_losses

    @staticmethod
    def _lora(model, tokenizer, old, new_prompts, new_answers, hparams, forgetting):  # noqa: ANN001, ANN205
        old_factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        old_losses: list[float] = []
        if forgetting:
            old_factors, old_losses = train_lora(
                model, tokenizer, [r.prompt for r in old], [r.target_true for r in old], hparams,
                steps=hparams.forget_steps, lr=hparams.forget_lr, early_stop_loss=0.0, editor="flearning")
        old_updates = {name: u @ v for name, (u, v) in old_factors.items()}
        with subtracted(model, old_updates, hparams.lam):
            new_factors, new_losses = train_lora(model, tokenizer, new_prompts, new_answers, hparams, editor="flearning")
        factors = {name: combined_factors(old_factors.get(name), f, hparams.lam) for name, f in new_factors.items()}
        return factor_tensors(factors), old_losses, new_losses
