"""The audit trail: an append-only, hash-chained log of everything the service does.

Usage::

    with db.session() as session:
        update_run(session, run.id, "promoted")
        append_event(session, "alice", "run.promoted", f"run:{run.id}", {"delta": sha})
    with db.session() as session:
        report = verify_chain(session)     # ChainReport(ok=True, events_checked=..., ...)
        export_events(session, Path("audit.jsonl"), "jsonl")

Each event's ``hash`` is ``sha256(prev_hash + canonical_json(event))`` where the canonical JSON
holds seq, at (ISO 8601, UTC, microseconds), actor, action, subject and payload with sorted keys
and no spaces; the first event's ``prev_hash`` is 64 zeros. The database refuses UPDATE and
DELETE on the table (triggers from migration 0001); the chain catches anyone who got round them.

The hash algorithm is public, so someone who can drop the triggers could rewrite rows and
recompute every hash. Two things stop that: each event's ``mac`` is an HMAC of its hash under a
secret kept outside the database (the session's ``info["audit_key"]``, from `Database`), and an
**anchor** (the newest seq and hash, exported with `anchor` to write-once storage) lets `verify_chain`
catch deleted newest rows, which no chain can see by itself. It also reports missing triggers.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from infra.db.models import AuditEventRow, utc, utcnow
from infra.errors import InvalidInput

GENESIS_HASH = "0" * 64
_PG_AUDIT_LOCK_CLASS = 0x61756474  # "audt": serialises appenders within one schema
_BATCH = 1000
EXPORT_FIELDS = ("seq", "at", "actor", "action", "subject", "payload", "prev_hash", "hash", "mac")


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str
    mac: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The event as plain JSON values (``at`` as ISO text), the shape of an export line."""
        return {
            "seq": self.seq,
            "at": _iso(self.at),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "payload": self.payload,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "mac": self.mac,
        }


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events_checked: int
    first_bad_seq: int | None
    problem: str | None
    keyed: bool = False
    anchored: bool = False


def event_mac(key: bytes, digest: str) -> str:
    return hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, ASCII only, no NaN/Infinity: the same text on every machine."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def event_hash(
    prev_hash: str, seq: int, at: datetime, actor: str, action: str, subject: str, payload: dict[str, Any]
) -> str:
    body = canonical_json(
        {"seq": seq, "at": _iso(at), "actor": actor, "action": action, "subject": subject, "payload": payload}
    )
    return hashlib.sha256((prev_hash + body).encode("ascii")).hexdigest()


def append_event(
    session: Session, actor: str, action: str, subject: str, payload: dict[str, Any]
) -> AuditEvent:
    """Append one event in the caller's transaction (it commits or rolls back with the business change).

    Appenders are serialised: on PostgreSQL by a transaction-scoped advisory lock, on SQLite by
    the ``BEGIN IMMEDIATE`` of every unit of work, so two writers never take the same seq.

    Raises:
        InvalidInput: the payload is not a JSON object of plain JSON values.
    """
    if not isinstance(payload, dict):
        raise InvalidInput(f"audit payload must be a JSON object, got {type(payload).__name__}")
    try:
        # Normalise (tuples become lists, keys must be strings) so what is stored is what was hashed.
        stored_payload = json.loads(canonical_json(payload))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"audit payload for {action} is not plain JSON: {exc}") from exc
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            sa.text("SELECT pg_advisory_xact_lock(:cls, hashtext(current_schema()))"),
            {"cls": _PG_AUDIT_LOCK_CLASS},
        )
    last = session.execute(
        sa.select(AuditEventRow.seq, AuditEventRow.hash).order_by(AuditEventRow.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (last.seq + 1, last.hash) if last is not None else (1, GENESIS_HASH)
    at = utcnow()
    digest = event_hash(prev_hash, seq, at, actor, action, subject, stored_payload)
    key = session.info.get("audit_key")
    row = AuditEventRow(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        subject=subject,
        payload=stored_payload,
        prev_hash=prev_hash,
        hash=digest,
        mac=event_mac(key, digest) if key else None,
    )
    session.add(row)
    session.flush()
    return _event(row)


def list_events(session: Session, after_seq: int = 0, limit: int | None = None) -> list[AuditEvent]:
    """Events with ``seq > after_seq``, oldest first."""
    query = sa.select(AuditEventRow).where(AuditEventRow.seq > after_seq).order_by(AuditEventRow.seq)
    if limit is not None:
        query = query.limit(limit)
    return [_event(r) for r in session.scalars(query)]


def events_for(session: Session, subject: str, action: str | None = None) -> list[AuditEvent]:
    """The events about `subject` (e.g. "run:7"), optionally of one action, oldest first."""
    query = sa.select(AuditEventRow).where(AuditEventRow.subject == subject)
    if action is not None:
        query = query.where(AuditEventRow.action == action)
    return [_event(r) for r in session.scalars(query.order_by(AuditEventRow.seq))]


def verify_chain(session: Session, key: bytes | None = None, anchor: dict[str, Any] | None = None,
                 check_triggers: bool = True) -> ChainReport:
    """Walk the whole chain and report the first thing that does not hold.

    Detected: a changed row (its hash no longer matches its content), a deleted row (a gap in
    seq, or a ``prev_hash`` that does not match the event before), a forged first event; with
    `key` (default: the session's audit key), a row rewritten with recomputed hashes (its MAC no
    longer verifies); with an `anchor` ({"seq", "hash"} exported earlier), deleted newest rows and
    any rewrite up to the anchor; with `check_triggers`, dropped append-only triggers.
    """
    key = key if key is not None else session.info.get("audit_key")
    checked = 0
    expected_seq, expected_prev = 1, GENESIS_HASH
    anchored_hash = None
    for event in _iter_events(session):
        checked += 1
        if event.seq != expected_seq:
            gap = f"{expected_seq}" if event.seq == expected_seq + 1 else f"{expected_seq}..{event.seq - 1}"
            return _bad(checked, event.seq, f"seq {gap} missing before seq {event.seq} (deleted)")
        recomputed = event_hash(
            event.prev_hash, event.seq, event.at, event.actor, event.action, event.subject, event.payload
        )
        if recomputed != event.hash:
            return _bad(checked, event.seq, f"seq {event.seq}: content does not match its hash (changed)")
        if event.prev_hash != expected_prev:
            problem = f"seq {event.seq}: prev_hash does not match the previous event's hash"
            return _bad(checked, event.seq, problem)
        if key and (event.mac is None or not hmac.compare_digest(event.mac, event_mac(key, event.hash))):
            what = "has no MAC" if event.mac is None else "MAC does not verify (rewritten and re-hashed?)"
            return _bad(checked, event.seq, f"seq {event.seq}: {what}")
        if anchor is not None and event.seq == int(anchor["seq"]):
            anchored_hash = event.hash
        expected_seq, expected_prev = event.seq + 1, event.hash
    if anchor is not None:
        seq = int(anchor["seq"])
        if checked < seq:
            return _bad(checked, checked + 1, f"truncated: the anchor names seq {seq}, the trail ends at seq {checked} "
                                              f"(the newest {seq - checked} events were deleted)")
        if anchored_hash != anchor["hash"]:
            return _bad(checked, seq, f"seq {seq} differs from the anchored hash (history rewritten)")
    if check_triggers:
        missing = missing_triggers(session)
        if missing:
            return _bad(checked, None, f"append-only triggers missing: {', '.join(missing)} (dropped?)")
    return ChainReport(True, checked, None, None, keyed=bool(key), anchored=anchor is not None)


def head_anchor(session: Session) -> dict[str, Any]:
    """The newest event's seq, hash and MAC: export it to write-once storage, verify against it later."""
    last = session.execute(
        sa.select(AuditEventRow.seq, AuditEventRow.hash, AuditEventRow.mac, AuditEventRow.at)
        .order_by(AuditEventRow.seq.desc()).limit(1)
    ).first()
    if last is None:
        return {"seq": 0, "hash": GENESIS_HASH, "mac": None, "at": None}
    return {"seq": last.seq, "hash": last.hash, "mac": last.mac, "at": _iso(last.at)}


#: The append-only triggers migration 0001 creates, per dialect.
EXPECTED_TRIGGERS = {
    "sqlite": ("audit_events_no_update", "audit_events_no_delete"),
    "postgresql": ("audit_events_no_update", "audit_events_no_delete", "audit_events_no_truncate"),
}


def missing_triggers(session: Session) -> list[str]:
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        present = set(session.scalars(sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger'")))
    elif dialect == "postgresql":
        present = set(session.scalars(sa.text(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_events'::regclass AND NOT tgisinternal")))
    else:
        return []
    return [name for name in EXPECTED_TRIGGERS.get(dialect, ()) if name not in present]


def export_events(session: Session, path: Path, fmt: Literal["jsonl", "csv"]) -> int:
    """Write every event to `path` (JSON lines, or CSV with the payload as canonical JSON).

    The file is written next to `path` and renamed into place, so a reader never sees half of it.

    Returns:
        The number of events written.
    """
    if fmt not in ("jsonl", "csv"):
        raise InvalidInput(f"unknown export format {fmt!r}; use 'jsonl' or 'csv'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with tmp.open("w", encoding="utf-8", newline="") as out:
        if fmt == "jsonl":
            for event in _iter_events(session):
                out.write(canonical_json(event.as_json()) + "\n")
                count += 1
        else:
            writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
            writer.writeheader()
            for event in _iter_events(session):
                line = event.as_json()
                line["payload"] = canonical_json(event.payload)
                writer.writerow(line)
                count += 1
    os.replace(tmp, path)
    return count


def _iter_events(session: Session) -> Iterator[AuditEvent]:
    after = 0
    while True:
        batch = list_events(session, after_seq=after, limit=_BATCH)
        yield from batch
        if len(batch) < _BATCH:
            return
        after = batch[-1].seq


def _bad(checked: int, seq: int | None, problem: str) -> ChainReport:
    return ChainReport(ok=False, events_checked=checked, first_bad_seq=seq, problem=problem)


def _iso(at: datetime) -> str:
    return utc(at).isoformat(timespec="microseconds")


def _event(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        payload=row.payload,
        prev_hash=row.prev_hash,
        hash=row.hash,
        mac=row.mac,
    )
