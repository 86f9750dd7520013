"""FT-L math: Adam on chosen weights with an L-inf box around their original values.

Pure torch: takes the parameters to train and a loss closure, returns ΔW per parameter, and puts
the original tensors back bit for bit.
"""

from __future__ import annotations

from typing import Callable

import torch

from editing.adapters.training import LossResult, backward_of


def constrained_finetune(
    params: dict[str, torch.nn.Parameter],
    loss_fn: Callable[[], LossResult],
    *,
    steps: int,
    lr: float,
    norm_constraint: float | None,
    early_stop_loss: float,
    weight_decay: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Minimise `loss_fn` over `params`, clamping each element to [w0 - eps, w0 + eps] after a step.

    Returns (ΔW in float32 per parameter name, loss per step). The parameters are restored to their
    exact original values before returning, so the caller's model is unchanged.
    """
    originals = {name: p.detach().clone() for name, p in params.items()}
    optimizer = torch.optim.Adam(list(params.values()), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    try:
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            backward, metric = backward_of(loss_fn())
            losses.append(metric)
            if on_step is not None:
                on_step(step, losses[-1])
            if losses[-1] < early_stop_loss:
                break
            backward()
            optimizer.step()
            if norm_constraint is not None:
                with torch.no_grad():
                    for name, p in params.items():
                        w0 = originals[name]
                        p.copy_(torch.clamp(p, min=w0 - norm_constraint, max=w0 + norm_constraint))
        deltas = {name: (p.detach().float() - originals[name].float()) for name, p in params.items()}
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(originals[name])
    return deltas, losses
