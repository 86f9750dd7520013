"""Edit: compute the run's delta with its editor plan and store it (not yet promoted).

Sequential mode edits the live model (base + promoted chain) with this run's targets; cumulative
mode edits the *base* model with every fact of the ledger, so the new delta replaces the chain
(its manifest says ``"basis": "base"``). Either way the model on disk and the head are untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from editing.delta import Delta
from editing.model_io import weights_fingerprint
from editing.plan import run_plan
from editing.protocol import EditContext
from editing.registry import hparams_for_model
from infra import repository as repo
from infra.audit import append_event
from infra.context import ServiceContext, service_context
from infra.decoding import greedy_answers
from infra.domain import EditRequest
from tasks.catalogue_inputs import statistics_corpus_for, templates_for
from tasks.live_model import BASIS_BASE, load_live_model
from tasks.run_lease import keep_lease
from tasks.run_artifacts import load_sets

log = logging.getLogger(__name__)

MAX_POOL = 2000


def fact_pool(
    ctx: ServiceContext, requests: list[EditRequest], exclude_prompts: set[str], model: Any = None, tokenizer: Any = None,
) -> tuple[tuple[str, str], ...]:
    """Catalogue prompts whose answers must not change, minus the edited facts and the evaluation items.

    With a model, each prompt's answer is what the model says now (its greedy answer), not the
    database value: a regulariser that taught the database value would also "correct" answers the
    refresh is not about, and every answer the edit changes, right or wrong, is a retention loss.
    """
    templates = templates_for(ctx.settings)
    edited = {(t.subject, t.relation) for t in requests}
    with ctx.db.session() as session:
        facts = repo.accepted_facts(session)
    pool = []
    for fact in facts:
        if (fact.subject, fact.relation) in edited or fact.relation not in templates:
            continue
        prompt = templates[fact.relation].render(fact.subject)
        if prompt not in exclude_prompts:
            pool.append((prompt, fact.object))
    pool = pool[:MAX_POOL]
    if model is not None and pool:
        answers = greedy_answers(model, tokenizer, [p for p, _ in pool])
        pool = [(p, said) for (p, _), said in zip(pool, answers) if said]
    return tuple(pool)


def plan_hparams(plan: tuple[str, ...], model: Any, overrides: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Each editor's hyperparameters for `model`. Overrides of a one-editor plan are that editor's;
    for a longer plan they are keyed by editor name ({"saul": {"steps": 40}})."""
    overrides = overrides or {}
    if len(plan) == 1 and not (set(overrides) & set(plan)):
        return [(plan[0], hparams_for_model(plan[0], model, overrides))]
    return [(name, hparams_for_model(name, model, overrides.get(name))) for name in plan]


def compute_delta(ctx: ServiceContext, run_id: int, editor_name: str | None = None,
                  hparams_overrides: dict[str, Any] | None = None) -> str:
    """Returns the stored delta's id. `editor_name` is the run's plan (the sets file is authoritative)."""
    keep_lease(ctx, run_id)
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
        facts = repo.accepted_facts(session)
    sets = load_sets(ctx, run_id)
    cumulative = sets.mode == "cumulative"
    live = load_live_model(ctx, run.model_name, head=sets.head)
    model, tokenizer = live.model, live.tokenizer
    excluded = {p for p, _ in sets.regression.neighbourhood} | {p for p, _ in sets.regression.unrelated}
    # what the live model says now is what must not change, in either mode: read it before editing
    pool = fact_pool(ctx, sets.requests, excluded, model, tokenizer)
    carried = live.carried_state()
    if cumulative:  # the edit starts from the bare base, and every ledger fact is written afresh
        live.reverted_to_base()
        carried = {}
    steps = plan_hparams(sets.plan, model, hparams_overrides)
    context = EditContext(
        state=carried, cache=ctx.store, fact_pool=pool,
        corpus=tuple(statistics_corpus_for(ctx.settings, facts)),
        model_fingerprint=live.base_fingerprint, show_progress=True,
        base_weights=None if cumulative else live.at_base, from_base=cumulative,
    )
    before = weights_fingerprint(model)
    started = time.perf_counter()
    result = run_plan(model, tokenizer, sets.requests, steps, context,
                      progress=lambda msg: log.info("run %s: %s", run_id, msg))
    seconds = time.perf_counter() - started
    if weights_fingerprint(model) != before:
        raise RuntimeError(f"editor plan {','.join(sets.plan)} modified the model while computing; this is a bug")
    unwritten = {sets.requests[i].prompt: why for i, why in sorted(result.unwritten.items())}
    facts_written = [
        {"subject": t.subject, "relation": t.relation, "old": t.target_true, "new": t.target_new}
        for i, t in enumerate(sets.requests) if i not in result.unwritten
    ]
    tensors = dict(result.tensors) | {f"state::{k}": v for k, v in result.state.items()}
    editor_label = ",".join(sets.plan)
    hparams = {"plan": list(sets.plan), "editors": {name: asdict(hp) for name, hp in steps}} if len(steps) > 1 \
        else asdict(steps[0][1])
    routing = [{"editor": s.editor, "given": len(s.given), "written_checked": len(s.written), "seconds": round(s.seconds, 2)}
               for s in result.steps]
    delta = Delta.create(
        tensors, editor=editor_label, hparams=hparams, base_fingerprint=live.base_fingerprint,
        parent=sets.head, facts=facts_written, model=model, created_by=run.started_by,
        extra={"model_name": run.model_name, "run_id": run_id, "apply_kind": result.apply_kind,
               "basis": BASIS_BASE if cumulative else "parent", "mode": sets.mode, "plan": list(sets.plan),
               "unwritten": unwritten, "routing": routing},
    )
    delta_id = ctx.store.put(delta.to_files())
    with ctx.db.session() as session:
        repo.add_delta(session, repo.DeltaRecord(
            sha256=delta_id, parent_sha=sets.head, model_name=run.model_name, editor=editor_label,
            uri=ctx.store.uri_for(delta_id), size_bytes=delta.size_bytes, manifest=delta.manifest,
            created_at=datetime.now(timezone.utc),
        ))
        repo.update_run(session, run_id, status="edited", delta_sha=delta_id)
        append_event(session, run.started_by, "edit", f"run:{run_id}",
                     {"editor": editor_label, "mode": sets.mode, "delta": delta_id, "parent": sets.head,
                      "requests": len(sets.requests), "unwritten": len(unwritten), "routing": routing,
                      "hparams_sha256": delta.manifest["hparams_sha256"], "size_bytes": delta.size_bytes,
                      "seconds": round(seconds, 2)})
    log.info("run %s: %s (%s) computed delta %s over %d requests (%d bytes) in %.1fs", run_id, editor_label,
             sets.mode, delta_id[:12], len(sets.requests), delta.size_bytes, seconds)
    return delta_id


@task(name="compute-delta", cache_policy=NO_CACHE)
def edit_task(run_id: int, editor_name: str | None = None, hparams_overrides: dict[str, Any] | None = None) -> str:
    with service_context() as ctx:
        return compute_delta(ctx, run_id, editor_name, hparams_overrides)
