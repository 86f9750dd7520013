"""Hyperparameters of constrained fine-tuning (FT-L), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from infra.errors import InvalidInput

OBJECTIVES = ("target_new", "prompt_last")


@dataclass(frozen=True)
class FTHParams:
    """FT-L as in the ROME paper's baseline: Adam on chosen MLP output weights, L-inf box on the change.

    `objective`: `target_new` is teacher-forced cross-entropy over the answer tokens (and the end of
    text, so the model also stops after the answer); `prompt_last` scores every answer token against
    the distribution at the last prompt position (EasyEdit's FT-L; exact only for one-token answers).
    """

    layers: tuple[int, ...] = (0,)
    steps: int = 25
    lr: float = 5e-4
    norm_constraint: float | None = 5e-4
    objective: str = "target_new"
    batch_size: int = 64
    early_stop_loss: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        if not self.layers:
            raise InvalidInput("ft: layers must name at least one layer")
        if self.steps < 1:
            raise InvalidInput(f"ft: steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise InvalidInput(f"ft: lr must be > 0, got {self.lr}")
        if self.norm_constraint is not None and not self.norm_constraint > 0:
            raise InvalidInput(f"ft: norm_constraint must be > 0 or null, got {self.norm_constraint}")
        if self.objective not in OBJECTIVES:
            raise InvalidInput(f"ft: objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.batch_size < 1:
            raise InvalidInput(f"ft: batch_size must be >= 1, got {self.batch_size}")
