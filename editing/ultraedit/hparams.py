"""Hyperparameters of UltraEdit, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra.errors import InvalidInput


@dataclass(frozen=True)
class UltraEditHParams:
    """UltraEdit (Gu et al., arXiv 2505.14679): a closed-form update per edited layer from keys and
    normalised value gradients, with lifelong statistics carried from delta to delta.

    `layers`: blocks whose MLP output projection is edited; each gets its own update from the same
    forward/backward pass (the reference edits a few late layers; no residual is spread between them).
    `lr`: η, the step the pseudo values v = -η ||k̂||² ĝ take along the normalised gradient; it sets
    how far the edited outputs move (||k̂||² ≈ d0, so the useful η shrinks with the key width).
    `ridge`: λ of the solve (K^T K + λ I)^{-1}; the reference hard-codes 1. Larger λ shrinks the update
    for keys of small norm, so it only matters when keys are short (small models).
    `edits_per_turn`: requests per editing turn (the reference's 100). Each turn updates the statistics,
    solves, and is in place before the next turn's keys and gradients are read, so a large refresh (or
    a cumulative one over the whole ledger) is the same lifelong stream the paper edits; 0 = one turn.
    `batch_size`: requests per forward/backward pass (memory only; the result does not depend on it).
    `lowrank`: store ΔW as factors when smaller ("auto"), always (when the solve gives factors), or never.
    """

    layers: tuple[int, ...] = (1,)
    lr: float = 1e-6
    ridge: float = 1.0
    edits_per_turn: int = 100
    batch_size: int = 10
    lowrank: str = "auto"

    def __post_init__(self) -> None:
        try:
            layers = tuple(int(layer) for layer in self.layers)
        except (TypeError, ValueError):
            raise InvalidInput(f"ultraedit: layers must be a list of block indices, got {self.layers!r}") from None
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise InvalidInput("ultraedit: layers must name at least one layer")
        if any(layer < 0 for layer in layers):
            raise InvalidInput(f"ultraedit: layers must be >= 0, got {list(layers)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidInput(f"ultraedit: lr must be a positive finite number, got {self.lr}")
        if not (self.ridge > 0 and math.isfinite(self.ridge)):
            raise InvalidInput(f"ultraedit: ridge must be > 0 (it makes the solve well posed), got {self.ridge}")
        if self.edits_per_turn < 0:
            raise InvalidInput(f"ultraedit: edits_per_turn must be >= 0 (0 = the whole batch in one turn), got {self.edits_per_turn}")
        if self.batch_size < 1:
            raise InvalidInput(f"ultraedit: batch_size must be >= 1, got {self.batch_size}")
        if self.lowrank not in ("auto", "always", "never"):
            raise InvalidInput(f"ultraedit: lowrank must be one of ('auto', 'always', 'never'), got {self.lowrank!r}")
