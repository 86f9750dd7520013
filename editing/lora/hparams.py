"""Hyperparameters of LoRA editing, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from infra.errors import InvalidInput

OBJECTIVES = ("target_new", "prompt_last")


@dataclass(frozen=True)
class LoRAHParams:
    """LoRA fine-tuning on the edit prompts (EasyEdit's LoRA baseline, methods.md 3.2).

    `modules` are block-relative module names (e.g. `mlp.c_proj` for GPT-2, `mlp.down_proj` for
    LLaMA), adapted in every layer of `layers`. The adapters are trained with Adam on the answer
    tokens (prompt masked) and merged into low-rank weight deltas ΔW = u @ v of rank `r`.
    """

    layers: tuple[int, ...] = (1,)
    modules: tuple[str, ...] = ("mlp.c_proj",)
    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.0
    steps: int = 30
    lr: float = 5e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    early_stop_loss: float = 1e-2
    objective: str = "target_new"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        object.__setattr__(self, "modules", tuple(str(m) for m in self.modules))
        validate_lora_fields("lora", self)
        if self.objective not in OBJECTIVES:
            raise InvalidInput(f"lora: objective must be one of {OBJECTIVES}, got {self.objective!r}")


def validate_lora_fields(editor: str, h: object) -> None:
    """Checks shared by every editor that trains LoRA adapters on `layers` x `modules`."""
    if not getattr(h, "layers"):
        raise InvalidInput(f"{editor}: layers must name at least one layer")
    if not getattr(h, "modules"):
        raise InvalidInput(f"{editor}: modules must name at least one module")
    if getattr(h, "r") < 1:
        raise InvalidInput(f"{editor}: r must be >= 1, got {getattr(h, 'r')}")
    if not getattr(h, "alpha") > 0:
        raise InvalidInput(f"{editor}: alpha must be > 0, got {getattr(h, 'alpha')}")
    if not 0.0 <= getattr(h, "dropout") < 1.0:
        raise InvalidInput(f"{editor}: dropout must be in [0, 1), got {getattr(h, 'dropout')}")
    if getattr(h, "steps") < 1:
        raise InvalidInput(f"{editor}: steps must be >= 1, got {getattr(h, 'steps')}")
    if not getattr(h, "lr") > 0:
        raise InvalidInput(f"{editor}: lr must be > 0, got {getattr(h, 'lr')}")
    if getattr(h, "batch_size") < 1:
        raise InvalidInput(f"{editor}: batch_size must be >= 1, got {getattr(h, 'batch_size')}")
