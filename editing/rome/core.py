"""ROME's rank-one updates, applied one fact after another.

For fact i with key k_i [d0], preserved-key second moment C (ridge-regularised) and desired change
of the layer's output r_i [d1]:
    u_i = C^{-1} k_i,   ΔW_i = r_i' u_i^T / (u_i · k_i),   r_i' = r_i - (Σ_{j<i} ΔW_j) k_i
so ΔW_i k_i = r_i' exactly and, with the earlier updates, the layer maps k_i to W k_i + r_i (each
edit sees the ones before it, as sequential ROME does). The same key is used in u_i and in the
denominator (the r-ROME correction). The sum is returned as factors U [d1, n], V [n, d0].
"""

from __future__ import annotations

import torch


def regularised_inverse_apply(mom2: torch.Tensor | None, keys: torch.Tensor, ridge: float) -> torch.Tensor:
    """C^{-1} K with C + ridge * mean(diag C) I (identity when `mom2` is None). keys: [d0, n]."""
    keys = keys.double()
    if mom2 is None:
        return keys.clone()
    c = mom2.double()
    c = c + ridge * float(torch.diagonal(c).mean()) * torch.eye(c.size(0), dtype=c.dtype, device=c.device)
    return torch.linalg.solve(c, keys)


def rome_factors(keys: torch.Tensor, resid: torch.Tensor, cinv_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential rank-one updates. keys, cinv_keys: [d0, n]; resid: [d1, n] -> U [d1, n], V [n, d0]."""
    keys, resid, cinv_keys = keys.double(), resid.double(), cinv_keys.double()
    n = keys.size(1)
    us: list[torch.Tensor] = []
    vs: list[torch.Tensor] = []
    for i in range(n):
        k = keys[:, i]
        u = cinv_keys[:, i]
        r = resid[:, i].clone()
        if us:
            r = r - torch.stack(us, 1) @ (torch.stack(vs, 0) @ k)
        us.append(r)
        vs.append(u / torch.dot(u, k))
    return torch.stack(us, 1), torch.stack(vs, 0)
