"""Build the run's sets: the targets (what this refresh changes in the live model), the editor's
requests (the targets, or in cumulative mode every fact of the ledger), the regression set (what
must not change) and the catalogue-agreement set (every changed fact and a fixed sample of the rest)."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NO_CACHE

from editing.registry import parse_plan, resolve_mode
from infra import repository as repo
from infra.audit import append_event
from infra.context import ServiceContext, service_context
from infra.errors import InvalidState
from tasks.catalogue_inputs import heldout_text_for, templates_for
from tasks.live_model import head_values
from tasks.run_lease import keep_lease
from tasks.run_artifacts import RunSets, put_json
from validation.sets import build_agreement_set, build_regression_set, ledger_requests, ledger_targets

log = logging.getLogger(__name__)


def targets_cap(max_targets: int, rejected_attempts: int) -> int:
    """How many facts a refresh edits: `max_targets`, halved for every rejected attempt on the same
    head (at least one). A batch the gate rejected is retried smaller, so a hard batch does not block
    every later refresh; the deferred facts stay outstanding and follow in feed order."""
    return max(1, max_targets >> min(rejected_attempts, 30))


def build_sets(ctx: ServiceContext, run_id: int) -> str:
    """Writes `runs/<id>/sets.json` to the store and returns its key."""
    keep_lease(ctx, run_id)
    templates = templates_for(ctx.settings)
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
        head = repo.get_head(session, run.model_name)
        live = head_values(session, head)
        ledger = repo.ledger(session, run.watermark_to)
        base = repo.base_values(session, set(live))
        facts = repo.accepted_facts(session)
        attempt = repo.rejected_attempts(session, run.model_name, head)
    plan = parse_plan(run.editor)
    mode = resolve_mode(plan, ctx.settings.edit_mode)
    targets = ledger_targets(ledger, live, base, templates)
    if not targets:
        raise InvalidState(f"run {run_id} has nothing to change: the live model says what the database says")
    # bounded work: the first `cap` in feed order; the rest stay outstanding for the next refreshes
    cap = targets_cap(ctx.settings.max_targets, attempt)
    targets, deferred = targets[:cap], targets[cap:]
    deferred_keys = {(t.subject, t.relation) for t in deferred}
    if deferred:
        log.warning("run %s: %d facts to change, %d in this run (KUS_MAX_TARGETS %d%s); %d left to the next refreshes",
                    run_id, len(targets) + len(deferred), len(targets), ctx.settings.max_targets,
                    f", halved after {attempt} rejected attempt(s) on this head" if attempt else "", len(deferred))
    requests = ledger_requests([e for e in ledger if e.key not in deferred_keys], templates) \
        if mode == "cumulative" else targets
    # facts the service changed are judged by catalogue agreement; the regression set holds the rest
    regression = build_regression_set(facts, targets, templates, heldout_text=heldout_text_for(ctx.settings, facts),
                                      exclude=[e.key for e in ledger])
    agreement = build_agreement_set(facts, ledger, templates, sample_size=ctx.settings.agreement_sample,
                                    also_changed=targets, deferred=deferred_keys)
    sets = RunSets(targets=targets, requests=requests, regression=regression, agreement=agreement,
                   mode=mode, plan=tuple(plan), head=head)
    key = put_json(ctx, run_id, "sets.json", sets.to_json())
    with ctx.db.session() as session:
        append_event(session, run.started_by, "build_sets", f"run:{run_id}",
                     {"mode": mode, "plan": plan, "head": head, "targets": len(targets), "requests": len(requests),
                      "deferred": len(deferred), "cap": cap, "rejected_attempts": attempt,
                      "ledger": len(ledger), "neighbourhood": len(regression.neighbourhood),
                      "unrelated": len(regression.unrelated), "heldout_texts": len(regression.heldout_text),
                      "agreement_changed": len(agreement.changed), "agreement_unchanged": len(agreement.unchanged)})
    log.info("run %s (%s, %s): %d targets, %d editor requests (ledger %d), %d neighbourhood, %d unrelated",
             run_id, ",".join(plan), mode, len(targets), len(requests), len(ledger),
             len(regression.neighbourhood), len(regression.unrelated))
    return key


@task(name="build-evaluation-sets", cache_policy=NO_CACHE)
def build_sets_task(run_id: int) -> str:
    with service_context() as ctx:
        return build_sets(ctx, run_id)
