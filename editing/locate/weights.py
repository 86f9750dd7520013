"""Edited weights in the math's orientation, and updates packed as `Delta` tensors.

The math uses W as a (d1 x d0) map from keys (d0) to values (d1). GPT-2's Conv1D stores the
transpose, so `as_math`/`packed` transpose where the layout says so. An update U @ V of rank r is
stored as low-rank factors `<param>::u`, `<param>::v` when that is smaller than the dense matrix,
and as `<param>::dense` otherwise::

    W = as_math(model, layout, layer)                  # [d1, d0] float32 copy
    tensors = packed(layout, layer, U, V)              # {'...c_proj.weight::u': ..., '::v': ...}
    add_update_(model, tensors)                        # exactly what Delta.apply will do
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from editing.architecture import ModelLayout
from infra.errors import InvalidInput


def param(model: nn.Module, name: str) -> nn.Parameter:
    params = dict(model.named_parameters())
    if name not in params:
        raise InvalidInput(f"the model has no parameter {name!r}")
    return params[name]


def as_math(model: nn.Module, layout: ModelLayout, layer: int) -> torch.Tensor:
    """The edited projection of `layer` as a (d1 x d0) float32 tensor (a copy)."""
    w = param(model, layout.mlp_out_weight(layer)).detach().float()
    return (w.T if layout.transposed_weights else w).clone()


def packed(layout: ModelLayout, layer: int, u: torch.Tensor, v: torch.Tensor, lowrank: str = "auto") -> dict[str, torch.Tensor]:
    """Delta tensors for ΔW = u @ v (math orientation: u [d1, r], v [r, d0]).

    lowrank: "auto" (factors when smaller), "always" or "never".
    """
    name = layout.mlp_out_weight(layer)
    u = u.float().contiguous()
    v = v.float().contiguous()
    if layout.transposed_weights:  # param is (d0, d1): ΔW^T = v^T @ u^T
        u, v = v.T.contiguous(), u.T.contiguous()
    rows, rank, cols = u.size(0), u.size(1), v.size(1)
    use_factors = lowrank == "always" or (lowrank == "auto" and rank * (rows + cols) < rows * cols)
    if use_factors:
        return {f"{name}::u": u, f"{name}::v": v}
    return {f"{name}::dense": (u @ v).contiguous()}


def update_of(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """ΔW (param orientation, float32) from delta tensors, computed as `Delta.apply` does."""
    if f"{name}::dense" in tensors:
        return tensors[f"{name}::dense"].float()
    return tensors[f"{name}::u"].float() @ tensors[f"{name}::v"].float()


@torch.no_grad()
def add_update_(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Add every update in `tensors` to the model in place, with the same arithmetic as `Delta.apply`."""
    names = sorted({k.split("::", 1)[0] for k in tensors if not k.startswith("state::")})
    for name in names:
        p = param(model, name)
        p.copy_((p.detach().float() + update_of(tensors, name).to(p.device)).to(p.dtype))


def stored_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


class WeightGuard:
    """Saves named parameters on entry and restores them bit for bit on exit."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model = model
        self.names = names
        self.saved: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "WeightGuard":
        self.saved = {name: param(self.model, name).detach().clone() for name in self.names}
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for name, tensor in self.saved.items():
                param(self.model, name).copy_(tensor)
