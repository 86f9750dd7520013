"""Hyperparameters of ROME, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from editing.locate.settings import check_common, normalise_templates
from infra.errors import InvalidInput


@dataclass(frozen=True)
class ROMEHParams:
    """ROME (Meng et al., NeurIPS 2022): one rank-one update of one MLP layer per fact.

    Within a batch the facts are written one after another (each update accounts for those before
    it); target vectors for the whole batch are optimised together. `mom2_adjustment` uses the key
    second moment C (ridge `mom2_ridge` x mean diagonal) in u = C^{-1} k; without it C = I.
    A request whose target vector ends above answer NLL `reach_nll` is not written (see `MEMITHParams`).
    """

    layer: int = 1
    fact_token: str = "subject_last"
    context_templates: tuple[tuple[int, int], ...] = ()
    v_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_early_stop_nll: float = 0.05
    v_group_size: int = 0
    reach_nll: float = 1.0
    mom2_adjustment: bool = True
    mom2_n_samples: int = 1000
    mom2_ridge: float = 1e-3
    lowrank: str = "auto"
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer", int(self.layer))
        object.__setattr__(self, "context_templates", normalise_templates(self.context_templates, "rome"))
        check_common(self, "rome")
        if self.mom2_ridge < 0:
            raise InvalidInput(f"rome: mom2_ridge must be >= 0, got {self.mom2_ridge}")

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.layer,)
