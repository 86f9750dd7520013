"""A plain Adam loop over a loss closure, and the answer loss over chunks of a batch.

A loss over many rows is computed a chunk of rows at a time, and each chunk's share runs backward
at once (`Accumulated`): a closure that summed the chunks' losses first would keep every chunk's
activations and logits alive until one backward at the end, so its memory would grow with the
rows, not with the chunk (SAUL's 120 rows held 8-10 GB on SmolLM2-135M that way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm
from torch import nn

from editing.batches import AnswerBatch, answer_loss, training_passes


@dataclass(frozen=True)
class Accumulated:
    """What a loss closure returns once it ran backward itself, chunk by chunk: the gradients are
    in the parameters' `.grad`; `loss` is the whole loss's value, `metric` the early-stop metric."""

    loss: float
    metric: float


LossResult = torch.Tensor | tuple[torch.Tensor, float] | Accumulated


def backward_of(out: LossResult) -> tuple[Callable[[], None], float]:
    """(what runs the loss's backward, the early-stop metric) of a loss closure's result."""
    if isinstance(out, Accumulated):
        return (lambda: None), out.metric
    loss, metric = out if isinstance(out, tuple) else (out, float(out.detach()))
    return loss.backward, float(metric)


def adam_steps(
    params: Iterable[torch.nn.Parameter],
    loss_fn: Callable[[], LossResult],
    *,
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    early_stop_loss: float = 0.0,
    min_steps: int = 0,
    progress: str | None = None,
) -> list[float]:
    """Minimise `loss_fn` for up to `steps` Adam steps; stop once the loss is below `early_stop_loss`
    and at least `min_steps` steps were taken.

    `min_steps` matters for regularised losses: Adam's first steps are its largest, and a stop metric
    that watches only the edit tokens can fire before the regulariser had any step to pull back what
    those first steps disturbed.

    With `progress` (a label), a progress bar with the loss and the time left (tqdm, on stderr).

    `loss_fn` returns the loss, or (loss, stop metric) when early stopping should watch something
    else (e.g. only the edit tokens of a regularised loss), or `Accumulated` once it ran backward
    itself. Returns the stop metric seen before each step (the last entry is the value that stopped
    the loop, if any).
    """
    optimizer = torch.optim.Adam(list(params), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    bar = tqdm(total=steps, desc=progress, unit="step", leave=False, disable=progress is None)
    try:
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            backward, metric = backward_of(loss_fn())
            losses.append(metric)
            if losses[-1] < early_stop_loss and step >= min_steps:
                break
            backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    finally:
        bar.close()
    optimizer.zero_grad(set_to_none=True)
    return losses


def chunked_answer_loss(model: nn.Module, batch: AnswerBatch, batch_size: int, objective: str = "target_new") -> Accumulated:
    """Answer cross-entropy of the whole batch (row-weighted mean), at most `batch_size` rows at a time
    (fewer where a pass would exceed `TRAINING_BUDGET`), each chunk's share run backward at once (its
    gradients accumulate in `.grad`)."""
    n = batch.input_ids.size(0)
    total = 0.0
    for chunk in training_passes(model, n, batch.input_ids.size(1), batch_size):
        logits = model(input_ids=batch.input_ids[chunk], attention_mask=batch.attention_mask[chunk]).logits
        share = answer_loss(logits, batch.rows(chunk), objective) * (chunk.stop - chunk.start) / n
        if share.requires_grad:
            share.backward()
        total += float(share.detach())
    return Accumulated(loss=total, metric=total)


def dense_finetune(
    params: dict[str, torch.nn.Parameter],
    loss_fn: Callable[[], LossResult],
    **adam: float | int | str | None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """`adam_steps` on `params`, returning ΔW in float32 per name; the parameters are put back exactly."""
    originals = {name: p.detach().clone() for name, p in params.items()}
    try:
        losses = adam_steps(params.values(), loss_fn, **adam)  # type: ignore[arg-type]
        deltas = {name: p.detach().float() - originals[name].float() for name, p in params.items()}
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(originals[name])
    return deltas, losses
