"""Edit: compute the run's delta on top of the live model and store it (not yet promoted)."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from editing.architecture import family_of
from editing.delta import Delta
from editing.model_io import weights_fingerprint
from editing.protocol import EditContext
from editing.registry import get_editor, resolve_hparams
from infra import repository as repo
from infra.audit import append_event
from infra.context import ServiceContext, service_context
from infra.domain import EditRequest
from tasks.catalogue_inputs import templates_for
from tasks.live_model import load_live_model
from tasks.run_artifacts import get_json, sets_from_json

log = logging.getLogger(__name__)

MAX_POOL = 2000


def fact_pool(ctx: ServiceContext, targets: list[EditRequest], exclude_prompts: set[str]) -> tuple[tuple[str, str], ...]:
    """Facts the model knows and must keep, minus the edited ones and the evaluation items."""
    templates = templates_for(ctx.settings)
    edited = {(t.subject, t.relation) for t in targets}
    with ctx.db.session() as session:
        facts = repo.load_facts(session)
    pool = []
    for fact in facts:
        if (fact.subject, fact.relation) in edited or fact.relation not in templates:
            continue
        prompt = templates[fact.relation].render(fact.subject)
        if prompt not in exclude_prompts:
            pool.append((prompt, fact.object))
    return tuple(pool[:MAX_POOL])


def statistics_corpus(ctx: ServiceContext, limit: int = 1000) -> tuple[str, ...]:
    """Text for the edited layers' key statistics: the catalogue's prompts, by subject, without answers.

    Stable from run to run (prices change, prompts do not), so statistics cached under its hash are
    computed once per base model; never the held-out text, which must stay unseen by the editors.
    """
    templates = templates_for(ctx.settings)
    with ctx.db.session() as session:
        facts = repo.load_facts(session)
    ordered = sorted((f.subject, f.relation) for f in facts if f.relation in templates)
    return tuple(templates[relation].render(subject) for subject, relation in ordered[:limit])


def compute_delta(ctx: ServiceContext, run_id: int, editor_name: str, hparams_overrides: dict[str, Any] | None = None) -> str:
    """Returns the stored delta's id; the model on disk and the promoted head are untouched."""
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
    targets, regression = sets_from_json(get_json(ctx, run_id, "sets.json"))
    live = load_live_model(ctx, run.model_name)
    model, tokenizer = live.model, live.tokenizer
    hparams = resolve_hparams(editor_name, family_of(model), hparams_overrides)
    excluded = {p for p, _ in regression.neighbourhood} | {p for p, _ in regression.unrelated}
    pool = fact_pool(ctx, targets, excluded)
    context = EditContext(
        state=live.carried_state(), cache=ctx.store, fact_pool=pool,
        corpus=statistics_corpus(ctx),
        model_fingerprint=live.base_fingerprint, show_progress=True,
    )
    before = weights_fingerprint(model)
    started = time.perf_counter()
    result = get_editor(editor_name).compute(model, tokenizer, targets, hparams, context)
    seconds = time.perf_counter() - started
    if weights_fingerprint(model) != before:
        raise RuntimeError(f"editor {editor_name!r} modified the model while computing; this is a bug in the editor")
    tensors = dict(result.tensors) | {f"state::{k}": v for k, v in result.state.items()}
    facts = [{"subject": t.subject, "relation": t.relation, "old": t.target_true, "new": t.target_new} for t in targets]
    delta = Delta.create(
        tensors, editor=editor_name, hparams=asdict(hparams), base_fingerprint=live.base_fingerprint,
        parent=live.head, facts=facts, model=model, created_by=run.started_by,
        extra={"model_name": run.model_name, "run_id": run_id, "apply_kind": result.apply_kind},
    )
    delta_id = ctx.store.put(delta.to_files())
    with ctx.db.session() as session:
        repo.add_delta(session, repo.DeltaRecord(
            sha256=delta_id, parent_sha=live.head, model_name=run.model_name, editor=editor_name,
            uri=ctx.store.uri_for(delta_id), size_bytes=delta.size_bytes, manifest=delta.manifest, created_at=datetime.now(timezone.utc),
        ))
        repo.update_run(session, run_id, status="edited", delta_sha=delta_id)
        append_event(session, run.started_by, "edit", f"run:{run_id}",
                     {"editor": editor_name, "delta": delta_id, "parent": live.head, "requests": len(targets),
                      "hparams_sha256": delta.manifest["hparams_sha256"], "size_bytes": delta.size_bytes,
                      "seconds": round(seconds, 2), "stats": result.stats})
    log.info("run %s: %s computed delta %s (%d bytes) in %.1fs", run_id, editor_name, delta_id[:12], delta.size_bytes, seconds)
    return delta_id


@task(name="compute-delta", cache_policy=NO_CACHE)
def edit_task(run_id: int, editor_name: str, hparams_overrides: dict[str, Any] | None = None) -> str:
    with service_context() as ctx:
        return compute_delta(ctx, run_id, editor_name, hparams_overrides)
