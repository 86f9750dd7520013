"""Hyperparameters of AlphaEdit, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from editing.locate.settings import check_common, normalise_multilayer
from infra.errors import InvalidInput


@dataclass(frozen=True)
class AlphaEditHParams:
    """AlphaEdit (Fang et al., ICLR 2025): MEMIT's update projected onto the null space of preserved keys.

    `nullspace_threshold`: eigenvalues of the key second moment below it span the null space (with
    `nullspace_relative`, below threshold x the largest eigenvalue; the paper uses 2e-2 absolute).
    `l2`: the α I regulariser of the update. Keys of every edit are accumulated across refreshes
    (`state::alphaedit.keys.<layer>`, a factor of their K K^T), so later batches do not overwrite earlier ones.
    The other fields are MEMIT's (see `MEMITHParams`, also for `reach_nll`).
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
    nullspace_threshold: float = 2e-2
    nullspace_relative: bool = False
    l2: float = 10.0
    mom2_n_samples: int = 1000
    lowrank: str = "auto"
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        normalise_multilayer(self, "alphaedit")
        check_common(self, "alphaedit")
        if not self.nullspace_threshold > 0:
            raise InvalidInput(f"alphaedit: nullspace_threshold must be > 0, got {self.nullspace_threshold}")
        if not self.l2 > 0:
            raise InvalidInput(f"alphaedit: l2 must be > 0 (it makes the system invertible), got {self.l2}")
