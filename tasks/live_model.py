"""The live model: the base weights plus every delta of the promoted chain, applied in order."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from editing.delta import Delta, Revertible
from editing.model_io import load_model, weights_fingerprint
from infra import repository as repo
from infra.context import ServiceContext
from infra.errors import IntegrityMismatch

log = logging.getLogger(__name__)


@dataclass
class LiveModel:
    model: nn.Module
    tokenizer: Any
    base_fingerprint: str
    head: str | None
    chain: list[Delta] = field(default_factory=list)
    applied: list[Revertible] = field(default_factory=list)

    def carried_state(self) -> dict[str, torch.Tensor]:
        """The sequential state of the newest delta of the chain (empty for the base model)."""
        return self.chain[-1].state() if self.chain else {}


def fetch_delta(ctx: ServiceContext, delta_id: str) -> Delta:
    """Read a delta from the store; both the store and `Delta.from_files` verify its sha256s."""
    return Delta.from_files(ctx.store.get(delta_id))


def load_live_model(ctx: ServiceContext, model_name: str | None = None, head: str | None = "current") -> LiveModel:
    """Load base + chain up to `head` ('current' = the promoted head; None = the bare base model)."""
    model_name = model_name or ctx.settings.model_name
    model, tokenizer = load_model(ctx.settings.model_path, device="cuda" if torch.cuda.is_available() else "cpu")
    base_fp = weights_fingerprint(model)
    with ctx.db.session() as session:
        head_sha = repo.get_head(session, model_name) if head == "current" else head
        records = repo.delta_chain(session, head_sha)
    live = LiveModel(model=model, tokenizer=tokenizer, base_fingerprint=base_fp, head=head_sha)
    for record in records:
        delta = fetch_delta(ctx, record.sha256)
        if delta.manifest.get("base_fingerprint") != base_fp:
            raise IntegrityMismatch(
                f"delta {record.sha256[:12]} was computed on base {str(delta.manifest.get('base_fingerprint'))[:12]}, "
                f"but the model at {ctx.settings.model_path} is {base_fp[:12]}"
            )
        live.applied.append(delta.apply(model))
        live.chain.append(delta)
    log.info("live model %s: base %s + %d deltas (head %s)", model_name, base_fp[:12], len(records),
             head_sha[:12] if head_sha else "none")
    return live
