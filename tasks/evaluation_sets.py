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
from infra.domain import EditRequest
from infra.errors import InvalidState, ServiceError
from tasks.catalogue_inputs import heldout_text_for, templates_for
from tasks.live_model import head_values
from tasks.run_lease import keep_lease
from tasks.run_artifacts import EVALUATION_ROWS_AFTER_FILE, RunSets, get_json, load_sets, put_json
from validation.evaluate import targets_not_taken
from validation.sets import build_agreement_set, build_regression_set, ledger_requests, ledger_targets

log = logging.getLogger(__name__)


#: facts named in the build_sets audit event when some are held back (the count is always complete)
HELD_LISTED = 50
#: rejected runs (newest first, on any head) whose not-taken facts count as having failed before
RETRY_MEMORY = 20
#: share of a run's cap (KUS_MAX_TARGETS) open to facts that an earlier head's rejected run did not take
RETRY_SHARE = 0.25


def not_taken_in(ctx: ServiceContext, run_ids: list[int]) -> dict[tuple[str, str, str], str]:
    """(subject, relation, new value) -> why, for every target that the rejected runs `run_ids` did
    not take (see :func:`validation.evaluate.targets_not_taken`); runs whose files are missing are skipped."""
    held: dict[tuple[str, str, str], str] = {}
    for run_id in run_ids:
        try:
            targets = load_sets(ctx, run_id).targets
            rows = get_json(ctx, run_id, EVALUATION_ROWS_AFTER_FILE)
        except ServiceError as exc:
            log.warning("run %s: its evaluation cannot be read (%s); nothing held back from it", run_id, exc)
            continue
        for target, why in targets_not_taken(targets, rows, ctx.settings.thresholds["paraphrase_min"]):
            held[(target.subject, target.relation, target.target_new)] = f"run {run_id}: {why}"
    return held


def hold_back(targets: list[EditRequest], not_taken: dict[tuple[str, str, str], str]
              ) -> tuple[list[EditRequest], list[EditRequest]]:
    """(targets to edit now, targets held back): a retry on the same head leaves out the facts the
    rejected attempts did not take (with the same new value), so the rest can pass the gate instead of
    failing with them again and again. Held facts stay outstanding and come back once the head moves;
    when every outstanding fact is held, they are all edited (there is nothing else to try)."""
    held = [t for t in targets if (t.subject, t.relation, t.target_new) in not_taken]
    kept = [t for t in targets if (t.subject, t.relation, t.target_new) not in not_taken]
    return (kept, held) if kept else (targets, [])


def schedule(targets: list[EditRequest], failed_before: dict[tuple[str, str, str], str], cap: int,
             retry_share: float = RETRY_SHARE) -> tuple[list[EditRequest], list[EditRequest], int]:
    """(targets of this run, targets left to later runs, how many of this run's are retries).

    Facts that a rejected run on an earlier head did not take (`failed_before`, with the same new
    value) are retries: they get at most `retry_share` of the `cap` (at least one place; more when
    there are too few fresh changes to fill the run), and fresh changes the rest, each in feed order.
    Without this, facts an editor finds hard come back together whenever the head moves, fill the
    run and fail it again, and everything behind them waits (the 50-refresh demo series from refresh
    33 on: bench/results/refresh_sequence_notes.md).
    """
    def failed(t: EditRequest) -> bool:
        return (t.subject, t.relation, t.target_new) in failed_before

    retries = [t for t in targets if failed(t)]
    fresh = [t for t in targets if not failed(t)]
    slots = min(len(retries), max(1, int(cap * retry_share)))
    taken_fresh = fresh[: cap - slots]
    slots = min(len(retries), cap - len(taken_fresh))  # room fresh changes leave goes to retries
    return taken_fresh + retries[:slots], fresh[len(taken_fresh):] + retries[slots:], slots


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
        rejected = repo.rejected_runs(session, run.model_name, head)
        earlier = [r for r in repo.recent_rejected_runs(session, run.model_name, RETRY_MEMORY) if r not in rejected]
    plan = parse_plan(run.editor)
    mode = resolve_mode(plan, ctx.settings.edit_mode)
    targets = ledger_targets(ledger, live, base, templates)
    if not targets:
        raise InvalidState(f"run {run_id} has nothing to change: the live model says what the database says")
    not_taken = not_taken_in(ctx, rejected) if rejected else {}
    targets, held = hold_back(targets, not_taken)
    if held:
        log.warning("run %s: %d facts held back: the %d rejected attempt(s) on this head did not take them "
                    "(they stay outstanding and come back once the head moves)", run_id, len(held), len(rejected))
    # bounded work: `max_targets` in feed order, retries of facts failed before in a share of them;
    # the rest stay outstanding for the next refreshes
    cap = ctx.settings.max_targets
    failed_before = not_taken_in(ctx, earlier) if earlier else {}
    targets, deferred, retries = schedule(targets, failed_before, cap)
    deferred += held
    deferred_keys = {(t.subject, t.relation) for t in deferred}
    if len(deferred) > len(held):
        log.warning("run %s: %d facts to change, %d in this run (KUS_MAX_TARGETS %d); %d left to the next refreshes",
                    run_id, len(targets) + len(deferred), len(targets), cap, len(deferred) - len(held))
    if retries:
        log.info("run %s: %d of its targets are retries of facts a rejected run on an earlier head did not take "
                 "(at most %d%% of a run)", run_id, retries, round(100 * RETRY_SHARE))
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
                      "deferred": len(deferred), "cap": cap, "rejected_attempts": len(rejected),
                      "retries": retries, "failed_before": len(failed_before),
                      "held": len(held), "held_facts": [
                          {"subject": t.subject, "relation": t.relation, "value": t.target_new,
                           "why": not_taken[(t.subject, t.relation, t.target_new)]} for t in held[:HELD_LISTED]],
                      "ledger": len(ledger), "neighbourhood": len(regression.neighbourhood),
                      "unrelated": len(regression.unrelated), "heldout_texts": len(regression.heldout_text),
                      "agreement_changed": len(agreement.changed), "agreement_unchanged": len(agreement.unchanged),
                      "agreement_changed_left_out": agreement.changed_left_out})
    log.info("run %s (%s, %s): %d targets, %d editor requests (ledger %d), %d neighbourhood, %d unrelated",
             run_id, ",".join(plan), mode, len(targets), len(requests), len(ledger),
             len(regression.neighbourhood), len(regression.unrelated))
    return key


@task(name="build-evaluation-sets", cache_policy=NO_CACHE)
def build_sets_task(run_id: int) -> str:
    with service_context() as ctx:
        return build_sets(ctx, run_id)
