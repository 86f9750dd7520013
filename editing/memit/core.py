"""MEMIT's closed form: ΔW = R K^T (λ C0 + K K^T [+ Kp Kp^T])^{-1}, as low-rank factors.

Shapes: keys K [d0, n], residuals R [d1, n], second moment C0 [d0, d0]. Since the bracket A is
symmetric, ΔW = R (A^{-1} K)^T: factors U = R [d1, n] and V = (A^{-1} K)^T [n, d0]. Everything in
float64.
"""

from __future__ import annotations

import torch


def memit_factors(
    keys: torch.Tensor,
    resid: torch.Tensor,
    mom2: torch.Tensor,
    mom2_update_weight: float,
    edited_kkt: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with U @ V = R K^T (λ C0 + K K^T + Kp Kp^T)^{-1}."""
    keys = keys.double()
    a = mom2_update_weight * mom2.double() + keys @ keys.T  # [d0, d0]
    if edited_kkt is not None:
        a = a + edited_kkt.double()
    solved = torch.linalg.solve(a, keys)  # [d0, n] = A^{-1} K
    return resid.double(), solved.T.contiguous()
