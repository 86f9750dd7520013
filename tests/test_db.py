"""The database layer and repository on real SQLite and real PostgreSQL (`db_url`)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from infra import repository as repo
from infra.db import Database
from infra.db.models import Base
from infra.domain import Fact
from infra.errors import InvalidInput, InvalidState, NotFound, PermissionDenied

T0 = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)


def _delta(sha: str, parent: str | None = None, model: str = "demo") -> repo.DeltaRecord:
    return repo.DeltaRecord(
        sha256=sha * 64 if len(sha) == 1 else sha,
        parent_sha=(parent * 64 if parent and len(parent) == 1 else parent),
        model_name=model,
        editor="ft",
        uri=f"file:///deltas/{sha}",
        size_bytes=123,
        manifest={"editor": "ft", "facts": 2},
        created_at=T0,
    )


def _run_to(session, status: str, model: str = "demo", wm: tuple[int, int] = (0, 0)) -> repo.RunRecord:
    run = repo.create_run(session, model, "ft", "alice", *wm)
    path = {
        "ingested": [],
        "edited": ["edited"],
        "validated": ["edited", "validated"],
        "awaiting_approval": ["edited", "validated", "awaiting_approval"],
        "promoted": ["edited", "validated", "awaiting_approval", "promoted"],
        "rejected": ["edited", "validated", "awaiting_approval", "rejected"],
        "rolled_back": ["edited", "validated", "awaiting_approval", "promoted", "rolled_back"],
        "failed": ["failed"],
    }[status]
    for step in path:
        run = repo.update_run(session, run.id, step)
    return run


def test_upgrade_is_idempotent_and_matches_the_models(db_url: str) -> None:
    database = Database(db_url)
    try:
        assert database.current_revision() is None
        database.upgrade()
        database.upgrade()  # every start runs it again
        assert database.current_revision() == "0006"
        with database.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
        assert {
            "facts",
            "fact_changes",
            "change_rejections",
            "refresh_runs",
            "deltas",
            "model_heads",
            "approvals",
            "audit_events",
        } <= tables
        assert diff == []
    finally:
        database.dispose()


def test_sqlite_connection_settings(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    try:
        with database.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        database.dispose()


def test_session_commits_on_success_and_rolls_back_on_error(db: Database) -> None:
    with db.session() as s:
        repo.upsert_facts(s, [Fact("X1", "price", "$1")], changed_by="erp")
    with pytest.raises(RuntimeError):
        with db.session() as s:
            repo.upsert_facts(s, [Fact("X2", "price", "$2")], changed_by="erp")
            raise RuntimeError("boom")
    with db.session() as s:
        assert [f.subject for f in repo.load_facts(s)] == ["X1"]
        assert repo.latest_change_id(s) == 1


def test_upsert_appends_changes_only_for_real_changes(db: Database) -> None:
    with db.session() as s:
        assert repo.latest_change_id(s) == 0
        first = repo.upsert_facts(
            s, [Fact("X1", "price", "$1", source="erp"), Fact("X1", "colour", "red")], changed_by="erp", at=T0
        )
        assert [(c.subject, c.relation, c.old_object, c.new_object) for c in first] == [
            ("X1", "price", None, "$1"),
            ("X1", "colour", None, "red"),
        ]
        assert first[0].changed_at == T0 and first[0].changed_by == "erp"
    with db.session() as s:
        again = repo.upsert_facts(
            s,
            [Fact("X1", "price", "$1"), Fact("X1", "colour", "blue"), Fact("X2", "price", "$9")],
            changed_by="bob",
        )
        assert [(c.subject, c.relation, c.old_object, c.new_object) for c in again] == [
            ("X1", "colour", "red", "blue"),
            ("X2", "price", None, "$9"),
        ]
        assert [c.change_id for c in again] == [3, 4]
    with db.session() as s:
        assert repo.latest_change_id(s) == 4
        assert repo.get_fact(s, "X1", "colour") == Fact("X1", "colour", "blue", source="unknown")
        assert repo.get_fact(s, "X1", "weight") is None
        assert len(repo.load_facts(s)) == 3
        assert [c.change_id for c in repo.changes_since(s, 1)] == [2, 3, 4]
        assert [c.change_id for c in repo.changes_since(s, 1, up_to=3)] == [2, 3]
        assert repo.changes_since(s, 4) == []
        assert repo.changes_since(s, 0, up_to=1)[0].changed_at == T0  # microseconds, UTC, both backends


def test_timestamps_come_back_identical_and_utc(db: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = T0.astimezone(plus_two)
    with db.session() as s:
        repo.upsert_facts(s, [Fact("X1", "launch", "2026", valid_from=local)], changed_by="erp", at=local)
    with db.session() as s:
        fact = repo.get_fact(s, "X1", "launch")
        change = repo.changes_since(s, 0)[0]
    assert fact is not None and fact.valid_from == T0 and fact.valid_from.tzinfo == timezone.utc
    assert change.changed_at.isoformat() == T0.isoformat()


def test_watermark_advances_only_with_promoted_or_rejected_runs(db: Database) -> None:
    with db.session() as s:
        assert repo.watermark(s, "demo") == 0
        failed = _run_to(s, "failed", wm=(0, 5))
        assert repo.watermark(s, "demo") == 0  # a failed run leaves its changes pending
        _run_to(s, "awaiting_approval", wm=(0, 7))
        assert repo.watermark(s, "demo") == 0  # an open run too
        _run_to(s, "promoted", wm=(0, 3))
        assert repo.watermark(s, "demo") == 3
        _run_to(s, "rejected", wm=(3, 6))
        assert repo.watermark(s, "demo") == 6
        _run_to(s, "promoted", model="other", wm=(0, 9))
        assert repo.watermark(s, "demo") == 6
        assert repo.get_run(s, failed.id).status == "failed"


ILLEGAL = [
    ("ingested", "validated"),
    ("ingested", "promoted"),
    ("edited", "awaiting_approval"),
    ("validated", "promoted"),
    ("awaiting_approval", "rolled_back"),
    ("promoted", "failed"),
    ("promoted", "rejected"),
    ("rejected", "promoted"),
    ("failed", "edited"),
    ("rolled_back", "promoted"),
]


def test_illegal_run_transitions_raise_invalid_state(db: Database) -> None:
    with db.session() as s:
        for start, target in ILLEGAL:
            run = _run_to(s, start)
            with pytest.raises(InvalidState, match=f"cannot move from {start} to {target}"):
                repo.update_run(s, run.id, target)
            assert repo.get_run(s, run.id).status == start


def test_update_run_fields_and_lookups(db: Database) -> None:
    with db.session() as s:
        run = repo.create_run(s, "demo", "rome", "alice", 2, 9, flow_run_id="f-1")
        assert run.status == "ingested" and (run.watermark_from, run.watermark_to) == (2, 9)
        repo.add_delta(s, _delta("a"))
        updated = repo.update_run(
            s, run.id, "edited", delta_sha="a" * 64, metrics={"efficacy": 0.97, "n": 3}, error=None
        )
        assert updated.delta_sha == "a" * 64 and updated.updated_at >= run.updated_at
        with pytest.raises(InvalidInput, match="cannot update run field"):
            repo.update_run(s, run.id, model_name="x")
        with pytest.raises(InvalidInput, match="unknown run status"):
            repo.update_run(s, run.id, "done")
        with pytest.raises(NotFound, match="delta"):
            repo.update_run(s, run.id, delta_sha="f" * 64)
        with pytest.raises(NotFound):
            repo.get_run(s, 999)
        with pytest.raises(InvalidInput):
            repo.create_run(s, "demo", "ft", "alice", 5, 4)
        other = _run_to(s, "promoted")
    with db.session() as s:
        fresh = repo.get_run(s, run.id)
        assert fresh.metrics == {"efficacy": 0.97, "n": 3} and fresh.flow_run_id == "f-1"
        assert fresh.status == "edited" and fresh.started_at == run.started_at
        assert [r.id for r in repo.list_runs(s)] == [other.id, run.id]
        assert [r.id for r in repo.list_runs(s, "demo", limit=1)] == [other.id]
        assert [r.id for r in repo.open_runs(s, "demo")] == [run.id]


def test_rejections_are_kept_with_reasons(db: Database) -> None:
    with db.session() as s:
        facts = [Fact("X1", "price", "?"), Fact("X2", "price", "$2")]
        changes = repo.upsert_facts(s, facts, changed_by="erp")
        run = repo.create_run(s, "demo", "ft", "alice", 0, 2)
        repo.record_rejections(s, run.id, [repo.Rejection(changes[0].change_id, "object is not a price")])
    with db.session() as s:
        assert repo.rejections_for(s, run.id) == [repo.Rejection(1, "object is not a price")]
        with pytest.raises(NotFound):
            repo.record_rejections(s, run.id, [repo.Rejection(99, "no such change")])
        assert repo.rejections_for(s, run.id) == [repo.Rejection(1, "object is not a price")]


def test_deltas_are_idempotent_and_chain_root_first(db: Database) -> None:
    with db.session() as s:
        root = repo.add_delta(s, _delta("a"))
        assert repo.add_delta(s, _delta("a")) == root
        repo.add_delta(s, _delta("b", parent="a"))
        repo.add_delta(s, _delta("c", parent="b"))
        with pytest.raises(InvalidState):
            repo.add_delta(s, _delta("c", parent="a"))
        with pytest.raises(NotFound):
            repo.add_delta(s, _delta("e", parent="d"))
    with db.session() as s:
        assert [d.sha256[0] for d in repo.delta_chain(s, "c" * 64)] == ["a", "b", "c"]
        assert repo.delta_chain(s, None) == []
        got = repo.get_delta(s, "b" * 64)
        assert got.manifest == {"editor": "ft", "facts": 2} and got.created_at == T0
        with pytest.raises(NotFound):
            repo.get_delta(s, "z" * 64)


def test_move_head_is_compare_and_set(db: Database) -> None:
    with db.session() as s:
        for sha, parent in (("a", None), ("b", "a"), ("c", "a")):
            repo.add_delta(s, _delta(sha, parent))
        assert repo.get_head(s, "demo") is None
        repo.move_head(s, "demo", "a" * 64, expected_current=None)
    with db.session() as s:
        repo.move_head(s, "demo", "b" * 64, expected_current="a" * 64)
    with db.session() as s:
        with pytest.raises(InvalidState, match="moved meanwhile"):
            repo.move_head(s, "demo", "c" * 64, expected_current="a" * 64)  # stale
        with pytest.raises(NotFound):
            repo.move_head(s, "demo", "f" * 64, expected_current="b" * 64)
        assert repo.get_head(s, "demo") == "b" * 64
        repo.move_head(s, "demo", None, expected_current="b" * 64)  # back to the base model
        assert repo.get_head(s, "demo") is None


def test_move_head_concurrent_writers_cannot_both_win(db: Database) -> None:
    with db.session() as s:
        for sha, parent in (("a", None), ("b", "a"), ("c", "a")):
            repo.add_delta(s, _delta(sha, parent))
        repo.move_head(s, "demo", "a" * 64, expected_current=None)
    moved, errors = threading.Event(), []

    def first() -> None:
        try:
            with db.session() as s:
                repo.move_head(s, "demo", "b" * 64, expected_current="a" * 64)
                moved.set()
                threading.Event().wait(0.3)  # hold the transaction open
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
            moved.set()

    thread = threading.Thread(target=first)
    thread.start()
    assert moved.wait(10)
    with pytest.raises(InvalidState):
        with db.session() as s:
            repo.move_head(s, "demo", "c" * 64, expected_current="a" * 64)
    thread.join()
    assert errors == []
    with db.session() as s:
        assert repo.get_head(s, "demo") == "b" * 64


def test_decisions(db: Database) -> None:
    with db.session() as s:
        run = _run_to(s, "awaiting_approval")
        with pytest.raises(InvalidInput, match="unknown decision"):
            repo.record_decision(s, run.id, "rita", "maybe", "")
        with pytest.raises(PermissionDenied):
            repo.record_decision(s, run.id, "alice", "approved", "my own run")
        approval = repo.record_decision(s, run.id, "rita", "approved", "looks good")
        assert (approval.run_id, approval.reviewer, approval.decision) == (run.id, "rita", "approved")
        ingested = repo.create_run(s, "demo", "ft", "alice", 0, 0)
        with pytest.raises(InvalidState, match="not awaiting_approval"):
            repo.record_decision(s, ingested.id, "rita", "rejected", "too early")
        with pytest.raises(NotFound):
            repo.record_decision(s, 999, "rita", "approved", "")
    with db.session() as s:
        assert repo.approvals_for(s, run.id) == [approval]
