"""Validation shared by the locate-and-edit hyperparameter dataclasses (ROME, MEMIT, AlphaEdit)."""

from __future__ import annotations

from typing import Any

from editing.locate.keys import check_fact_token
from editing.locate.target_vectors import TargetSettings
from infra.errors import InvalidInput

LOWRANK = ("auto", "always", "never")


def normalise_templates(value: Any, owner: str) -> tuple[tuple[int, int], ...]:
    try:
        out = tuple((int(length), int(count)) for length, count in value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{owner}: context_templates must be a list of [length, count] pairs, got {value!r}") from None
    if any(length < 1 or count < 0 for length, count in out):
        raise InvalidInput(f"{owner}: context_templates need length >= 1 and count >= 0, got {value!r}")
    return out


def normalise_multilayer(hp: Any, owner: str) -> None:
    """For editors that spread over several layers (MEMIT, AlphaEdit): coerce JSON lists, refuse no layers."""
    object.__setattr__(hp, "layers", tuple(int(layer) for layer in hp.layers))
    object.__setattr__(hp, "context_templates", normalise_templates(hp.context_templates, owner))
    if not hp.layers:
        raise InvalidInput(f"{owner}: layers must name at least one layer")


def check_common(hp: Any, owner: str) -> None:
    """Checks the target-vector and statistics fields every locate-and-edit dataclass has."""
    check_fact_token(hp.fact_token, owner)
    if hp.v_steps < 1:
        raise InvalidInput(f"{owner}: v_steps must be >= 1, got {hp.v_steps}")
    if not hp.v_lr > 0:
        raise InvalidInput(f"{owner}: v_lr must be > 0, got {hp.v_lr}")
    if hp.v_weight_decay < 0 or hp.kl_factor < 0:
        raise InvalidInput(f"{owner}: v_weight_decay and kl_factor must be >= 0")
    if not hp.clamp_norm_factor > 0:
        raise InvalidInput(f"{owner}: clamp_norm_factor must be > 0, got {hp.clamp_norm_factor}")
    if hp.mom2_n_samples < 1:
        raise InvalidInput(f"{owner}: mom2_n_samples must be >= 1, got {hp.mom2_n_samples}")
    if hp.lowrank not in LOWRANK:
        raise InvalidInput(f"{owner}: lowrank must be one of {LOWRANK}, got {hp.lowrank!r}")
    if hp.v_group_size < 0:
        raise InvalidInput(f"{owner}: v_group_size must be >= 0 (0 = all requests at once), got {hp.v_group_size}")
    if not hp.reach_nll > 0:
        raise InvalidInput(f"{owner}: reach_nll must be > 0 (inf writes every request), got {hp.reach_nll}")
    if hp.batch_size < 1:
        raise InvalidInput(f"{owner}: batch_size must be >= 1, got {hp.batch_size}")


def target_settings(hp: Any) -> TargetSettings:
    return TargetSettings(
        steps=hp.v_steps, lr=hp.v_lr, weight_decay=hp.v_weight_decay, clamp_norm_factor=hp.clamp_norm_factor,
        kl_factor=hp.kl_factor, early_stop_nll=hp.v_early_stop_nll, fact_token=hp.fact_token,
        batch_size=hp.batch_size, seed=hp.seed, group_size=hp.v_group_size,
    )
