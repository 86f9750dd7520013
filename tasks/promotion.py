"""Approval of record, promotion and rollback: every head move is one database transaction.

The delta bytes are already in the store (content-addressed) before anything is promoted, so a
crash at any point leaves either the old head or the new one, never a half-promoted model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra import repository as repo
from infra.audit import append_event
from infra.context import ServiceContext
from infra.errors import ApprovalRequired, InvalidInput, InvalidState, NotFound, PermissionDenied
from infra.signing import (approval_payload, load_private_key, public_key_of, read_reviewer_keys, require_key_file,
                           rollback_payload, sign, verify)
from infra.db.models import utcnow
from tasks.live_model import fetch_delta

log = logging.getLogger(__name__)


def reviewer_signing_key(ctx: ServiceContext, reviewer: str,
                         signing_key: Ed25519PrivateKey | Path | None = None) -> Ed25519PrivateKey:
    """`reviewer`'s private key, checked: a configured reviewer whose registered public key it matches
    (default key: KUS_SIGNING_KEY). Naming someone else gets nowhere without their private key."""
    if reviewer not in ctx.settings.reviewers:
        raise PermissionDenied(f"{reviewer!r} is not a configured reviewer (reviewers: {', '.join(ctx.settings.reviewers)})")
    keys = read_reviewer_keys(ctx.settings.reviewer_keys_file)
    if reviewer not in keys:
        raise PermissionDenied(f"{reviewer!r} has no registered public key in {ctx.settings.reviewer_keys_file}")
    private = signing_key if isinstance(signing_key, Ed25519PrivateKey) else load_private_key(
        require_key_file(signing_key or ctx.settings.signing_key_path))
    if public_key_of(private) != keys[reviewer]:
        raise PermissionDenied(f"the signing key is not {reviewer!r}'s registered key; a decision is signed by its reviewer")
    return private


def record_decision(
    ctx: ServiceContext, run_id: int, reviewer: str, decision: str, reason: str, override_validation: bool = False,
    signing_key: Ed25519PrivateKey | Path | None = None,
) -> repo.ApprovalRecord:
    """A registered reviewer approves or rejects a run awaiting approval, signing the decision; never their own run.

    `reviewer` is who runs the command; the signature proves it: it is made with `signing_key`
    (default: the configured KUS_SIGNING_KEY) and must verify against the public key registered for
    `reviewer`, so naming someone else gets nowhere without their private key. A second approval of
    an approved run records nothing new.
    """
    if decision not in ("approved", "rejected"):
        raise InvalidInput(f"decision must be 'approved' or 'rejected', got {decision!r}")
    if not reason.strip():
        raise InvalidInput("a decision needs a reason")
    private = reviewer_signing_key(ctx, reviewer, signing_key)
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
        earlier = [a for a in repo.approvals_for(session, run_id) if a.decision == "approved"]
        if decision == "approved" and earlier and run.status in ("awaiting_approval", "promoted"):
            log.info("run %s was already approved by %s; nothing recorded", run_id, earlier[0].reviewer)
            return earlier[0]
        if run.status != "awaiting_approval":
            raise InvalidState(f"run {run_id} is {run.status}, not awaiting approval")
        if run.started_by == reviewer:
            raise PermissionDenied(f"{reviewer!r} started run {run_id} and cannot review it")
        passed = bool(run.validation and run.validation.get("success"))
        if decision == "approved" and not passed and not override_validation:
            raise InvalidState(
                f"run {run_id} failed retention validation; approve with --override-validation to accept it anyway"
            )
        at = utcnow()
        payload = approval_payload(run_id=run_id, delta_sha=run.delta_sha, reviewer=reviewer, decision=decision,
                                   reason=reason, at=at.isoformat())
        signature = sign(private, payload)
        record = repo.record_decision(session, run_id, reviewer, decision, reason, at=at,
                                      signed_payload=payload.decode(), signature=signature)
        event = {"reason": reason, "delta": run.delta_sha, "validation_passed": passed,
                 "override_validation": override_validation and not passed, "signature": signature}
        append_event(session, reviewer, decision, f"run:{run_id}", event)
        if decision == "rejected":
            repo.update_run(session, run_id, status="rejected")
    log.info("run %s %s by %s (signed): %s", run_id, decision, reviewer, reason)
    return record


def signed_approval_is_valid(approval: repo.ApprovalRecord, run: repo.RunRecord, keys: dict[str, str]) -> bool:
    """The approval says 'approved' for exactly this run and delta, and its reviewer's registered key signed it."""
    if approval.decision != "approved" or not approval.signed_payload or not approval.signature:
        return False
    try:
        fields = json.loads(approval.signed_payload)
    except ValueError:
        return False
    expected = json.loads(approval_payload(run_id=run.id, delta_sha=run.delta_sha, reviewer=approval.reviewer,
                                           decision="approved", reason=approval.reason, at=str(fields.get("at"))))
    public = keys.get(approval.reviewer)
    return fields == expected and public is not None and verify(public, approval.signed_payload.encode(), approval.signature)


def promote_run(ctx: ServiceContext, run_id: int, actor: str) -> str:
    """Move the model head to the run's delta, after checking approval, integrity and parentage."""
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
        approvals = repo.approvals_for(session, run_id)
    if run.status == "promoted":
        return str(run.delta_sha)
    if run.status != "awaiting_approval" or not any(a.decision == "approved" for a in approvals):
        raise ApprovalRequired(f"run {run_id} ({run.status}) has no approval of record; a reviewer must approve it first")
    if run.delta_sha is None:
        raise InvalidState(f"run {run_id} has no delta")
    keys = read_reviewer_keys(ctx.settings.reviewer_keys_file)
    if not any(signed_approval_is_valid(a, run, keys) for a in approvals):
        raise ApprovalRequired(
            f"run {run_id} has no approval whose signature verifies against a registered reviewer key for delta "
            f"{run.delta_sha[:12]}; the approval record was changed or its key is no longer registered"
        )
    fetch_delta(ctx, run.delta_sha)  # re-verifies the stored bytes before they go live
    with ctx.db.session() as session:
        record = repo.get_delta(session, run.delta_sha)
        current = repo.get_head(session, run.model_name)
        if record.parent_sha != current:
            raise InvalidState(
                f"run {run_id}'s delta was computed on head {str(record.parent_sha)[:12]}, but the head is now "
                f"{str(current)[:12]}; run a new refresh instead"
            )
        repo.move_head(session, run.model_name, run.delta_sha, expected_current=current)
        repo.update_run(session, run_id, status="promoted")
        append_event(session, actor, "promote", f"model:{run.model_name}",
                     {"run": run_id, "delta": run.delta_sha, "previous_head": current})
    log.info("model %s: head moved to %s (run %s)", run.model_name, run.delta_sha[:12], run_id)
    return run.delta_sha


def rollback_model(ctx: ServiceContext, model_name: str, actor: str, reason: str, to: str | None = "previous",
                   signing_key: Ed25519PrivateKey | Path | None = None) -> str | None:
    """Move the head back to an earlier delta of its chain ('previous' = the head's parent, None = base).

    A rollback is a reviewer's decision like an approval: `actor` must be a configured reviewer and
    signs it (model, from, to, reason, time) with their registered key; the signature is in the audit
    event. The undone facts become outstanding again: the next refresh edits them anew."""
    if not reason.strip():
        raise InvalidInput("a rollback needs a reason")
    with ctx.db.session() as session:
        current = repo.get_head(session, model_name)
        if current is None:
            raise InvalidState(f"model {model_name} has no promoted delta to roll back")
    private = reviewer_signing_key(ctx, actor, signing_key)
    with ctx.db.session() as session:
        current = repo.get_head(session, model_name)
        if current is None:
            raise InvalidState(f"model {model_name} has no promoted delta to roll back")
        chain = repo.delta_chain(session, current)
        if to == "previous":
            target = chain[-1].parent_sha
        elif to in (None, "base"):
            target = None
        else:
            matches = [d.sha256 for d in chain[:-1] if d.sha256.startswith(str(to))]
            if len(matches) != 1:
                raise NotFound(f"{to!r} names no single earlier delta in {model_name}'s chain")
            target = matches[0]
        ids = [d.sha256 for d in chain]
        undone = ids[0 if target is None else ids.index(target) + 1 :]
        repo.move_head(session, model_name, target, expected_current=current)
        for run in repo.list_runs(session, model_name, limit=1000):
            if run.status == "promoted" and run.delta_sha in undone:
                repo.update_run(session, run.id, status="rolled_back")
        undone_facts = sum(len(d.manifest.get("facts", [])) for d in chain if d.sha256 in undone)
        payload = rollback_payload(model=model_name, from_sha=current, to_sha=target, reviewer=actor, reason=reason,
                                   at=utcnow().isoformat())
        append_event(session, actor, "rollback", f"model:{model_name}",
                     {"from": current, "to": target, "undone": undone, "reason": reason,
                      "facts_outstanding_again": undone_facts, "signed_payload": payload.decode(),
                      "signature": sign(private, payload)})
    log.info("model %s: rolled back from %s to %s", model_name, current[:12], target[:12] if target else "base")
    return target
