"""The live model: the base weights plus the promoted chain's effective deltas, applied in order.

A delta computed in cumulative mode (manifest ``"basis": "base"``) holds every edit since the base
model, so the chain before it is history: the live model is the base, that delta, and whatever
sequential deltas were promoted after it. Rolling back moves the head; whatever chain ends there
is what is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from sqlalchemy.orm import Session
from torch import nn

from editing.delta import Delta, Revertible
from editing.model_io import load_model, weights_fingerprint
from infra import repository as repo
from infra.context import ServiceContext
from infra.errors import IntegrityMismatch

log = logging.getLogger(__name__)

#: Manifest value of "basis" for a delta computed from the base model over the whole fact ledger.
BASIS_BASE = "base"


def effective_start(manifests: Sequence[Mapping[str, Any]]) -> int:
    """Index of the first delta that makes up the model: the newest cumulative one (basis "base"), else 0."""
    return max((i for i, m in enumerate(manifests) if m.get("basis") == BASIS_BASE), default=0)


def live_values(manifests: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """What a chain (root first) taught the model: (subject, relation) -> the value it was edited to say."""
    values: dict[tuple[str, str], str] = {}
    for manifest in manifests[effective_start(manifests):]:
        for fact in manifest.get("facts", []):
            values[(fact["subject"], fact["relation"])] = fact["new"]
    return values


def head_values(session: Session, head: str | None) -> dict[tuple[str, str], str]:
    """`live_values` of the chain ending at `head`, from the manifests the database keeps (no store read)."""
    return live_values([record.manifest for record in repo.delta_chain(session, head)])


@dataclass
class LiveModel:
    model: nn.Module
    tokenizer: Any
    base_fingerprint: str
    head: str | None
    #: the effective chain: the deltas applied on the base, in order
    chain: list[Delta] = field(default_factory=list)
    applied: list[Revertible] = field(default_factory=list)

    def carried_state(self) -> dict[str, torch.Tensor]:
        """Every editor's carried state along the chain, each key from the newest delta that carries it.

        A chain that mixes editors (AlphaEdit, then SAUL, then AlphaEdit) keeps AlphaEdit's keys:
        a delta that carries nothing of an editor's does not reset it.
        """
        state: dict[str, torch.Tensor] = {}
        for delta in self.chain:
            state.update(delta.state())
        return state

    def values(self) -> dict[tuple[str, str], str]:
        return live_values([delta.manifest for delta in self.chain])

    @contextmanager
    def at_base(self) -> Iterator[None]:
        """The model holds the base weights inside the block (every delta reverted), the chain after it.

        For what must be computed on the base whatever the head is, e.g. key statistics cached
        under the base's fingerprint. Re-applying verifies every delta again.
        """
        for handle in reversed(self.applied):
            handle.revert()
        self.applied = []
        try:
            yield
        finally:
            self.applied = [delta.apply(self.model) for delta in self.chain]

    def reverted_to_base(self) -> None:
        """Revert every delta for good: the model is the base model from now on."""
        for handle in reversed(self.applied):
            handle.revert()
        self.applied, self.chain, self.head = [], [], None


def fetch_delta(ctx: ServiceContext, delta_id: str) -> Delta:
    """Read a delta from the store; both the store and `Delta.from_files` verify its sha256s."""
    return Delta.from_files(ctx.store.get(delta_id))


def load_live_model(ctx: ServiceContext, model_name: str | None = None, head: str | None = "current") -> LiveModel:
    """Load base + effective chain up to `head` ('current' = the promoted head; None = the bare base model)."""
    model_name = model_name or ctx.settings.model_name
    model, tokenizer = load_model(ctx.settings.model_path, device="cuda" if torch.cuda.is_available() else "cpu",
                                  dtype=ctx.settings.torch_dtype or None, device_map=ctx.settings.device_map or None)
    base_fp = weights_fingerprint(model)
    with ctx.db.session() as session:
        head_sha = repo.get_head(session, model_name) if head == "current" else head
        records = repo.delta_chain(session, head_sha)
    start = effective_start([record.manifest for record in records])
    chain = [fetch_delta(ctx, record.sha256) for record in records[start:]]  # the history before is not loaded
    live = LiveModel(model=model, tokenizer=tokenizer, base_fingerprint=base_fp, head=head_sha)
    for delta in chain:
        if delta.manifest.get("base_fingerprint") != base_fp:
            raise IntegrityMismatch(
                f"delta {delta.id[:12]} was computed on base {str(delta.manifest.get('base_fingerprint'))[:12]}, "
                f"but the model at {ctx.settings.model_path} is {base_fp[:12]}"
            )
        live.applied.append(delta.apply(model))
        live.chain.append(delta)
    log.info("live model %s: base %s + %d of %d deltas (head %s)", model_name, base_fp[:12], len(chain), len(records),
             head_sha[:12] if head_sha else "none")
    return live
