"""AlphaEdit's math: a null-space projector of the preserved keys and the projected update.

Shapes: C0 [d0, d0] (second moment of preserved keys), keys K [d0, n], residuals R [d1, n],
accumulated keys of earlier edits Kp Kp^T [d0, d0].

Projector: eigenvectors Û of C0 whose eigenvalue is below the threshold, P = Û Û^T; then P K0 ≈ 0.

Update: minimise ||(W + Δ̃ P) K - V||^2 + ||Δ̃ P||^2·α + ||Δ̃ P Kp||^2, whose solution is
    Δ = R K^T P (P (K K^T + Kp Kp^T) + α I)^{-1}.
With X = (P (K K^T + Kp Kp^T) + α I)^{-1} P K  [d0, n] this is Δ = R X^T. The bracket maps the range
of P into itself, so X lies in range(P) and Δ K0 = R X^T K0 = 0 for every preserved key K0 with
P K0 = 0: the outputs for preserved keys are unchanged.
"""

from __future__ import annotations

import torch


def null_space_basis(mom2: torch.Tensor, threshold: float, relative: bool = False) -> torch.Tensor:
    """Orthonormal basis Û [d0, k] (float64) of the eigenvectors of C0 with eigenvalue below the threshold.

    threshold: eigenvalues below it count as null; with `relative`, below `threshold * largest eigenvalue`.
    """
    evals, evecs = torch.linalg.eigh(mom2.double())  # ascending
    cut = threshold * float(evals.max()) if relative else threshold
    return evecs[:, evals < cut]


def null_space_projector(mom2: torch.Tensor, threshold: float, relative: bool = False) -> tuple[torch.Tensor, int]:
    """(P = Û Û^T [d0, d0] float64, null-space dimension k); see `null_space_basis`."""
    basis = null_space_basis(mom2, threshold, relative)
    return basis @ basis.T, int(basis.size(1))


def alphaedit_factors(
    keys: torch.Tensor,
    resid: torch.Tensor,
    projector: torch.Tensor,
    l2: float,
    edited_kkt: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with U @ V = R K^T P (P (K K^T + Kp Kp^T) + l2 I)^{-1}; U = R [d1, n], V = X^T [n, d0]."""
    keys = keys.double()
    p = projector.double()
    inner = keys @ keys.T  # [d0, d0]
    if edited_kkt is not None:
        inner = inner + edited_kkt.double()
    a = p @ inner + l2 * torch.eye(p.size(0), dtype=p.dtype, device=p.device)
    x = torch.linalg.solve(a, p @ keys)  # [d0, n]
    return resid.double(), x.T.contiguous()


def gram_factor(gram: torch.Tensor, rel_tol: float = 1e-12) -> torch.Tensor:
    """F [d0, r] with F F^T = gram (symmetric PSD), dropping directions below rel_tol x the largest."""
    evals, evecs = torch.linalg.eigh(gram.double())
    keep = evals > rel_tol * float(evals.max().clamp(min=0))
    return evecs[:, keep] * evals[keep].sqrt()[None, :]


def grow_key_factor(prior: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
    """The factor of Kp Kp^T + K K^T, from the prior factor [d0, r] (or None) and new keys K [d0, n].

    Stored as the keys themselves while there are fewer than d0 of them (d0 x edits floats instead
    of d0 x d0: 57 MB instead of 820 MB per layer for 1,000 edits of an 8B LLaMA), folded into a
    square-root factor of rank <= d0 once they outnumber the dimensions.
    """
    columns = keys.double() if prior is None else torch.cat([prior.double(), keys.double()], dim=1)
    if columns.size(1) > columns.size(0):
        columns = gram_factor(columns @ columns.T)
    return columns
