"""LoRA editor: PEFT adapters on chosen modules, trained on the requests, returned as ΔW = u @ v."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
from torch import nn

from editing.adapters.lora import factor_tensors, lora_attached, lora_factors, trainable_parameters
from editing.adapters.targets import target_modules
from editing.adapters.training import adam_steps, chunked_answer_loss
from editing.batches import answer_batch
from editing.lora.hparams import LoRAHParams
from editing.protocol import EditContext, EditResult
from infra.domain import EditRequest
from infra.errors import InvalidInput

log = logging.getLogger(__name__)


def train_lora(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    hparams: Any,
    *,
    steps: int | None = None,
    lr: float | None = None,
    early_stop_loss: float | None = None,
    editor: str = "lora",
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[float]]:
    """Train fresh LoRA adapters on (prompt, answer) pairs; the model is left unchanged.

    `hparams` needs the fields of `LoRAHParams` (layers, modules, r, alpha, dropout, lr,
    weight_decay, batch_size, objective, seed); `steps`, `lr` and `early_stop_loss` override
    theirs. Returns (factors per weight, losses).
    """
    modules = target_modules(model, hparams.layers, hparams.modules, editor)
    device = next(model.parameters()).device
    batch = answer_batch(tokenizer, prompts, answers).to(device)
    objective = getattr(hparams, "objective", "target_new")
    with lora_attached(model, modules, r=hparams.r, alpha=hparams.alpha, dropout=hparams.dropout, seed=hparams.seed) as peft_model:
        losses = adam_steps(
            trainable_parameters(peft_model),
            lambda: chunked_answer_loss(peft_model, batch, hparams.batch_size, objective),
            steps=hparams.steps if steps is None else steps,
            lr=hparams.lr if lr is None else lr,
            weight_decay=hparams.weight_decay,
            early_stop_loss=hparams.early_stop_loss if early_stop_loss is None else early_stop_loss,
        )
        factors = lora_factors(peft_model)
    return factors, losses


class LoRAEditor:
    name = "lora"

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: LoRAHParams,
        context: EditContext | None = None,
    ) -> EditResult:
        if not requests:
            raise InvalidInput("lora: no edit requests")
        started = time.perf_counter()
        factors, losses = train_lora(model, tokenizer, [r.prompt for r in requests], [r.target_new for r in requests], hparams)
        log.info("lora: %d requests, %d steps, loss %.4f -> %.4f", len(requests), len(losses), losses[0], losses[-1])
        return EditResult(
            tensors=factor_tensors(factors),
            stats={"steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1],
                   "seconds": time.perf_counter() - started},
        )
