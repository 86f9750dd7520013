"""The catalogue refresh: the business process from changed facts to an approval request.

    ingest changes -> validate incoming rows (GX) -> build target and regression sets
    -> edit (in process, or on the GPU work pool) -> evaluate before/after -> validate retention (GX)
    -> request approval

Promotion happens only after a reviewer approves through `kus approve` (flows/promote.py).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, State

from editing.registry import parse_plan, resolve_mode
from infra import repository as repo
from infra.audit import append_event
from infra.context import current_user, service_context
from infra.settings import Settings
from tasks.evaluation_sets import build_sets_task
from tasks.ingest import decision_pending, ingest_task
from tasks.run_lease import end_lease
from tasks.validate import request_approval_task, validate_task
from flows.edit import edit_model
from flows.prefect_setup import arm_exit_watchdog
from flows.logs import service_records_at_info
from flows.work_pool import run_edit_on_pool

log = logging.getLogger(__name__)


def run_starter(started_by: str | None) -> str:
    """Who started this refresh, from what the caller cannot choose when it comes through Prefect: a
    deployment run (the schedule, the UI, the API) is started by its deployment; a flow called in
    process by the caller (`started_by`, or the process's user)."""
    if deployment.get_id():
        return f"prefect-deployment:{deployment.get_name()}"
    return started_by or current_user()


@flow(name="catalogue-refresh")
def catalogue_refresh(
    model_name: str | None = None,
    editor: str | None = None,
    started_by: str | None = None,
    hparams: dict[str, Any] | None = None,
) -> State:
    """Run one refresh. The final state names the outcome (AwaitingApproval, ValidationFailed,
    WaitingForDecision, NothingToDo; failures are Failed); its result is {'run_id', 'status', 'message'}."""
    service_records_at_info()
    logger = get_run_logger()
    settings = Settings.load()
    model_name = model_name or settings.model_name
    editor = editor or settings.default_editor
    starter = run_starter(started_by)
    if started_by and starter != started_by:
        logger.warning("started_by=%r ignored: a deployment run is recorded as started by %s", started_by, starter)
    started_by = starter
    resolve_mode(parse_plan(editor), settings.edit_mode)  # an unknown editor or mode fails before anything is ingested
    with service_context() as ctx, ctx.db.session() as session:
        pending = decision_pending(session, model_name)
    if pending:  # not a failure: the previous run is with a reviewer
        logger.info(pending)
        return Completed(name="WaitingForDecision", message=pending,
                         data={"run_id": None, "status": "waiting_for_decision", "message": pending})
    outcome = ingest_task(model_name, editor, started_by, str(flow_run.get_id() or ""))
    run_id = outcome["run_id"]
    if run_id is None:
        logger.info("nothing to edit: %s", outcome["message"])
        return Completed(name="NothingToDo", message=outcome["message"],
                         data={"run_id": None, "status": "nothing_to_do", "message": outcome["message"],
                               "rejected": outcome["rejected"]})
    try:
        build_sets_task(run_id)
        if settings.edit_deployment:
            run_edit_on_pool(settings.edit_deployment, run_id, editor, hparams)
        else:
            edit_model(run_id, editor, hparams)
        validation = validate_task(run_id)
        request_approval_task(run_id)
    except BaseException as exc:  # SIGTERM (SystemExit) and Ctrl-C too: the run says it was interrupted
        if _interrupted(exc):
            arm_exit_watchdog(143 if not isinstance(exc, KeyboardInterrupt) else 130)
        _mark_failed(run_id, started_by, exc)
        raise
    finally:
        _end_lease(run_id)
    passed = bool(validation["success"])
    logger.info("run %s awaits approval (retention validation %s)", run_id, "passed" if passed else "FAILED")
    _publish_validation(run_id, validation)
    message = f"run {run_id} awaits approval" + ("" if passed else "; its retention validation FAILED")
    return Completed(name="AwaitingApproval" if passed else "ValidationFailed", message=message,
                     data={"run_id": run_id, "status": "awaiting_approval", "validation_passed": passed,
                           "accepted": outcome["accepted"], "rejected": outcome["rejected"], "message": message})


def _publish_validation(run_id: int, validation: dict[str, Any]) -> None:
    """The review (changes, knowledge diff, validation table) as a Prefect artifact: what the UI shows
    a reviewer, the same text as `kus review` (never the approval path)."""
    from flows.review import review_markdown

    try:
        with service_context() as ctx:
            markdown = review_markdown(ctx, run_id)
        create_markdown_artifact(key=f"run-{run_id}-review", markdown=markdown,
                                 description=f"run {run_id}: retention {'PASS' if validation['success'] else 'FAIL'}")
    except Exception:  # pragma: no cover - the run row holds the table; the artifact is a view of it
        log.exception("could not publish the review artifact of run %s", run_id)
def _end_lease(run_id: int) -> None:
    try:
        with service_context() as ctx:
            end_lease(ctx, run_id)
    except Exception:  # pragma: no cover - an unreleased lease expires by itself
        log.exception("could not release the refresh lease of run %s", run_id)


def _interrupted(exc: BaseException) -> bool:
    from prefect.exceptions import TerminationSignal

    return isinstance(exc, (TerminationSignal, SystemExit, KeyboardInterrupt))


def _mark_failed(run_id: int, actor: str, exc: BaseException) -> None:
    """A failed run keeps its changes pending (the watermark does not move) and says why."""
    from prefect.exceptions import TerminationSignal

    if isinstance(exc, TerminationSignal):
        why = f"interrupted: the refresh process received signal {getattr(exc, 'signal', '?')} (SIGTERM: 15) during the run"
    elif isinstance(exc, (SystemExit, KeyboardInterrupt)):
        why = f"interrupted: the refresh process was stopped ({type(exc).__name__} {exc}) during the run"
    else:
        why = f"{type(exc).__name__}: {exc}"
    try:
        with service_context() as ctx, ctx.db.session() as session:
            run = repo.get_run(session, run_id)
            if run.status not in repo.FINAL_STATUSES:
                repo.update_run(session, run_id, status="failed", error=why)
                append_event(session, actor, "run_failed", f"run:{run_id}", {"error": why})
    except Exception:  # pragma: no cover - the original error matters more
        log.exception("could not mark run %s failed", run_id)
