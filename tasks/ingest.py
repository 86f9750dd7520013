"""Ingest: check the feed rows since the model's watermark (bad rows rejected with reasons) and open a
run over everything the live model must still learn: the new changes and any outstanding ones."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta

import pandas as pd
from prefect import task
from sqlalchemy.orm import Session

from infra import leases
from infra import repository as repo
from infra.audit import append_event
from infra.context import ServiceContext, service_context
from infra.domain import EditRequest, FactChange, RelationTemplates
from infra.errors import InvalidState
from infra.rejections import LISTED_REJECTIONS, RejectionLog  # noqa: F401 - re-exported
from tasks.catalogue_inputs import templates_for
from tasks.live_model import head_values
from tasks.retry_policy import retry_transient_only
from tasks.run_artifacts import put_bytes
from validation.gx_suites import validate_incoming_changes
from validation.sets import ledger_targets, outstanding_facts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestOutcome:
    run_id: int | None
    accepted: int
    rejected: int
    message: str
    #: facts the run will change in the live model (new changes and any still undelivered)
    outstanding: int = 0


def outstanding_targets(session: Session, model_name: str, templates: RelationTemplates, up_to: int) -> list[EditRequest]:
    """What the live model of `model_name` must still learn: the fact ledger (accepted feed rows up
    to `up_to`) against what its promoted chain taught it. Rejected or rolled-back runs' changes are
    outstanding until a promoted delta covers them."""
    head = repo.get_head(session, model_name)
    live = head_values(session, head)
    return ledger_targets(repo.ledger(session, up_to), live, repo.base_values(session, set(live)), templates)


def count_outstanding(session: Session, model_name: str, up_to: int) -> int:
    """How many facts :func:`outstanding_targets` would list, without rendering a prompt for each."""
    live = head_values(session, repo.get_head(session, model_name))
    return sum(1 for _ in outstanding_facts(repo.iter_ledger(session, up_to), live, repo.base_values(session, set(live))))


def decision_pending(session: Session, model_name: str) -> str | None:
    """Why a new refresh of `model_name` must wait: a run awaits a reviewer's decision (or its promotion)."""
    for waiting in repo.open_runs(session, model_name):
        if waiting.status == "awaiting_approval":
            approved = any(a.decision == "approved" for a in repo.approvals_for(session, waiting.id))
            return (f"run {waiting.id} for {model_name} was approved but not promoted; run `kus promote {waiting.id}`"
                    if approved else
                    f"run {waiting.id} for {model_name} awaits a reviewer's decision (`kus approve` or `kus reject`); "
                    "a new refresh starts nothing until then")
    return None


def ingest_changes(
    ctx: ServiceContext, model_name: str, editor: str, started_by: str, flow_run_id: str | None = None
) -> IngestOutcome:
    """Open a refresh run over every new feed row and every outstanding fact, or explain why there is none."""
    templates = templates_for(ctx.settings)
    with ctx.db.session() as session:
        pending = decision_pending(session, model_name)
        if pending:
            raise InvalidState(pending)
        leases.acquire(session, model_name, started_by, timedelta(seconds=ctx.settings.lease_ttl_seconds))
        # we hold the lease, so any run still open was abandoned: its lease expired or it never had one
        for stale in repo.open_runs(session, model_name):
            repo.update_run(session, stale.id, status="failed", error="abandoned: its refresh lease expired")
            append_event(session, started_by, "run_failed", f"run:{stale.id}",
                         {"reason": "its refresh lease expired before it finished; its changes are redone by the next run"})
        since = repo.watermark(session, model_name)
        latest = repo.latest_change_id(session)
        has_changes = bool(repo.changes_since(session, since, latest, limit=1))
        if not has_changes and not count_outstanding(session, model_name, since):
            leases.release(session, model_name, None)
            return IngestOutcome(None, 0, 0, f"no changes after feed position {since}, and the live model says "
                                             "what the database says")
        run = repo.create_run(session, model_name, editor, started_by, since, latest, flow_run_id=flow_run_id)
        leases.bind(session, model_name, run.id)
        checked = check_feed_in_pages(session, run.id, since, latest, templates)
        outstanding = count_outstanding(session, model_name, latest)
        listed: dict = {}
        if checked.rejected.count:  # the full list, verified on read; the audit event stays bounded
            blob = checked.rejected.full_list()
            listed = {"rejections_file": put_bytes(ctx, run.id, REJECTIONS_FILE, blob, session=session),
                      "rejections_sha256": hashlib.sha256(blob).hexdigest()}
        append_event(
            session, started_by, "ingest", f"run:{run.id}",
            {"model": model_name, "editor": editor, "feed_from": since, "feed_to": latest,
             "changes": checked.changes, "accepted": checked.accepted, "rejected": checked.rejected.count,
             "outstanding": outstanding,
             **checked.rejected.summary(), **listed},
        )
        if not outstanding:
            reason = ("every incoming change was rejected" if checked.changes and not checked.accepted
                      else "the accepted changes leave every fact as the live model already says it")
            repo.update_run(session, run.id, status="failed", error=reason)
            append_event(session, started_by, "run_failed", f"run:{run.id}", {"reason": reason})
            leases.release(session, model_name, run.id)
        log.info("run %s: %d new changes, %d accepted, %d rejected; %d facts to change in the live model",
                 run.id, checked.changes, checked.accepted, checked.rejected.count, outstanding)
        return IngestOutcome(run.id if outstanding else None, checked.accepted, checked.rejected.count, f"run {run.id}",
                             outstanding)


#: Every rejected feed row of a run (change id, reason), gzip'd JSON lines, verified against the run row.
REJECTIONS_FILE = "rejected-changes.jsonl.gz"

#: Feed rows checked by one run of the GX input suite: memory stays bounded by a page, not the feed.
INGEST_PAGE_ROWS = 10_000


@dataclass
class FeedCheck:
    changes: int
    accepted: int
    rejected: RejectionLog


def check_feed_in_pages(session: Session, run_id: int, since: int, latest: int | None, templates: RelationTemplates,
                        page_rows: int = INGEST_PAGE_ROWS) -> FeedCheck:
    """Run the GX input suite over the feed rows (since, latest] a page at a time, recording every
    rejected row against `run_id`; conflicts are counted over the whole range (in the database)."""
    conflicts = repo.conflicting_changes(session, since, latest)
    out = FeedCheck(0, 0, RejectionLog())
    cursor = since
    while page := repo.changes_since(session, cursor, latest, limit=page_rows):
        accepted, rejections = _check_incoming(page, templates, conflicts)
        repo.record_rejections(session, run_id, [repo.Rejection(cid, reason) for cid, reason in rejections])
        for cid, reason in rejections:
            out.rejected.add(cid, reason)
        out.changes += len(page)
        out.accepted += len(accepted)
        cursor = page[-1].change_id
        session.flush()
        session.expunge_all()  # written to the transaction; keep none of the page in memory
    return out


def rejection_summary(rejections: list[tuple[int, str]], id_field: str = "change_id") -> dict:
    """A bounded audit payload for any number of rejected rows: the first ones, and counts by check."""
    log = RejectionLog(id_field=id_field)
    for cid, reason in rejections:
        log.add(cid, reason)
    return log.summary()


def _check_incoming(changes: list[FactChange], templates: RelationTemplates,
                    conflicts: dict[int, int] | None = None) -> tuple[list[int], list[tuple[int, str]]]:
    """(accepted change ids, (change id, reason) per rejected row), by the GX input suite."""
    if not changes:
        return [], []
    frame = pd.DataFrame(
        {
            "change_id": [c.change_id for c in changes],
            "subject": [c.subject for c in changes],
            "relation": [c.relation for c in changes],
            "old_object": [c.old_object for c in changes],
            "new_object": [c.new_object for c in changes],
            "changed_at": [c.changed_at for c in changes],
        }
    )
    report = validate_incoming_changes(frame, templates.relations(), conflicts=conflicts)
    return report.accepted_ids, report.rejections


@task(name="ingest-changes", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient_only)
def ingest_task(model_name: str, editor: str, started_by: str, flow_run_id: str | None = None) -> dict:
    with service_context() as ctx:
        outcome = ingest_changes(ctx, model_name, editor, started_by, flow_run_id)
        return outcome.__dict__
