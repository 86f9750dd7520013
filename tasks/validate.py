"""Validate retention with the Great Expectations suite, then ask a reviewer for approval."""

from __future__ import annotations

import logging

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra import repository as repo
from infra.audit import append_event
from infra.context import ServiceContext, service_context
from infra.errors import InvalidState
from tasks.run_lease import keep_lease
from tasks.run_artifacts import VALIDATION_DOCS_FILE, VALIDATION_RESULT_FILE, put_bytes, put_json
from validation.gx_docs import render_validation_docs
from validation.gx_suites import RetentionReport, validate_retention

log = logging.getLogger(__name__)


def validate_run(ctx: ServiceContext, run_id: int) -> dict:
    """Checks the retention table against the configured thresholds; the result is kept with the run
    (GX's JSON result, the record, and its Data Docs page, which opens offline)."""
    keep_lease(ctx, run_id)
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
    if not run.metrics or "table" not in run.metrics:
        raise InvalidState(f"run {run_id} has not been evaluated")
    report = validate_retention(pd.DataFrame(run.metrics["table"]), dict(ctx.settings.thresholds))
    put_json(ctx, run_id, VALIDATION_RESULT_FILE, report.gx_result)
    _keep_docs_page(ctx, run_id, report)
    summary = {"success": report.success, "checks": report.checks, "thresholds": dict(ctx.settings.thresholds)}
    with ctx.db.session() as session:
        repo.update_run(session, run_id, status="validated", validation=summary)
        append_event(session, run.started_by, "validate", f"run:{run_id}",
                     {"success": report.success, "failed": [c["metric"] for c in report.checks if not c["success"]]})
    log.info("run %s retention validation: %s", run_id, "passed" if report.success else "FAILED")
    return summary


def _keep_docs_page(ctx: ServiceContext, run_id: int, report: RetentionReport) -> None:
    """Store GX's Data Docs page of the result; a page that cannot be made never fails the run (the
    JSON result is the record)."""
    try:
        page = render_validation_docs(report.gx_result, observed={c["metric"]: c["observed"] for c in report.checks},
                                      run_name=f"refresh run {run_id}")
        put_bytes(ctx, run_id, VALIDATION_DOCS_FILE, page.encode("utf-8"))
    except Exception:
        log.exception("run %s: the GX Data Docs page of the retention validation was not kept (the JSON result is)",
                      run_id)


def request_approval(ctx: ServiceContext, run_id: int) -> None:
    with ctx.db.session() as session:
        run = repo.update_run(session, run_id, status="awaiting_approval")
        append_event(session, run.started_by, "approval_requested", f"run:{run_id}",
                     {"delta": run.delta_sha, "validation_passed": bool(run.validation and run.validation.get("success")),
                      "reviewers": list(ctx.settings.reviewers)})


@task(name="validate-retention", cache_policy=NO_CACHE)
def validate_task(run_id: int) -> dict:
    with service_context() as ctx:
        return validate_run(ctx, run_id)


@task(name="request-approval", cache_policy=NO_CACHE)
def request_approval_task(run_id: int) -> None:
    with service_context() as ctx:
        request_approval(ctx, run_id)
