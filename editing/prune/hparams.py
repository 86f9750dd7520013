"""Hyperparameters of PRUNE (a restraint on top of a base editor), validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from editing.prune.core import REDUCE
from infra.errors import InvalidInput

BASES = ("memit", "alphaedit")


@dataclass(frozen=True)
class PRUNEHParams:
    """PRUNE (Ma et al., ICLR 2025) on top of `base` ("memit" or "alphaedit").

    The base editor runs with its own family defaults plus `base_overrides`. The raw accumulated
    update of every edited matrix is carried across refreshes (`state::prune.raw.<param>`); each
    refresh serves W + F(raw), F shrinking singular values above σ_max(W) (`reduce`: "log" with base
    `alpha` > 1, or "linear"). The restraint is never compounded on already-restrained weights.
    """

    base: str = "memit"
    base_overrides: dict[str, Any] = field(default_factory=dict)
    reduce: str = "log"
    alpha: float = math.e

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise InvalidInput(f"prune: base must be one of {BASES}, got {self.base!r}")
        if not isinstance(self.base_overrides, dict):
            raise InvalidInput(f"prune: base_overrides must be a mapping, got {type(self.base_overrides).__name__}")
        if self.reduce not in REDUCE:
            raise InvalidInput(f"prune: reduce must be one of {REDUCE}, got {self.reduce!r}")
        if not self.alpha > 1:
            raise InvalidInput(f"prune: alpha (the log base) must be > 1, got {self.alpha}")
