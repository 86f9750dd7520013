"""Build the run's target set (the accepted changes) and regression set (what must not change)."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra import repository as repo
from infra.audit import append_event
from infra.context import ServiceContext, service_context
from infra.errors import InvalidState
from tasks.catalogue_inputs import heldout_text_for, templates_for
from tasks.run_artifacts import put_json, sets_to_json
from validation.sets import build_regression_set, build_target_set

log = logging.getLogger(__name__)


def build_sets(ctx: ServiceContext, run_id: int) -> str:
    """Writes `runs/<id>/sets.json` to the store and returns its key."""
    templates = templates_for(ctx.settings)
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
        rejected = {r.change_id for r in repo.rejections_for(session, run_id)}
        changes = [c for c in repo.changes_since(session, run.watermark_from, run.watermark_to) if c.change_id not in rejected]
        facts = repo.load_facts(session)
    if not changes:
        raise InvalidState(f"run {run_id} has no accepted changes to edit")
    targets = build_target_set(changes, templates)
    regression = build_regression_set(facts, targets, templates, heldout_text=heldout_text_for(ctx.settings, facts))
    key = put_json(ctx, run_id, "sets.json", sets_to_json(targets, regression))
    with ctx.db.session() as session:
        append_event(session, run.started_by, "build_sets", f"run:{run_id}",
                     {"targets": len(targets), "neighbourhood": len(regression.neighbourhood),
                      "unrelated": len(regression.unrelated), "heldout_texts": len(regression.heldout_text)})
    log.info("run %s: %d targets, %d neighbourhood, %d unrelated", run_id, len(targets),
             len(regression.neighbourhood), len(regression.unrelated))
    return key


@task(name="build-evaluation-sets", cache_policy=NO_CACHE)
def build_sets_task(run_id: int) -> str:
    with service_context() as ctx:
        return build_sets(ctx, run_id)
