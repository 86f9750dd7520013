"""FT-L editor: hooks nothing, just trains the chosen MLP output weights on the requests."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from editing.architecture import layout_of, num_layers
from editing.adapters.training import Accumulated, chunked_answer_loss
from editing.batches import answer_batch
from editing.ft.core import constrained_finetune
from editing.ft.hparams import FTHParams
from editing.protocol import EditContext, EditResult
from editing.trainable import only_these_trainable
from infra.domain import EditRequest
from infra.errors import InvalidInput

log = logging.getLogger(__name__)


class FTEditor:
    name = "ft"

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: FTHParams,
        context: EditContext | None = None,
    ) -> EditResult:
        if not requests:
            raise InvalidInput("ft: no edit requests")
        layout = layout_of(model)
        depth = num_layers(model)
        bad = [layer for layer in hparams.layers if not 0 <= layer < depth]
        if bad:
            raise InvalidInput(f"ft: layers {bad} out of range for a {depth}-layer model")
        names = [layout.mlp_out_weight(layer) for layer in hparams.layers]
        all_params = dict(model.named_parameters())
        params = {name: all_params[name] for name in names}
        device = next(model.parameters()).device
        torch.manual_seed(hparams.seed)
        batch = answer_batch(tokenizer, [r.prompt for r in requests], [r.target_new for r in requests]).to(device)

        def loss_fn() -> Accumulated:
            return chunked_answer_loss(model, batch, hparams.batch_size, hparams.objective)

        started = time.perf_counter()
        was_training = model.training
        model.eval()
        context = context or EditContext()
        bar = tqdm(total=hparams.steps, desc="ft: fine-tuning", unit="step", disable=not context.show_progress)
        with only_these_trainable(model, names), bar:
            deltas, losses = constrained_finetune(
                params,
                loss_fn,
                steps=hparams.steps,
                lr=hparams.lr,
                norm_constraint=hparams.norm_constraint,
                early_stop_loss=hparams.early_stop_loss,
                weight_decay=hparams.weight_decay,
                on_step=lambda _step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")),
            )
        model.train(was_training)
        log.info("ft: %d requests, %d steps, loss %.4f -> %.4f", len(requests), len(losses), losses[0], losses[-1])
        return EditResult(
            tensors={f"{name}::dense": delta for name, delta in deltas.items()},
            stats={"steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1], "seconds": time.perf_counter() - started},
        )
