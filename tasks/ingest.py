"""Ingest: read the change feed since the model's watermark, reject bad rows with reasons, open a run."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
from prefect import task

from infra import repository as repo
from infra.audit import append_event
from infra.context import ServiceContext, service_context
from infra.errors import InvalidState
from tasks.catalogue_inputs import templates_for
from tasks.retry_policy import retry_transient_only
from validation.gx_suites import validate_incoming_changes

log = logging.getLogger(__name__)

#: Open runs in these states are left over from a crash; a new refresh fails them and redoes the work.
RESUMABLE = ("ingested", "edited", "validated")


@dataclass(frozen=True)
class IngestOutcome:
    run_id: int | None
    accepted: int
    rejected: int
    message: str


def ingest_changes(
    ctx: ServiceContext, model_name: str, editor: str, started_by: str, flow_run_id: str | None = None
) -> IngestOutcome:
    """Open a refresh run over every change after the watermark, or explain why there is none."""
    templates = templates_for(ctx.settings)
    with ctx.db.session() as session:
        for stale in repo.open_runs(session, model_name):
            if stale.status == "awaiting_approval":
                raise InvalidState(
                    f"run {stale.id} for {model_name} awaits approval; approve or reject it before a new refresh"
                )
            repo.update_run(session, stale.id, status="failed", error="interrupted; superseded by a new refresh")
            append_event(session, started_by, "run_failed", f"run:{stale.id}",
                         {"reason": "interrupted before completion; its changes are redone by the next run"})
        since = repo.watermark(session, model_name)
        latest = repo.latest_change_id(session)
        changes = repo.changes_since(session, since, latest)
        if not changes:
            return IngestOutcome(None, 0, 0, f"no changes after feed position {since}")
        run = repo.create_run(session, model_name, editor, started_by, since, latest, flow_run_id=flow_run_id)
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
        report = validate_incoming_changes(frame, templates.relations())
        repo.record_rejections(session, run.id, [repo.Rejection(cid, reason) for cid, reason in report.rejections])
        append_event(
            session, started_by, "ingest", f"run:{run.id}",
            {"model": model_name, "editor": editor, "feed_from": since, "feed_to": latest,
             "changes": len(changes), "accepted": len(report.accepted_ids), "rejected": len(report.rejections),
             "rejections": [{"change_id": cid, "reason": reason} for cid, reason in report.rejections]},
        )
        if not report.accepted_ids:
            repo.update_run(session, run.id, status="failed", error="every incoming change was rejected")
            append_event(session, started_by, "run_failed", f"run:{run.id}", {"reason": "every incoming change was rejected"})
        log.info("run %s: %d changes, %d accepted, %d rejected", run.id, len(changes),
                 len(report.accepted_ids), len(report.rejections))
        return IngestOutcome(run.id if report.accepted_ids else None, len(report.accepted_ids),
                             len(report.rejections), f"run {run.id}")


@task(name="ingest-changes", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient_only)
def ingest_task(model_name: str, editor: str, started_by: str, flow_run_id: str | None = None) -> dict:
    with service_context() as ctx:
        outcome = ingest_changes(ctx, model_name, editor, started_by, flow_run_id)
        return outcome.__dict__
