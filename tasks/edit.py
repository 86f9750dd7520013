"""Edit: compute the run's delta with its editor plan and store it (not yet promoted).

Sequential mode edits the live model (base + promoted chain) with this run's targets; cumulative
mode edits the *base* model with every fact of the ledger, so the new delta replaces the chain
(its manifest says ``"basis": "base"``). Either way the model on disk and the head are untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from contextlib import AbstractContextManager
from typing import Any, Callable, NamedTuple

from prefect import task
from prefect.cache_policies import NO_CACHE

from editing.delta import Delta
from editing.model_io import weights_fingerprint
from editing.plan import run_plan
from editing.protocol import EditContext
from editing.registry import hparams_for_model
from infra import repository as repo
from infra.audit import append_event
from infra.memory import releases_memory
from infra.context import ServiceContext, service_context
from infra.decoding import greedy_answers
from infra.domain import EditRequest
from tasks.catalogue_inputs import statistics_corpus_for, templates_for
from tasks.live_model import BASIS_BASE, head_values, load_live_model
from tasks.run_lease import heartbeat, keep_lease
from tasks.run_artifacts import head_answers, load_sets
from validation.agreement import AGREEMENT_ANSWER_TOKENS as GREEDY_TOKENS
from validation.answer_match import answer_match_for

log = logging.getLogger(__name__)

MAX_POOL = 2000


class Rehearsal(NamedTuple):
    """The catalogue facts a rehearsing editor sees: `keep` (prompt, what the live model says now)
    and `repair` (prompt, database value) for drift to undo."""

    keep: tuple[tuple[str, str], ...]
    repair: tuple[tuple[str, str], ...] = ()


def fact_pool(
    ctx: ServiceContext, requests: list[EditRequest], exclude_prompts: set[str], model: Any = None, tokenizer: Any = None,
    head: str | None = None, at_base: Callable[[], AbstractContextManager[None]] | None = None,
) -> Rehearsal:
    """Catalogue prompts whose answers must not change, minus the edited facts and the evaluation items.

    `model` is the live model at `head` (its answers are read from that state's evaluation where it
    gave them). With a model, each kept prompt's answer is what the model says now (its greedy answer), not the
    database value: a regulariser that taught the database value would also "correct" answers the
    refresh is not about (facts the base never knew), and every answer the edit changes is a
    retention loss. The exception is drift the service itself caused: a fact the live model should
    already say (nothing outstanding: the chain ending at `head` taught it, or it is the base value)
    but does not, although the chain taught it or the base model (`at_base`) said it. Those go to
    `repair` with their database value; earlier sequential edits broke them, and keeping the live
    answer would keep them broken.
    """
    templates = templates_for(ctx.settings)
    edited = {(t.subject, t.relation) for t in requests}
    with ctx.db.session() as session:
        facts = repo.accepted_facts(session)
        taught = head_values(session, head) if model is not None else {}
        base_value = repo.base_values(session) if model is not None else {}
    items = []
    for fact in facts:
        key = (fact.subject, fact.relation)
        if key in edited or fact.relation not in templates:
            continue
        prompt = templates[fact.relation].render(fact.subject)
        if prompt not in exclude_prompts:
            items.append((prompt, key, fact.object))
    items = items[:MAX_POOL]
    if model is None or not items:
        return Rehearsal(keep=tuple((p, value) for p, _, value in items))
    # the live model at `head` answered most of these in its own run's evaluation: ask only the rest
    memo, _ = head_answers(ctx, head)
    said = memo.greedy_answers([p for p, _, _ in items], GREEDY_TOKENS,
                               lambda todo: greedy_answers(model, tokenizer, todo, max_new_tokens=GREEDY_TOKENS))
    match = answer_match_for(ctx.settings.answer_match, model)
    # the live model should say the database value of these (nothing outstanding) but does not
    drifted = [i for i, (_, key, value) in enumerate(items)
               if not match(said[i], value) and taught.get(key, base_value.get(key, value)) == value]
    repaired = {i for i in drifted if items[i][1] in taught}
    unchanged = [i for i in drifted if i not in repaired]
    if unchanged and at_base is not None:
        with at_base():
            base_said = greedy_answers(model, tokenizer, [items[i][0] for i in unchanged])
        repaired |= {i for i, b in zip(unchanged, base_said) if match(b, items[i][2])}
    keep = tuple((p, s) for i, ((p, _, _), s) in enumerate(zip(items, said)) if s and i not in repaired)
    repair = tuple((items[i][0], items[i][2]) for i in sorted(repaired))
    if repair:
        log.info("%d catalogue facts drifted from the database value under earlier edits; rehearsed as repairs",
                 len(repair))
    return Rehearsal(keep=keep, repair=repair)


def plan_hparams(plan: tuple[str, ...], model: Any, overrides: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Each editor's hyperparameters for `model`. Overrides of a one-editor plan are that editor's;
    for a longer plan they are keyed by editor name ({"saul": {"steps": 40}})."""
    overrides = overrides or {}
    if len(plan) == 1 and not (set(overrides) & set(plan)):
        return [(plan[0], hparams_for_model(plan[0], model, overrides))]
    return [(name, hparams_for_model(name, model, overrides.get(name))) for name in plan]


def reseeded(steps: list[tuple[str, Any]], attempt: int, overrides: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The `attempt`-th retry on the same head draws other random numbers (seed + attempt): a rejected
    edit of the same outstanding facts is not repeated bit for bit. A seed the caller set is kept."""
    if attempt == 0 or "seed" in (overrides or {}):
        return steps
    out = []
    for name, hp in steps:
        chosen = (overrides or {}).get(name)
        if hasattr(hp, "seed") and not (isinstance(chosen, dict) and "seed" in chosen):
            hp = replace(hp, seed=hp.seed + attempt)
        out.append((name, hp))
    return out


@releases_memory
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
    rehearsal = fact_pool(ctx, sets.requests, excluded, model, tokenizer, head=sets.head, at_base=live.at_base)
    carried = live.carried_state()
    if cumulative:  # the edit starts from the bare base, and every ledger fact is written afresh
        live.reverted_to_base()
        carried = {}
        rehearsal = Rehearsal(keep=rehearsal.keep)  # the base has no drift to undo
    steps = plan_hparams(sets.plan, model, hparams_overrides)
    with ctx.db.session() as session:
        attempt = repo.rejected_attempts(session, run.model_name, sets.head)
    steps = reseeded(steps, attempt, hparams_overrides)
    context = EditContext(
        state=carried, cache=ctx.store, fact_pool=rehearsal.keep, repair_pool=rehearsal.repair,
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
    routing = [{"editor": s.editor, "given": len(s.given), "written_checked": len(s.written), "seconds": round(s.seconds, 2),
                "steps": s.stats.get("steps")} for s in result.steps]
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
                      "attempt": attempt, "repair_facts": len(rehearsal.repair),
                      "requests": len(sets.requests), "unwritten": len(unwritten), "routing": routing,
                      "hparams_sha256": delta.manifest["hparams_sha256"], "size_bytes": delta.size_bytes,
                      "seconds": round(seconds, 2)})
    log.info("run %s: %s (%s) computed delta %s over %d requests (%d bytes) in %.1fs", run_id, editor_label,
             sets.mode, delta_id[:12], len(sets.requests), delta.size_bytes, seconds)
    return delta_id


@task(name="compute-delta", cache_policy=NO_CACHE)
def edit_task(run_id: int, editor_name: str | None = None, hparams_overrides: dict[str, Any] | None = None) -> str:
    with service_context() as ctx, heartbeat(ctx, run_id, ctx.settings.heartbeat_seconds):
        return compute_delta(ctx, run_id, editor_name, hparams_overrides)
