"""The fact ledger: what the live model must say beyond the base, on real SQLite and PostgreSQL.

A refresh edits toward the ledger, not toward the feed rows since the last run, so a change that a
rejected, failed or rolled-back run did not deliver stays outstanding, a fact changed twice is
edited to its latest value, and a fact changed back to its base value leaves the ledger (and is
edited back where the live model had learnt the interim value).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from infra import repository as repo
from infra.context import service_context
from infra.db import Database
from infra.demo.catalogue import demo_templates_path, generate_catalogue
from infra.domain import Fact, LedgerEntry
from infra.fact_import import load_templates
from infra.settings import Settings
from tasks.ingest import ingest_changes, outstanding_targets
from validation.sets import build_agreement_set, ledger_requests, ledger_targets

TEMPLATES = load_templates(demo_templates_path())


def _price(facts: list[Fact], i: int) -> Fact:
    return [f for f in facts if f.relation == "price"][i]


def test_ledger_is_the_latest_accepted_value_against_the_base(db: Database) -> None:
    facts = generate_catalogue(n_products=5)
    a, b, c = _price(facts, 0), _price(facts, 1), _price(facts, 2)
    with db.session() as session:
        repo.seed_facts(session, facts)
        repo.upsert_facts(session, [Fact(a.subject, "price", "$1"), Fact(b.subject, "price", "$2"),
                                    Fact(c.subject, "price", "$3")], changed_by="erp")
        repo.upsert_facts(session, [Fact(a.subject, "price", "$11"),      # changed twice: latest wins
                                    Fact(b.subject, "price", b.object)],  # changed back to its base value
                          changed_by="erp")
        bad = repo.upsert_facts(session, [Fact(c.subject, "price", "")], changed_by="erp")
        run = repo.create_run(session, "demo", "saul", "bot", 0, repo.latest_change_id(session))
        repo.record_rejections(session, run.id, [repo.Rejection(bad[0].change_id, "empty")])
        ledger = repo.ledger(session)
        base = repo.base_values(session)
        paged = list(repo.iter_ledger(session, page_rows=1))  # streamed a page at a time: the same ledger
        some = repo.base_values(session, {(b.subject, "price"), (a.subject, "price"), ("nobody", "price")})
    assert [(e.subject, e.value, e.base) for e in ledger] == [(c.subject, "$3", c.object), (a.subject, "$11", a.object)]
    assert paged == ledger
    assert base[(b.subject, "price")] == b.object  # the value the base model was built on
    assert some == {(b.subject, "price"): b.object, (a.subject, "price"): a.object}


def test_targets_diff_the_ledger_against_what_the_live_model_was_taught() -> None:
    ledger = [LedgerEntry("Axta Kettle K1", "price", "$11", "$9", 5)]
    live = {("Axta Kettle K1", "price"): "$10", ("Brio Toaster T2", "price"): "$20"}
    base = {("Axta Kettle K1", "price"): "$9", ("Brio Toaster T2", "price"): "$15"}
    targets = ledger_targets(ledger, live, base, TEMPLATES)
    # the newer value of an edited fact, and the base value of a fact changed back after its edit
    assert [(t.subject, t.target_new, t.target_true) for t in targets] == [
        ("Axta Kettle K1", "$11", "$10"), ("Brio Toaster T2", "$15", "$20")]
    assert ledger_targets(ledger, {("Axta Kettle K1", "price"): "$11"}, base, TEMPLATES) == []
    # cumulative mode asks the editor for every ledger fact, from the base
    assert [(r.target_new, r.target_true) for r in ledger_requests(ledger, TEMPLATES)] == [("$11", "$9")]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_changes_of_a_failed_or_rejected_run_stay_outstanding(db_url: str, tmp_path: Path) -> None:
    """No new feed rows, but the live model still disagrees with the database: a new run opens."""
    settings = Settings.load(home=tmp_path, database_url=db_url)
    facts = generate_catalogue(n_products=5)
    with service_context(settings) as ctx:
        with ctx.db.session() as session:
            repo.seed_facts(session, facts)
            repo.upsert_facts(session, [Fact(_price(facts, 0).subject, "price", "$1")], changed_by="erp")
        first = ingest_changes(ctx, "demo", "saul", "bot")
        assert first.run_id is not None and first.outstanding == 1
        with ctx.db.session() as session:
            repo.update_run(session, first.run_id, status="failed", error="reviewer said no")
        again = ingest_changes(ctx, "demo", "saul", "bot")
        assert again.run_id is not None and again.run_id != first.run_id and again.outstanding == 1
        with ctx.db.session() as session:
            targets = outstanding_targets(session, "demo", TEMPLATES, repo.latest_change_id(session))
        assert [(t.subject, t.target_new) for t in targets] == [(_price(facts, 0).subject, "$1")]


def test_agreement_sample_is_fixed_stratified_and_excludes_changed_facts() -> None:
    facts = generate_catalogue(n_products=40)
    ledger = [LedgerEntry(_price(facts, 0).subject, "price", "$1", _price(facts, 0).object, 1)]
    one = build_agreement_set(facts, ledger, TEMPLATES, sample_size=60, seed=3)
    shuffled = build_agreement_set(list(reversed(facts)), ledger, TEMPLATES, sample_size=60, seed=3)
    assert one == shuffled  # independent of the catalogue's order
    assert one.changed == ((TEMPLATES["price"].render(_price(facts, 0).subject), "$1", "price"),)
    assert (TEMPLATES["price"].render(_price(facts, 0).subject), _price(facts, 0).object, "price") not in one.unchanged
    by_relation: dict[str, int] = {}
    for _, _, relation in one.unchanged:
        by_relation[relation] = by_relation.get(relation, 0) + 1
    assert set(by_relation) == {f.relation for f in facts}  # every relation has its share
    assert max(by_relation.values()) - min(by_relation.values()) <= 1
    assert build_agreement_set(facts, ledger, TEMPLATES, sample_size=60, seed=4) != one


def test_changed_facts_scored_are_bounded_however_long_the_ledger_grows() -> None:
    """Every fact the run changes is scored; the rest of the ledger up to the sample size, a fixed sample."""
    from infra.domain import EditRequest

    facts = generate_catalogue(n_products=60)
    prices = [f for f in facts if f.relation == "price"]
    ledger = [LedgerEntry(f.subject, "price", f"${i + 1}", f.object, i + 1) for i, f in enumerate(prices)]
    run = [EditRequest(subject=e.subject, relation="price", prompt=TEMPLATES["price"].render(e.subject),
                       target_new=e.value, target_true=e.base or "") for e in ledger[-3:]]
    small = build_agreement_set(facts, ledger, TEMPLATES, sample_size=100, also_changed=run)
    assert len(small.changed) == len(ledger) and small.changed_left_out == 0  # a small ledger: all of it
    bounded = build_agreement_set(facts, ledger, TEMPLATES, sample_size=10, also_changed=run)
    assert len(bounded.changed) == 3 + 10 and bounded.changed_left_out == len(ledger) - 3 - 10
    prompts = {p for p, _, _ in bounded.changed}
    assert {r.prompt for r in run} <= prompts  # the run's own changes are always scored
    assert set(bounded.changed) <= set(small.changed)  # with their ledger values, in ledger order
    assert [c for c in small.changed if c in set(bounded.changed)] == list(bounded.changed)
    longer = ledger + [LedgerEntry(f.subject, "colour", "teal", f.object, 999 + i)
                       for i, f in enumerate(x for x in facts if x.relation == "colour")]
    grown = build_agreement_set(facts, longer, TEMPLATES, sample_size=10, also_changed=run)
    assert len(grown.changed) == 13  # the work stays bounded as the ledger grows
    again = build_agreement_set(list(reversed(facts)), ledger, TEMPLATES, sample_size=10, also_changed=run)
    assert again == bounded  # a fixed sample


def test_rejected_values_never_reach_evaluation_sets_or_the_regulariser(db: Database) -> None:
    facts = generate_catalogue(n_products=5)
    subject = _price(facts, 0).subject
    with db.session() as session:
        repo.seed_facts(session, facts)
        bad = repo.upsert_facts(session, [Fact(subject, "price", ""), Fact(subject + " Mini", "price", "$1\x1b[0m")],
                                changed_by="erp")
        run = repo.create_run(session, "demo", "saul", "bot", 0, repo.latest_change_id(session))
        repo.record_rejections(session, run.id, [repo.Rejection(c.change_id, "bad") for c in bad])
        current = {(f.subject, f.relation): f.object for f in repo.load_facts(session)}
        accepted = {(f.subject, f.relation): f.object for f in repo.accepted_facts(session)}
    assert current[(subject, "price")] == "" and (subject + " Mini", "price") in current  # on the record
    assert (subject, "price") not in accepted and (subject + " Mini", "price") not in accepted
    assert len(accepted) == len(current) - 2


def test_a_nul_character_is_refused_the_same_way_on_both_databases(db: Database) -> None:
    from infra.errors import InvalidInput

    with db.session() as session:
        with pytest.raises(InvalidInput, match="NUL"):
            repo.upsert_facts(session, [Fact("Axta Kettle K1", "price", "$4\x009")], changed_by="erp")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_many_rejected_rows_make_a_bounded_audit_event(db_url: str, tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from infra.audit import list_events
    from tasks.ingest import LISTED_REJECTIONS

    settings = Settings.load(home=tmp_path, database_url=db_url)
    facts = generate_catalogue(n_products=5)
    with service_context(settings) as ctx:
        with ctx.db.session() as session:
            repo.seed_facts(session, facts)
            repo.upsert_facts(session, [Fact(f"Gadget {i}", "energy_label", "A") for i in range(120)], changed_by="erp")
            repo.upsert_facts(session, [Fact(_price(facts, 0).subject, "price", "$1")], changed_by="erp")
        outcome = ingest_changes(ctx, "demo", "saul", "bot")
        with ctx.db.session() as session:
            event = [e for e in list_events(session) if e.action == "ingest"][-1]
            assert len(repo.rejections_for(session, outcome.run_id)) == 120  # every one on the record
    assert outcome.rejected == 120
    assert len(event.payload["rejections"]) == LISTED_REJECTIONS
    assert event.payload["rejections_not_listed"] == 120 - LISTED_REJECTIONS
    assert sum(event.payload["rejections_by_check"].values()) == 120
    assert len(event.payload["rejections_by_check"]) < 5  # counted by check, not by row value
    # the full list is a run file, verified against the sha256 on the run row and in the audit event
    import gzip
    import hashlib
    import json

    from infra.errors import IntegrityMismatch
    from tasks.ingest import REJECTIONS_FILE
    from tasks.run_artifacts import artifact_key, get_bytes

    with service_context(settings) as ctx:
        blob = get_bytes(ctx, outcome.run_id, REJECTIONS_FILE)
        assert hashlib.sha256(blob).hexdigest() == event.payload["rejections_sha256"]
        rows = [json.loads(line) for line in gzip.decompress(blob).decode().splitlines()]
        assert len(rows) == 120 and all(r["reason"] for r in rows)
        with ctx.db.session() as session:
            assert {r["change_id"] for r in rows} == {r.change_id for r in repo.rejections_for(session, outcome.run_id)}
        ctx.store.put_blob(artifact_key(outcome.run_id, REJECTIONS_FILE), gzip.compress(b"{}\n"))
        with pytest.raises(IntegrityMismatch):
            get_bytes(ctx, outcome.run_id, REJECTIONS_FILE)

    from flows.cli import SHOWN_REJECTIONS, main  # `kus show` lists the first rows and counts the rest

    monkeypatch.setenv("KUS_HOME", str(tmp_path))
    monkeypatch.setenv("KUS_DATABASE_URL", db_url)
    capsys.readouterr()
    assert main(["--quiet", "show", str(outcome.run_id)]) == 0
    out = capsys.readouterr().out
    assert out.count("rejected change") == SHOWN_REJECTIONS + 1 and f"{120 - SHOWN_REJECTIONS} more" in out
    assert main(["--quiet", "show", str(outcome.run_id), "--all"]) == 0
    assert capsys.readouterr().out.count("rejected change") == 120


def test_an_operator_drops_a_change_on_the_record(db: Database) -> None:
    facts = generate_catalogue(n_products=5)
    subject = _price(facts, 0).subject
    with db.session() as session:
        repo.seed_facts(session, facts)
        change = repo.upsert_facts(session, [Fact(subject, "price", "$1")], changed_by="erp")[0]
        assert [e.value for e in repo.ledger(session)] == ["$1"]
        repo.drop_change(session, change.change_id, "alice", "typo in the ERP")
        assert repo.ledger(session) == []  # no refresh edits toward it again
        row = session.execute(sa.text("SELECT run_id, reason FROM change_rejections")).one()
    assert row.run_id is None and "dropped by alice: typo in the ERP" in row.reason


def test_the_feed_is_checked_page_by_page_with_the_same_verdicts(db: Database) -> None:
    """Paged ingest (two rows a page) rejects exactly what one page does, a conflict split over two
    pages included, and records every rejection."""
    from tasks.ingest import check_feed_in_pages

    templates = load_templates(demo_templates_path())
    facts = generate_catalogue(n_products=5)
    a, b, c = (_price(facts, i).subject for i in range(3))
    with db.session() as session:
        repo.seed_facts(session, facts)
        repo.upsert_facts(session, [Fact(a, "price", "$11"), Fact(b, "price", "$12"), Fact("Gadget", "energy_label", "A"),
                                    Fact(a, "price", "$13"), Fact(c, "price", "$14x" * 30)], changed_by="erp")
        latest = repo.latest_change_id(session)
        since = latest - 5
        verdicts = {}
        for page_rows in (2, 1000):
            run = repo.create_run(session, "demo", "saul", "bot", since, latest)
            checked = check_feed_in_pages(session, run.id, since, latest, templates, page_rows=page_rows)
            rejected = {r.change_id: r.reason for r in repo.rejections_for(session, run.id)}
            verdicts[page_rows] = (checked.changes, checked.accepted, checked.rejected.count, rejected)
    assert verdicts[2] == verdicts[1000]
    changes, accepted, rejected_count, rejected = verdicts[2]
    assert (changes, accepted, rejected_count) == (5, 1, 4)
    ids = sorted(rejected)
    assert "conflicting rows are all rejected" in rejected[ids[0]] and "conflicting rows are all rejected" in rejected[ids[2]]
    assert "not a known relation" in rejected[ids[1]] and "characters" in rejected[ids[3]]
