"""Evaluate: score the live model before and after the run's delta on the target and regression sets."""

from __future__ import annotations

import logging
import math
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra import repository as repo
from infra.audit import append_event
from infra.context import ServiceContext, service_context
from infra.errors import InvalidState
from tasks.live_model import fetch_delta, load_live_model
from tasks.run_artifacts import get_json, put_json, sets_from_json
from validation.evaluate import evaluate, retention_table

log = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """NaN (a metric with nothing to score) becomes null: JSON columns and the audit hash refuse NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def evaluate_delta(ctx: ServiceContext, run_id: int) -> dict:
    """Stores per-item rows and the retention table with the run; returns the table as records."""
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
    if run.delta_sha is None:
        raise InvalidState(f"run {run_id} has no delta to evaluate")
    targets, regression = sets_from_json(get_json(ctx, run_id, "sets.json"))
    live = load_live_model(ctx, run.model_name)
    before = evaluate(live.model, live.tokenizer, targets, regression)
    applied = fetch_delta(ctx, run.delta_sha).apply(live.model)
    try:
        after = evaluate(live.model, live.tokenizer, targets, regression)
    finally:
        applied.revert()
    table = retention_table(before, after)
    records = json_safe(table.to_dict(orient="records"))
    put_json(ctx, run_id, "evaluation_rows_before.json", before.rows.to_dict(orient="records"))
    put_json(ctx, run_id, "evaluation_rows_after.json", after.rows.to_dict(orient="records"))
    put_json(ctx, run_id, "retention_table.json", records)
    with ctx.db.session() as session:
        summaries = json_safe({"before": before.summary, "after": after.summary})
        repo.update_run(session, run_id, metrics={**summaries, "table": records})
        append_event(session, run.started_by, "evaluate", f"run:{run_id}", {"delta": run.delta_sha, **summaries})
    log.info("run %s evaluated: %s", run_id, {k: round(v, 3) for k, v in after.summary.items()})
    return {"table": records}


@task(name="evaluate-delta", cache_policy=NO_CACHE)
def evaluate_task(run_id: int) -> dict:
    with service_context() as ctx:
        return evaluate_delta(ctx, run_id)
