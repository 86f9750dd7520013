"""PRUNE's restraint: shrink the singular values of an accumulated update that exceed σ_max(W).

For ΔW_N = Ū diag(σ̄) V̄^T and σ_max the largest singular value of the original weight W:
    F(σ̄) = log_α(σ̄) - log_α(σ_max) + σ_max   for σ̄ > σ_max   ("log", α > 1)
    F(σ̄) = (σ̄ + σ_max) / 2                   for σ̄ > σ_max   ("linear")
    F(σ̄) = σ̄                                 otherwise.
F is continuous at σ_max and grows only logarithmically above it, so the spectral norm of the
restrained update, and with it that of W + F(ΔW), stays within a slowly growing bound:
    ||F(ΔW)||_2 <= σ_max + log_α(σ̄_1 / σ_max),   ||W + F(ΔW)||_2 <= 2 σ_max + log_α(σ̄_1 / σ_max).
"""

from __future__ import annotations

import math

import torch

REDUCE = ("log", "linear")


def spectral_norm(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.double(), ord=2))


def condition_number(w: torch.Tensor) -> float:
    s = torch.linalg.svdvals(w.double())
    return float(s[0] / s[-1].clamp(min=1e-300))


def restrain_values(sigma: torch.Tensor, sigma_max: float, reduce: str = "log", alpha: float = math.e) -> torch.Tensor:
    """F applied to singular values (see the module docstring)."""
    over = sigma > sigma_max
    if reduce == "log":
        f = torch.log(sigma.clamp(min=1e-300)) / math.log(alpha) - math.log(sigma_max) / math.log(alpha) + sigma_max
    elif reduce == "linear":
        f = (sigma + sigma_max) / 2
    else:
        raise ValueError(f"reduce must be one of {REDUCE}, got {reduce!r}")
    return torch.where(over, f, sigma)


def restrain(delta: torch.Tensor, sigma_max: float, reduce: str = "log", alpha: float = math.e) -> tuple[torch.Tensor, int]:
    """(F(ΔW) in float64, how many singular values were shrunk). ΔW: [d1, d0]."""
    if not bool(delta.any()):
        return delta.double().clone(), 0
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    s_new = restrain_values(s, sigma_max, reduce, alpha)
    return (u * s_new[None, :]) @ vh, int((s > sigma_max).sum())
