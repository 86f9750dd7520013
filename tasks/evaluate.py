"""Evaluate: score the live model before and after the run's delta on the target and regression
sets, and measure catalogue agreement (does the model say what the database says?) before and after."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra import repository as repo
from infra.audit import append_event
from infra.memory import releases_memory
from infra.context import ServiceContext, service_context
from infra.errors import InvalidState
from tasks.live_model import BASIS_BASE, LiveModel, fetch_delta, load_live_model
from tasks.run_lease import heartbeat, keep_lease
from tasks.run_artifacts import ANSWERS_AFTER_FILE, EVALUATION_ROWS_AFTER_FILE, head_answers, load_sets, put_bytes, put_json
from validation.agreement import (AgreementAnswers, agreement_answers, agreement_report, agreement_rows,
                                  base_readiness, knowledge_diff)
from validation.answer_match import answer_match_for
from validation.answer_memo import AnswerMemo
from validation.evaluate import efficacy_by_relation, evaluate, retention_table
from validation.sets import AgreementSet

log = logging.getLogger(__name__)

#: Run file: every catalogue fact of the agreement set whose answer the edit changes (`knowledge_diff`).
KNOWLEDGE_DIFF_FILE = "knowledge_diff.json"
def json_safe(value: Any) -> Any:
    """NaN (a metric with nothing to score) becomes null: JSON columns and the audit hash refuse NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def base_answers(ctx: ServiceContext, live: LiveModel, agreement: AgreementSet) -> AgreementAnswers:
    """The base model's answers to the agreement set, cached in the store under the base's
    fingerprint and the set's prompts (the base never changes, the sample rarely does)."""
    prompts = json.dumps([[p for p, _, _ in agreement.changed], [p for p, _, _ in agreement.unchanged]]).encode()
    key = f"agreement-base/v1/{live.base_fingerprint}/{hashlib.sha256(prompts).hexdigest()}.json"
    cached = ctx.store.get_blob(key)
    if cached is not None:
        data = json.loads(cached)
        return AgreementAnswers(changed=data["changed"], unchanged=data["unchanged"])
    with live.at_base():
        answers = agreement_answers(live.model, live.tokenizer, agreement)
    ctx.store.put_blob(key, json.dumps({"changed": answers.changed, "unchanged": answers.unchanged}).encode())
    return answers


@releases_memory
def evaluate_delta(ctx: ServiceContext, run_id: int) -> dict:
    """Stores per-item rows, the retention table and the agreement report with the run."""
    keep_lease(ctx, run_id)
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
    if run.delta_sha is None:
        raise InvalidState(f"run {run_id} has no delta to evaluate")
    sets = load_sets(ctx, run_id)
    live = load_live_model(ctx, run.model_name, head=sets.head)
    base = base_answers(ctx, live, sets.agreement)
    match = answer_match_for(ctx.settings.answer_match, live.model)
    readiness = base_readiness(sets.agreement, base, match)
    for warning in readiness.warnings():
        log.warning("run %s: %s", run_id, warning)
    memo_before, head_run = head_answers(ctx, sets.head)
    before = evaluate(live.model, live.tokenizer, sets.targets, sets.regression, memo=memo_before, match=match)
    said_before = agreement_answers(live.model, live.tokenizer, sets.agreement, progress="catalogue agreement, before",
                                    memo=memo_before)
    if head_run is not None:
        log.info("run %s: %d of %d questions to the live model answered from run %s's evaluation; %d computed",
                 run_id, memo_before.asked - memo_before.computed, memo_before.asked, head_run, memo_before.computed)
    agree_before = agreement_report(sets.agreement, said_before, base, match)
    delta = fetch_delta(ctx, run.delta_sha)
    if delta.manifest.get("basis") == BASIS_BASE:
        live.reverted_to_base()  # a cumulative delta replaces the chain: after = base + this delta
    applied = delta.apply(live.model)
    memo_after = AnswerMemo()
    try:
        after = evaluate(live.model, live.tokenizer, sets.targets, sets.regression, memo=memo_after, match=match)
        said_after = agreement_answers(live.model, live.tokenizer, sets.agreement, progress="catalogue agreement, after",
                                       memo=memo_after)
        agree_after = agreement_report(sets.agreement, said_after, base, match)
    finally:
        applied.revert()
    put_bytes(ctx, run_id, ANSWERS_AFTER_FILE, memo_after.to_bytes())
    table = retention_table(before, after)
    table = pd.concat([table, pd.DataFrame(agreement_rows(agree_before, agree_after), columns=table.columns)],
                      ignore_index=True)
    records = json_safe(table.to_dict(orient="records"))
    by_relation = efficacy_by_relation(sets.targets, after)
    agreement = {"before": agree_before.to_json(), "after": agree_after.to_json()}
    put_json(ctx, run_id, "evaluation_rows_before.json", before.rows.to_dict(orient="records"))
    put_json(ctx, run_id, EVALUATION_ROWS_AFTER_FILE, after.rows.to_dict(orient="records"))
    put_json(ctx, run_id, "retention_table.json", records)
    put_json(ctx, run_id, "agreement.json", agreement)
    diff = knowledge_diff(sets.agreement, said_before, said_after, match)
    put_json(ctx, run_id, KNOWLEDGE_DIFF_FILE, diff)
    not_written = {rel: len(e["not_written"]) for rel, e in by_relation.items() if e["not_written"]}
    with ctx.db.session() as session:
        summaries = json_safe({"before": before.summary, "after": after.summary})
        repo.update_run(session, run_id, metrics={
            **summaries, "table": records, "agreement": json_safe(agreement),
            "efficacy_by_relation": json_safe(by_relation), "mode": sets.mode, "plan": list(sets.plan),
            "base_readiness": {**readiness.to_json(), "warnings": readiness.warnings()},
            "knowledge_diff": diff["counts"],
        })
        append_event(session, run.started_by, "evaluate", f"run:{run_id}", {
            "delta": run.delta_sha, **summaries,
            "agreement_after": json_safe({"changed": agree_after.changed, "unchanged": agree_after.unchanged,
                                          "unchanged_kept": agree_after.unchanged_kept}),
            "not_written_by_relation": not_written,
            "base_knows": json_safe(readiness.share), "readiness_warnings": readiness.warnings(),
        })
    log.info("run %s evaluated: agreement on changed facts %.3f -> %.3f, unchanged %.3f -> %.3f; not written: %s",
             run_id, agree_before.changed, agree_after.changed, agree_before.unchanged, agree_after.unchanged,
             not_written or "none")
    return {"table": records}


@task(name="evaluate-delta", cache_policy=NO_CACHE)
def evaluate_task(run_id: int) -> dict:
    with service_context() as ctx, heartbeat(ctx, run_id, ctx.settings.heartbeat_seconds):
        return evaluate_delta(ctx, run_id)
