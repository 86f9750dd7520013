"""The hash-chained audit trail on real SQLite and real PostgreSQL (`db_url`)."""

from __future__ import annotations

import csv
import json
import threading
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from infra import repository as repo
from infra.audit import GENESIS_HASH, append_event, event_hash, export_events, list_events, verify_chain
from infra.db import Database
from infra.domain import Fact
from infra.errors import InvalidInput

PAYLOADS = [
    {"run": 1, "model": "demo"},
    {"metrics": {"efficacy": 0.97, "ppl_drift": 0.0123456789}, "facts": ["a", "b"]},
    {"note": "ünïcödé ✓", "nested": {"z": 1, "a": [1.5, None, True]}},
    {"delta": "ab" * 32},
    {},
]


def _fill(db: Database) -> None:
    with db.session() as s:
        for i, payload in enumerate(PAYLOADS, start=1):
            append_event(s, "alice", "run.step", f"run:{i}", payload)


def _drop_trigger(db: Database, kind: str) -> None:
    """What a rogue DBA does before rewriting history."""
    with db.session() as s:
        if db.dialect == "postgresql":
            s.execute(sa.text(f"DROP TRIGGER audit_events_no_{kind} ON audit_events"))
        else:
            s.execute(sa.text(f"DROP TRIGGER audit_events_no_{kind}"))


def test_events_chain_and_verify(db: Database) -> None:
    _fill(db)
    with db.session() as s:
        events = list_events(s)
        report = verify_chain(s)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:]))
    assert [e.payload for e in events] == PAYLOADS  # JSON round trip is stable
    assert all(e.at.tzinfo is not None and e.at.utcoffset().total_seconds() == 0 for e in events)
    first = events[0]
    assert first.hash == event_hash(GENESIS_HASH, 1, first.at, "alice", "run.step", "run:1", PAYLOADS[0])
    assert (report.ok, report.events_checked, report.first_bad_seq, report.problem) == (True, 5, None, None)
    with db.session() as s:
        assert [e.seq for e in list_events(s, after_seq=2, limit=2)] == [3, 4]


def test_payload_is_normalised_or_refused(db: Database) -> None:
    with db.session() as s:
        event = append_event(s, "bob", "x", "y", {"pair": (1, 2)})
        assert event.payload == {"pair": [1, 2]}
        with pytest.raises(InvalidInput):
            append_event(s, "bob", "x", "y", {"bad": float("nan")})
        with pytest.raises(InvalidInput):
            append_event(s, "bob", "x", "y", {"obj": object()})
    with db.session() as s:
        assert verify_chain(s).ok


def test_database_refuses_update_and_delete(db: Database) -> None:
    _fill(db)
    with pytest.raises(DBAPIError, match="append-only"):
        with db.session() as s:
            s.execute(sa.text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
    with pytest.raises(DBAPIError, match="append-only"):
        with db.session() as s:
            s.execute(sa.text("DELETE FROM audit_events WHERE seq = 5"))
    with db.session() as s:
        assert len(list_events(s)) == 5 and verify_chain(s).ok


def test_tampered_payload_is_reported_at_its_seq(db: Database) -> None:
    _fill(db)
    _drop_trigger(db, "update")
    with db.session() as s:
        forged = json.dumps({"delta": "cd" * 32})
        s.execute(sa.text("UPDATE audit_events SET payload = :p WHERE seq = 4"), {"p": forged})
    with db.session() as s:
        report = verify_chain(s)
    assert not report.ok and report.first_bad_seq == 4
    assert "changed" in report.problem


def test_rehashed_row_breaks_the_next_link(db: Database) -> None:
    _fill(db)
    _drop_trigger(db, "update")
    with db.session() as s:
        second = list_events(s)[1]
        forged = event_hash(
            second.prev_hash, 2, second.at, "mallory", second.action, second.subject, second.payload
        )
        s.execute(
            sa.text("UPDATE audit_events SET actor = 'mallory', hash = :h WHERE seq = 2"), {"h": forged}
        )
    with db.session() as s:
        report = verify_chain(s)
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert "prev_hash" in report.problem


def test_deleted_middle_row_is_detected(db: Database) -> None:
    _fill(db)
    _drop_trigger(db, "delete")
    with db.session() as s:
        s.execute(sa.text("DELETE FROM audit_events WHERE seq = 2"))
    with db.session() as s:
        report = verify_chain(s)
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert "seq 2 missing" in report.problem


def test_deleted_first_row_is_detected(db: Database) -> None:
    _fill(db)
    _drop_trigger(db, "delete")
    with db.session() as s:
        s.execute(sa.text("DELETE FROM audit_events WHERE seq = 1"))
    with db.session() as s:
        assert verify_chain(s).first_bad_seq == 2


def test_event_in_a_rolled_back_transaction_leaves_no_trace(db: Database) -> None:
    _fill(db)
    with pytest.raises(RuntimeError):
        with db.session() as s:
            repo.upsert_facts(s, [Fact("X1", "price", "$5")], changed_by="erp")
            append_event(s, "erp", "facts.upserted", "X1", {"n": 1})
            raise RuntimeError("the business change failed")
    with db.session() as s:
        assert [e.seq for e in list_events(s)] == [1, 2, 3, 4, 5]
        assert repo.load_facts(s) == []
        nxt = append_event(s, "erp", "facts.upserted", "X1", {"n": 1})
    assert nxt.seq == 6
    with db.session() as s:
        assert verify_chain(s).ok


def test_concurrent_appenders_never_share_a_seq(db: Database) -> None:
    errors: list[Exception] = []

    def writer(name: str) -> None:
        try:
            for i in range(8):
                with db.session() as s:
                    append_event(s, name, "tick", name, {"i": i})
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.session() as s:
        assert [e.seq for e in list_events(s)] == list(range(1, 25))
        assert verify_chain(s).ok


def test_export_jsonl_and_csv_round_trip(db: Database, tmp_path: Path) -> None:
    _fill(db)
    with db.session() as s:
        events = list_events(s)
        assert export_events(s, tmp_path / "out" / "audit.jsonl", "jsonl") == 5
        assert export_events(s, tmp_path / "audit.csv", "csv") == 5
        with pytest.raises(InvalidInput):
            export_events(s, tmp_path / "audit.xml", "xml")  # type: ignore[arg-type]
    lines = [json.loads(x) for x in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    assert lines == [e.as_json() for e in events]
    prev = GENESIS_HASH
    for line in lines:  # the export alone is enough to re-check the chain
        at = datetime.fromisoformat(line["at"])
        fields = (line["actor"], line["action"], line["subject"], line["payload"])
        assert event_hash(prev, line["seq"], at, *fields) == line["hash"]
        prev = line["hash"]
    with (tmp_path / "audit.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5
    assert [int(r["seq"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [json.loads(r["payload"]) for r in rows] == PAYLOADS
    assert [r["hash"] for r in rows] == [e.hash for e in events]
    assert not list(tmp_path.glob(".*.tmp"))


KEY = b"k" * 32


def _rewrite_history(db: Database, seq: int) -> None:
    """A database admin without the audit key: drop the triggers, change a row, recompute every hash
    from it on with the public algorithm (the MACs cannot be recomputed without the key)."""
    _drop_trigger(db, "update")
    with db.session() as s:
        events = list_events(s)
        prev = events[seq - 2].hash if seq > 1 else GENESIS_HASH
        for event in events[seq - 1:]:
            payload = {"forged": True} if event.seq == seq else event.payload
            digest = event_hash(prev, event.seq, event.at, event.actor, event.action, event.subject, payload)
            s.execute(sa.text("UPDATE audit_events SET payload = :p, prev_hash = :prev, hash = :h WHERE seq = :seq"),
                      {"p": json.dumps(payload), "prev": prev, "h": digest, "seq": event.seq})
            prev = digest


def test_a_rewrite_with_recomputed_hashes_is_caught_by_the_key(db_url: str) -> None:
    keyed = Database(db_url, audit_key=KEY)
    keyed.upgrade()
    try:
        _fill(keyed)
        with keyed.session() as s:
            assert verify_chain(s).ok and verify_chain(s).keyed
        _rewrite_history(keyed, 3)
        with keyed.session() as s:
            report = verify_chain(s, check_triggers=False)
            assert not report.ok and report.first_bad_seq == 3 and "MAC" in str(report.problem)
            # the same rows pass an unkeyed check: the public hash chain alone cannot see this
            assert verify_chain(s, key=b"", check_triggers=False).ok
            # and the dropped trigger is reported on its own
            triggers = verify_chain(s, key=b"")
            assert not triggers.ok and "audit_events_no_update" in str(triggers.problem)
    finally:
        keyed.dispose()


def test_deleted_newest_rows_are_caught_by_an_anchor(db: Database) -> None:
    from infra.audit import head_anchor

    _fill(db)
    with db.session() as s:
        anchor = head_anchor(s)
    assert anchor["seq"] == len(PAYLOADS)
    _drop_trigger(db, "delete")
    with db.session() as s:
        s.execute(sa.text("DELETE FROM audit_events WHERE seq >= 4"))
    with db.session() as s:
        assert verify_chain(s, check_triggers=False).ok  # a shorter chain is still a valid chain ...
        report = verify_chain(s, anchor=anchor, check_triggers=False)
    assert not report.ok and "truncated" in str(report.problem) and report.first_bad_seq == 4  # ... but not the anchored one
