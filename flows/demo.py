"""The demo job: the whole business process on embedded defaults, as a catalogue team would live it.

1. create the database and load the demo catalogue (first run only);
2. build the demo model offline if it is not cached;
3. apply a batch of catalogue changes to the facts table, as the ERP would (plus two bad rows);
4. run the `catalogue-refresh` flow (ingest, GX input checks, sets, edit, evaluate, GX retention);
5. approve as the demo reviewer through the CLI, which runs the promotion flow;
6. print before/after answers of the live model, the validation table and the verified audit trail.

A second run reuses the model and applies a fresh batch on top of the promoted head.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from infra import repository as repo
from infra.audit import append_event, list_events, verify_chain
from infra.context import service_context
from infra.domain import Fact
from infra.settings import Settings
from tasks.catalogue_inputs import templates_for

CATALOGUE_TEAM = "catalogue-team"
DEMO_REVIEWER = "demo-reviewer"


@dataclass(frozen=True)
class DemoSize:
    n_products: int
    tiny: bool


SIZES = {"demo": DemoSize(n_products=200, tiny=False), "tiny": DemoSize(n_products=30, tiny=True)}


def seed_catalogue(size: DemoSize) -> list[Fact]:
    from infra.demo.catalogue import generate_catalogue

    return generate_catalogue(n_products=size.n_products)


def ensure_model(settings: Settings, size: DemoSize = SIZES["demo"]):  # noqa: ANN201 - DemoModelReport
    """Build the demo model from the seed catalogue (the facts it must know) unless it is cached."""
    from infra.demo.model_builder import DemoModelConfig, ensure_demo_model

    config = DemoModelConfig.tiny() if size.tiny else DemoModelConfig.demo()
    with service_context(settings) as ctx, ctx.db.session() as session:
        has_deltas = repo.count_deltas(session, settings.model_name) > 0
    return ensure_demo_model(settings.model_path, seed_catalogue(size), templates_for(settings), config,
                             progress=True, keep_existing=has_deltas)


def demo_reviewer_key(settings: Settings) -> Path:
    """The demo reviewer's own signing key (made once under the home) and its registered public key.

    In a real deployment each reviewer generates their key (`kus keys generate`) and an
    administrator registers the public half; the demo plays both parts.
    """
    from infra.signing import generate_key, read_reviewer_keys, register_reviewer_key, write_private_key

    path = settings.home / "keys" / f"{DEMO_REVIEWER}.pem"
    if not path.is_file():
        pem, public = generate_key()
        write_private_key(path, pem)
        register_reviewer_key(settings.reviewer_keys_file, DEMO_REVIEWER, public)
    elif DEMO_REVIEWER not in read_reviewer_keys(settings.reviewer_keys_file):
        from infra.signing import load_private_key, public_key_of

        register_reviewer_key(settings.reviewer_keys_file, DEMO_REVIEWER, public_key_of(load_private_key(path)))
    return path


@contextmanager
def acting_as(user: str, signing_key: Path) -> Iterator[None]:
    """Run CLI commands as `user` holding `signing_key` (as the reviewer's own shell would), then restore."""
    saved = {k: os.environ.get(k) for k in ("KUS_USER", "KUS_SIGNING_KEY")}
    os.environ["KUS_USER"], os.environ["KUS_SIGNING_KEY"] = user, str(signing_key)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_demo(settings: Settings, console: Console, size_name: str = "demo") -> int:
    size = SIZES[size_name]
    started = time.perf_counter()

    if settings.audit_key() is None:  # first run: key the audit trail before its first event
        from flows.cli import main as cli_main

        cli_main(["--quiet", "audit", "keygen"])
    console.rule("[bold]1. database and demo catalogue")
    with service_context(settings) as ctx, ctx.db.session() as session:
        if not repo.load_facts(session):
            seed = seed_catalogue(size)
            repo.seed_facts(session, seed)
            append_event(session, CATALOGUE_TEAM, "seed_catalogue", "facts", {"facts": len(seed)})
            console.print(f"loaded {len(seed)} facts ({size.n_products} products) into {ctx.db.safe_url}")
        else:
            console.print("catalogue already loaded; reusing it")

    console.rule("[bold]2. demo model")
    report = ensure_model(settings, size)
    console.print(f"{'cached' if report.reused else 'built'} model at {report.path}: "
                  f"{report.accuracy:.1%} of catalogue facts answered correctly, {report.n_params:,} parameters")

    code = 0
    for refresh in (1, 2):
        code = max(code, demo_refresh(settings, console, refresh))
    console.print(f"[bold green]demo finished in {time.perf_counter() - started:.0f} s[/]")
    return code


def demo_refresh(settings: Settings, console: Console, refresh: int) -> int:
    """One refresh as the catalogue team and the reviewer live it: changes, flow, decision, outcome.

    The reviewer approves only what passed the retention suite (no override); a run that failed it
    is rejected on the record, its changes stay outstanding for the next refresh.
    """
    from flows.cli import main as cli_main
    from flows.refresh import catalogue_refresh
    from infra.demo.changes import next_change_batch

    console.rule(f"[bold]3.{refresh} catalogue changes from the ERP")
    with service_context(settings) as ctx, ctx.db.session() as session:
        batch_no = len(repo.list_runs(session, settings.model_name, limit=10_000)) + 1
        batch = next_change_batch(repo.load_facts(session), batch_no)
        changes = repo.upsert_facts(session, batch, changed_by="demo-erp")
        some_subject = batch[0].subject
        bad = repo.upsert_facts(session, [Fact(some_subject, "energy_label", "A++", source="demo-erp"),
                                          Fact(batch[-1].subject + " Mini", "price", "", source="demo-erp")],
                                changed_by="demo-erp")
    console.print(f"batch {batch_no}: {len(changes)} facts changed, plus {len(bad)} malformed rows the refresh must reject")

    console.rule(f"[bold]4.{refresh} catalogue-refresh flow")
    result = catalogue_refresh(model_name=settings.model_name, editor=settings.default_editor, started_by=CATALOGUE_TEAM)
    run_id = result["run_id"]
    if run_id is None:
        console.print(f"[red]nothing to refresh:[/] {result['message']}")
        return 1
    console.print(f"run {run_id}: {result['accepted']} changes accepted, {result['rejected']} rejected; awaiting approval")

    console.rule(f"[bold]5.{refresh} the reviewer's decision (kus approve / kus reject)")
    with service_context(settings) as ctx, ctx.db.session() as session:
        run = repo.get_run(session, run_id)
    key = demo_reviewer_key(settings)
    if run.validation and run.validation.get("success"):
        with acting_as(DEMO_REVIEWER, key):
            code = cli_main(["--quiet", "approve", str(run_id), "--reason", "demo: retention suite passed, agreement reviewed"])
    else:
        failed = [c["metric"] for c in (run.validation or {}).get("checks", []) if not c["success"]]
        console.print(f"[red]the retention suite failed ({', '.join(failed)}): the reviewer rejects the run[/]")
        with acting_as(DEMO_REVIEWER, key):
            cli_main(["--quiet", "reject", str(run_id), "--reason", f"demo: retention suite failed on {', '.join(failed)}"])
        code = 3
    show_outcome(settings, console, run_id)
    return code


def show_outcome(settings: Settings, console: Console, run_id: int) -> None:
    from flows.cli import print_agreement, print_audit, print_validation
    from infra.decoding import greedy_answers
    from tasks.live_model import load_live_model
    from tasks.run_artifacts import load_sets

    with service_context(settings) as ctx:
        with ctx.db.session() as session:
            run = repo.get_run(session, run_id)
            rejections = repo.rejections_for(session, run_id)
            parent = repo.get_delta(session, str(run.delta_sha)).parent_sha
        sets = load_sets(ctx, run_id)
        changed = [(t.prompt, t.target_true or "", t.target_new) for t in sets.targets[:6]]
        unchanged = [(p, a, a) for p, a in sets.regression.unrelated[:4]]
        prompts = [p for p, _, _ in changed + unchanged]
        before_model = load_live_model(ctx, run.model_name, head=parent)
        before = greedy_answers(before_model.model, before_model.tokenizer, prompts)
        live = load_live_model(ctx, run.model_name)
        after = greedy_answers(live.model, live.tokenizer, prompts)
        with ctx.db.session() as session:
            events = list_events(session)
            chain = verify_chain(session)

    for rejection in rejections:
        console.print(f"[yellow]rejected change {rejection.change_id}[/]: {rejection.reason}")
    table = Table("prompt", "database says", "before", "after", "",
                  title=f"the live model after run {run_id} ({run.status})")
    for (prompt, _old, expected), b, a in zip(changed + unchanged, before, after):
        table.add_row(prompt, expected, b, a, "[green]ok[/]" if a == expected else "[red]wrong[/]")
    console.print(table)
    if run.metrics and run.metrics.get("agreement"):
        print_agreement(run.metrics)
    if run.validation:
        print_validation(run.validation, run.metrics)
    print_audit(events[-12:])
    if chain.ok:
        console.print(f"[green]audit chain verified[/]: {chain.events_checked} events, hash chain intact")
    else:
        console.print(f"[red]audit chain broken at seq {chain.first_bad_seq}: {chain.problem}[/]")
