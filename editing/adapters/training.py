"""A plain Adam loop over a loss closure, and the answer loss over chunks of a batch."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm
from torch import nn

from editing.batches import AnswerBatch, answer_loss


def adam_steps(
    params: Iterable[torch.nn.Parameter],
    loss_fn: Callable[[], torch.Tensor | tuple[torch.Tensor, float]],
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
    else (e.g. only the edit tokens of a regularised loss). Returns the stop metric seen before each
    step (the last entry is the value that stopped the loop, if any).
    """
    optimizer = torch.optim.Adam(list(params), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    bar = tqdm(total=steps, desc=progress, unit="step", leave=False, disable=progress is None)
    try:
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            out = loss_fn()
            loss, metric = out if isinstance(out, tuple) else (out, float(out.detach()))
            losses.append(float(metric))
            if losses[-1] < early_stop_loss and step >= min_steps:
                break
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    finally:
        bar.close()
    optimizer.zero_grad(set_to_none=True)
    return losses


def chunked_answer_loss(model: nn.Module, batch: AnswerBatch, batch_size: int, objective: str = "target_new") -> torch.Tensor:
    """Answer cross-entropy of the whole batch, computed `batch_size` rows at a time (row-weighted mean)."""
    n = batch.input_ids.size(0)
    total = torch.zeros((), device=batch.input_ids.device)
    for start in range(0, n, batch_size):
        chunk = slice(start, min(start + batch_size, n))
        logits = model(input_ids=batch.input_ids[chunk], attention_mask=batch.attention_mask[chunk]).logits
        total = total + answer_loss(logits, batch.rows(chunk), objective) * (chunk.stop - chunk.start) / n
    return total


def dense_finetune(
    params: dict[str, torch.nn.Parameter],
    loss_fn: Callable[[], torch.Tensor | tuple[torch.Tensor, float]],
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
