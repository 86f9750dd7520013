"""LoRA math: the merged update of an adapter, and low-rank factor arithmetic.

Pure torch. A LoRA adapter on a weight W contributes ΔW = (α/r) B A; we keep it as factors
(u, v) with ΔW = u @ v in the parameter's own layout (see `editing.adapters.lora.lora_factors`).
"""

from __future__ import annotations

import torch


def combine_factors(
    terms: list[tuple[float, tuple[torch.Tensor, torch.Tensor]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_i c_i u_i @ v_i as one pair of factors: u = [c_1 u_1 | c_2 u_2 | ...], v = [v_1; v_2; ...].

    Shapes: u_i [m, r_i], v_i [r_i, n]  ->  u [m, Σr_i], v [Σr_i, n]. Exact (no truncation).
    """
    us = [coef * u.float() for coef, (u, _) in terms]
    vs = [v.float() for _, (_, v) in terms]
    return torch.cat(us, dim=1).contiguous(), torch.cat(vs, dim=0).contiguous()


def factor_norm(u: torch.Tensor, v: torch.Tensor) -> float:
    """Frobenius norm of u @ v."""
    return float(torch.linalg.matrix_norm((u.float() @ v.float())))
