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
from prefect.runtime import flow_run

from editing.registry import parse_plan, resolve_mode
from infra import repository as repo
from infra.audit import append_event
from infra.context import current_user, service_context
from infra.settings import Settings
from tasks.evaluation_sets import build_sets_task
from tasks.ingest import ingest_task
from tasks.run_lease import end_lease
from tasks.validate import request_approval_task, validate_task
from flows.edit import edit_model

log = logging.getLogger(__name__)


@flow(name="catalogue-refresh")
def catalogue_refresh(
    model_name: str | None = None,
    editor: str | None = None,
    started_by: str | None = None,
    hparams: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one refresh; returns {'run_id', 'status', 'message'}."""
    logger = get_run_logger()
    settings = Settings.load()
    model_name = model_name or settings.model_name
    editor = editor or settings.default_editor
    started_by = started_by or current_user()
    resolve_mode(parse_plan(editor), settings.edit_mode)  # an unknown editor or mode fails before anything is ingested
    outcome = ingest_task(model_name, editor, started_by, str(flow_run.get_id() or ""))
    run_id = outcome["run_id"]
    if run_id is None:
        logger.info("nothing to edit: %s", outcome["message"])
        return {"run_id": None, "status": "nothing_to_do", "message": outcome["message"],
                "rejected": outcome["rejected"]}
    try:
        build_sets_task(run_id)
        if settings.edit_deployment:
            _edit_on_work_pool(settings.edit_deployment, run_id, editor, hparams)
        else:
            edit_model(run_id, editor, hparams)
        validation = validate_task(run_id)
        request_approval_task(run_id)
    except Exception as exc:
        _mark_failed(run_id, started_by, exc)
        raise
    finally:
        _end_lease(run_id)
    logger.info("run %s awaits approval (retention validation %s)", run_id, "passed" if validation["success"] else "FAILED")
    return {"run_id": run_id, "status": "awaiting_approval", "validation_passed": validation["success"],
            "accepted": outcome["accepted"], "rejected": outcome["rejected"], "message": f"run {run_id} awaits approval"}


def _edit_on_work_pool(deployment: str, run_id: int, editor: str, hparams: dict[str, Any] | None) -> None:
    from prefect.deployments import run_deployment

    child = run_deployment(deployment, parameters={"run_id": run_id, "editor": editor, "hparams": hparams}, timeout=None)
    if child.state is None or not child.state.is_completed():
        raise RuntimeError(f"edit step on {deployment} ended {child.state.name if child.state else 'without a state'}")


def _end_lease(run_id: int) -> None:
    try:
        with service_context() as ctx:
            end_lease(ctx, run_id)
    except Exception:  # pragma: no cover - an unreleased lease expires by itself
        log.exception("could not release the refresh lease of run %s", run_id)


def _mark_failed(run_id: int, actor: str, exc: BaseException) -> None:
    """A failed run keeps its changes pending (the watermark does not move) and says why."""
    try:
        with service_context() as ctx, ctx.db.session() as session:
            run = repo.get_run(session, run_id)
            if run.status not in repo.FINAL_STATUSES:
                repo.update_run(session, run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
                append_event(session, actor, "run_failed", f"run:{run_id}", {"error": f"{type(exc).__name__}: {exc}"})
    except Exception:  # pragma: no cover - the original error matters more
        log.exception("could not mark run %s failed", run_id)
