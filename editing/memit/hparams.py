"""Hyperparameters of MEMIT, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from editing.locate.settings import check_common, normalise_multilayer
from infra.errors import InvalidInput


@dataclass(frozen=True)
class MEMITHParams:
    """MEMIT (Meng et al., ICLR 2023): many facts at once, residual spread over `layers`.

    Target vectors: `v_*` fields, `clamp_norm_factor`, `kl_factor` (see `editing.locate.target_vectors`);
    `v_group_size` > 0 optimises them that many requests at a time (1 = the reference loop, 0 = all).
    A request whose target vector ends with an answer NLL above `reach_nll` is not written (no shift
    of the fact token's hidden state reaches its answer; solving for it would only spend the update
    on other facts) and is reported as unwritten; `inf` writes every request as the reference does.
    Statistics: `mom2_n_samples` corpus texts; `mom2_update_weight` is λ in λ C0 + K K^T (C0 is a mean
    over tokens, so λ is in units of "edited keys" and balances preservation against the edit).
    `lowrank`: store ΔW as factors when smaller ("auto"), always, or never.
    """

    layers: tuple[int, ...] = (1, 2)
    fact_token: str = "subject_last"
    context_templates: tuple[tuple[int, int], ...] = ()
    v_steps: int = 25
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_early_stop_nll: float = 0.05
    v_group_size: int = 0
    reach_nll: float = 1.0
    mom2_update_weight: float = 15000.0
    mom2_n_samples: int = 1000
    lowrank: str = "auto"
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        normalise_multilayer(self, "memit")
        check_common(self, "memit")
        if not self.mom2_update_weight > 0:
            raise InvalidInput(f"memit: mom2_update_weight must be > 0, got {self.mom2_update_weight}")
