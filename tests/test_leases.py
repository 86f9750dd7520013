"""One refresh per model at a time, on real SQLite and PostgreSQL: a second refresh of the same
model is refused while the first works, a run is declared dead only when its lease expired, and
refreshes of two models run side by side."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from infra import repository as repo
from infra.context import service_context
from infra.demo.catalogue import generate_catalogue
from infra.domain import Fact
from infra.errors import InvalidState
from infra.settings import Settings
from tasks.ingest import ingest_changes
from tasks.run_lease import keep_lease


def _settings(db_url: str, tmp_path: Path, **overrides) -> Settings:
    return Settings.load(home=tmp_path, database_url=db_url, **overrides)


def _change(ctx, facts: list[Fact], i: int, value: str) -> None:
    price = [f for f in facts if f.relation == "price"][i]
    with ctx.db.session() as session:
        repo.upsert_facts(session, [Fact(price.subject, "price", value)], changed_by="erp")


def test_a_second_refresh_of_a_model_waits_for_the_first(db_url: str, tmp_path: Path) -> None:
    facts = generate_catalogue(n_products=5)
    with service_context(_settings(db_url, tmp_path)) as ctx:
        with ctx.db.session() as session:
            repo.seed_facts(session, facts)
        _change(ctx, facts, 0, "$1")
        first = ingest_changes(ctx, "demo", "saul", "worker-1")
        _change(ctx, facts, 1, "$2")
        with pytest.raises(InvalidState, match="already running"):
            ingest_changes(ctx, "demo", "saul", "worker-2")
        keep_lease(ctx, first.run_id)  # the first is untouched and still holds its lease
        with ctx.db.session() as session:
            assert repo.get_run(session, first.run_id).status == "ingested"
        # another model refreshes side by side
        other = ingest_changes(ctx, "other-model", "saul", "worker-3")
        assert other.run_id is not None and other.run_id != first.run_id


def test_a_run_is_declared_dead_only_when_its_lease_expired(db_url: str, tmp_path: Path) -> None:
    facts = generate_catalogue(n_products=5)
    with service_context(_settings(db_url, tmp_path, lease_ttl_seconds=1)) as ctx:
        with ctx.db.session() as session:
            repo.seed_facts(session, facts)
        _change(ctx, facts, 0, "$1")
        crashed = ingest_changes(ctx, "demo", "saul", "worker-1")
        time.sleep(1.2)  # the worker died: nobody renews its lease
        again = ingest_changes(ctx, "demo", "saul", "worker-2")
        with ctx.db.session() as session:
            dead = repo.get_run(session, crashed.run_id)
        assert dead.status == "failed" and "lease expired" in str(dead.error)
        assert again.run_id != crashed.run_id and again.outstanding == 1  # its change is redone
        with pytest.raises(InvalidState, match="no longer holds"):
            keep_lease(ctx, crashed.run_id)  # a late step of the dead run stops at once


def test_a_run_file_changed_in_the_store_is_refused(db_url: str, tmp_path: Path) -> None:
    """Rewriting runs/<id>/sets.json to inject a value the database does not hold stops the edit."""
    import json

    from infra.errors import IntegrityMismatch
    from tasks.edit import compute_delta
    from tasks.evaluation_sets import build_sets
    from tasks.run_artifacts import artifact_key, load_sets

    facts = generate_catalogue(n_products=5)
    with service_context(_settings(db_url, tmp_path)) as ctx:
        with ctx.db.session() as session:
            repo.seed_facts(session, facts)
        _change(ctx, facts, 0, "$1")
        run_id = ingest_changes(ctx, "demo", "saul", "worker-1").run_id
        build_sets(ctx, run_id)
        assert load_sets(ctx, run_id).targets[0].target_new == "$1"
        key = artifact_key(run_id, "sets.json")
        forged = json.loads(ctx.store.get_blob(key))
        forged["targets"][0]["target_new"] = forged["requests"][0]["target_new"] = "$0.01"
        ctx.store.put_blob(key, json.dumps(forged, sort_keys=True).encode())
        with pytest.raises(IntegrityMismatch, match="changed after the run wrote it"):
            compute_delta(ctx, run_id)


def test_a_stuck_run_is_closed_on_the_record_and_its_changes_are_redone(db_url: str, tmp_path: Path) -> None:
    """`kus close`: refused for someone who neither started the run nor reviews, and while the run's
    lease is live unless forced; then the run is failed with the reason, the lease is free at once,
    the closing is audited and the next refresh carries the run's change."""
    from infra.audit import list_events
    from infra.errors import PermissionDenied
    from tasks.run_lease import close_run

    facts = generate_catalogue(n_products=5)
    with service_context(_settings(db_url, tmp_path, reviewers=("rita",))) as ctx:
        with ctx.db.session() as session:
            repo.seed_facts(session, facts)
        _change(ctx, facts, 0, "$1")
        stuck = ingest_changes(ctx, "demo", "saul", "worker-1")  # its process was killed after ingest
        with pytest.raises(PermissionDenied):
            close_run(ctx, stuck.run_id, "mallory", "cleanup")
        with pytest.raises(InvalidState, match="still holds its refresh lease"):
            close_run(ctx, stuck.run_id, "worker-1", "killed by the OOM killer")
        close_run(ctx, stuck.run_id, "rita", "killed by the OOM killer", force=True)
        with pytest.raises(InvalidState, match="only a run still working"):
            close_run(ctx, stuck.run_id, "rita", "again")
        with ctx.db.session() as session:
            closed = repo.get_run(session, stuck.run_id)
            event = [e for e in list_events(session) if e.action == "run_closed"][-1]
        assert closed.status == "failed" and closed.error == "closed by rita: killed by the OOM killer"
        assert event.payload["forced"] is True and event.actor == "rita"
        again = ingest_changes(ctx, "demo", "saul", "worker-2")  # no lease to wait for
        assert again.run_id != stuck.run_id and again.outstanding == 1
