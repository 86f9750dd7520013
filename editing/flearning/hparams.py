"""Hyperparameters of F-Learning, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from editing.lora.hparams import OBJECTIVES, validate_lora_fields
from infra.errors import InvalidInput

VARIANTS = ("full", "lora")


@dataclass(frozen=True)
class FLearningHParams:
    """F-Learning (methods.md 4.5): forget the old facts by parametric subtraction, then learn the new.

    1. Fine-tune on (prompt, target_true) for `forget_steps` steps at `forget_lr` (no early stop):
       θ_old − θ = Δ_old (dense weights of `layers` x `modules` with `variant="full"`, the merged
       LoRA adapter (α/r) B A with `variant="lora"`).
    2. θ' = θ − `lam` · Δ_old.
    3. Fine-tune θ' on (prompt, target_new) for up to `steps` steps at `lr`: Δ_new.
    The delta is −lam·Δ_old + Δ_new (dense, or exact low-rank factors of rank 2r for LoRA).
    With `lam=0` it is plain fine-tuning / plain LoRA of the same weights.
    """

    variant: str = "lora"
    layers: tuple[int, ...] = (1,)
    modules: tuple[str, ...] = ("mlp.c_fc", "mlp.c_proj")
    lam: float = 0.5
    forget_steps: int = 20
    forget_lr: float = 5e-3
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    steps: int = 40
    lr: float = 5e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    early_stop_loss: float = 1e-2
    objective: str = "target_new"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        object.__setattr__(self, "modules", tuple(str(m) for m in self.modules))
        validate_lora_fields("flearning", self)
        if self.variant not in VARIANTS:
            raise InvalidInput(f"flearning: variant must be one of {VARIANTS}, got {self.variant!r}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise InvalidInput(f"flearning: lam must be a finite number >= 0, got {self.lam}")
        if self.forget_steps < 0:
            raise InvalidInput(f"flearning: forget_steps must be >= 0, got {self.forget_steps}")
        if not self.forget_lr > 0:
            raise InvalidInput(f"flearning: forget_lr must be > 0, got {self.forget_lr}")
        if self.objective not in OBJECTIVES:
            raise InvalidInput(f"flearning: objective must be one of {OBJECTIVES}, got {self.objective!r}")
