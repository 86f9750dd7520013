"""F-Learning's parameter arithmetic: θ' = θ − λ Δ_old, and the combined update −λ Δ_old + Δ_new.

Pure torch. Dense updates are [*param shape]; low-rank ones are factors (u [m, r], v [r, n]).
"""

from __future__ import annotations

import torch

from editing.lora.core import combine_factors

Factors = tuple[torch.Tensor, torch.Tensor]


def forget_dense(weight: torch.Tensor, old_delta: torch.Tensor, lam: float) -> torch.Tensor:
    """θ' = θ − λ Δ_old, computed in float32 and cast back to the weight's dtype."""
    return (weight.float() - lam * old_delta.float()).to(weight.dtype)


def combined_dense(old_delta: torch.Tensor | None, new_delta: torch.Tensor, lam: float) -> torch.Tensor:
    """−λ Δ_old + Δ_new (float32)."""
    return new_delta.float() if old_delta is None else new_delta.float() - lam * old_delta.float()


def combined_factors(old: Factors | None, new: Factors, lam: float) -> Factors:
    """Exact factors of −λ u_o v_o + u_n v_n: u = [−λ u_o | u_n] [m, 2r], v = [v_o; v_n] [2r, n]."""
    if old is None or lam == 0:
        return new[0].float().contiguous(), new[1].float().contiguous()
    return combine_factors([(-lam, old), (1.0, new)])
