"""Repository: plain functions over a `Session` that return frozen records, never ORM rows.

Usage::

    with db.session() as session:
        upsert_facts(session, [Fact("Acme X100", "price", "$199")], changed_by="erp")
        start = watermark(session, "demo")
        end = latest_change_id(session)
        run = create_run(session, "demo", "ft", "alice", start, end)
        changes = changes_since(session, start, up_to=end)
        update_run(session, run.id, "edited", delta_sha=sha)

Every function joins the caller's transaction; the caller's unit of work commits or rolls back.

Run statuses move only along ``ingested -> edited -> validated -> awaiting_approval ->
promoted | rejected``, ``promoted -> rolled_back``, and from any non-final status to ``failed``.
The watermark of a model (the last change it has consumed) advances only with runs that end
``promoted`` or ``rejected``; a failed or still open run leaves its changes pending.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from infra.db.models import (
    ApprovalRow,
    ChangeRejectionRow,
    DeltaRow,
    FactChangeRow,
    FactRow,
    ModelHeadRow,
    RUN_STATUS_VALUES,
    RefreshRunRow,
    RunArtifactRow,
    utc,
    utcnow,
)
from infra.domain import Fact, FactChange, LedgerEntry
from infra.errors import InvalidInput, InvalidState, NotFound, PermissionDenied

RUN_STATUSES = RUN_STATUS_VALUES  # one list, defined with the table it constrains
FINAL_STATUSES = ("promoted", "rejected", "rolled_back", "failed")
DECISIONS = ("approved", "rejected")

#: Allowed moves besides "any non-final status -> failed".
_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "ingested": ("edited",),
    "edited": ("validated",),
    "validated": ("awaiting_approval",),
    "awaiting_approval": ("promoted", "rejected"),
    "promoted": ("rolled_back",),
}
_UPDATABLE_RUN_FIELDS = ("delta_sha", "metrics", "validation", "error", "flow_run_id")
_WATERMARK_STATUSES = ("promoted", "rejected")
_IN_CHUNK = 500


@dataclass(frozen=True)
class RunRecord:
    id: int
    model_name: str
    editor: str
    status: str
    watermark_from: int
    watermark_to: int
    started_by: str
    started_at: datetime
    updated_at: datetime
    delta_sha: str | None
    metrics: dict[str, Any] | None
    validation: dict[str, Any] | None
    error: str | None
    flow_run_id: str | None


@dataclass(frozen=True)
class DeltaRecord:
    sha256: str
    parent_sha: str | None
    model_name: str
    editor: str
    uri: str
    size_bytes: int
    manifest: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class ApprovalRecord:
    id: int
    run_id: int
    reviewer: str
    decision: str
    reason: str
    at: datetime
    signed_payload: str | None = None
    signature: str | None = None


@dataclass(frozen=True)
class Rejection:
    """An incoming change row the service refused, and why."""

    change_id: int
    reason: str


# --------------------------------------------------------------------------- facts and the feed


def upsert_facts(
    session: Session, facts: Iterable[Fact], changed_by: str, at: datetime | None = None
) -> list[FactChange]:
    """Write facts the way a source system would and append the change feed.

    One ``fact_changes`` row is appended per fact whose object actually changed (a new fact has
    ``old_object=None``); an unchanged object only refreshes ``valid_from``/``source``. When the
    same (subject, relation) appears twice, the later one wins.

    Returns:
        The appended changes, in feed order.
    """
    facts = list(facts)
    for fact in facts:
        if any("\x00" in value for value in (fact.subject, fact.relation, fact.object)):
            raise InvalidInput(f"fact {fact.subject!r}/{fact.relation!r} contains a NUL character; no database "
                               "row may hold one (PostgreSQL cannot), so the batch is refused before anything is written")
    when = utc(at) if at is not None else utcnow()
    incoming = list(facts)
    for fact in incoming:
        if not fact.subject or not fact.relation:
            raise InvalidInput(f"fact needs a subject and a relation: {fact!r}")
        if fact.object is None:
            raise InvalidInput(f"fact has no object: {fact!r}")
    existing = _facts_by_key(session, {f.subject for f in incoming})
    new_changes: list[FactChangeRow] = []
    for fact in incoming:
        key = (fact.subject, fact.relation)
        row = existing.get(key)
        valid_from = utc(fact.valid_from) if fact.valid_from is not None else None
        if row is None:
            row = FactRow(
                subject=fact.subject,
                relation=fact.relation,
                object=fact.object,
                valid_from=valid_from,
                source=fact.source,
                updated_at=when,
            )
            session.add(row)
            existing[key] = row
            old: str | None = None
        elif row.object == fact.object:
            row.valid_from = valid_from if valid_from is not None else row.valid_from
            row.source = fact.source
            continue
        else:
            old = row.object
            row.object = fact.object
            row.valid_from = valid_from if valid_from is not None else row.valid_from
            row.source = fact.source
            row.updated_at = when
        change = FactChangeRow(
            subject=fact.subject,
            relation=fact.relation,
            old_object=old,
            new_object=fact.object,
            changed_at=when,
            changed_by=changed_by,
        )
        session.add(change)
        new_changes.append(change)
    session.flush()
    return [_change(c) for c in new_changes]


def seed_facts(session: Session, facts: Iterable[Fact], at: datetime | None = None) -> int:
    """Load the catalogue a base model was trained on: facts rows only, no change-feed rows.

    Seeding is the starting state of the source tables, not a change the model has to learn;
    refuses to overwrite an existing fact (use `upsert_facts` for changes).
    """
    when = utc(at) if at is not None else utcnow()
    incoming = list(facts)
    existing = _facts_by_key(session, {f.subject for f in incoming})
    clashes = [key for key in ((f.subject, f.relation) for f in incoming) if key in existing]
    if clashes:
        raise InvalidState(f"{len(clashes)} facts already exist (e.g. {clashes[0]}); seeding is for an empty catalogue")
    for fact in incoming:
        session.add(FactRow(subject=fact.subject, relation=fact.relation, object=fact.object,
                            valid_from=utc(fact.valid_from) if fact.valid_from is not None else None,
                            source=fact.source, updated_at=when))
    session.flush()
    return len(incoming)


def _facts_by_key(session: Session, subjects: set[str]) -> dict[tuple[str, str], FactRow]:
    out: dict[tuple[str, str], FactRow] = {}
    ordered = sorted(subjects)
    for i in range(0, len(ordered), _IN_CHUNK):
        chunk = ordered[i : i + _IN_CHUNK]
        for row in session.scalars(sa.select(FactRow).where(FactRow.subject.in_(chunk))):
            out[(row.subject, row.relation)] = row
    return out


def load_facts(session: Session) -> list[Fact]:
    """The whole catalogue, ordered by subject then relation."""
    rows = session.scalars(sa.select(FactRow).order_by(FactRow.subject, FactRow.relation))
    return [_fact(r) for r in rows]


def accepted_facts(session: Session) -> list[Fact]:
    """The current facts minus those whose value came from a feed row a refresh rejected (an empty
    price, an unknown relation, a control character): the source system wrote them, so they stay
    in the facts table and on the record, but no evaluation set or regulariser may use them."""
    rejected = {
        (row.subject, row.relation, row.new_object)
        for row in session.execute(
            sa.select(FactChangeRow.subject, FactChangeRow.relation, FactChangeRow.new_object)
            .join(ChangeRejectionRow, ChangeRejectionRow.change_id == FactChangeRow.id)
        )
    }
    return [f for f in load_facts(session) if (f.subject, f.relation, f.object) not in rejected]


def get_fact(session: Session, subject: str, relation: str) -> Fact | None:
    row = session.scalar(sa.select(FactRow).where(FactRow.subject == subject, FactRow.relation == relation))
    return _fact(row) if row is not None else None


def changes_since(session: Session, after_change_id: int, up_to: int | None = None,
                  limit: int | None = None) -> list[FactChange]:
    """Feed rows with ``after_change_id < id <= up_to`` (no upper bound when `up_to` is None), by id;
    at most `limit` of them (page on with the last id)."""
    query = sa.select(FactChangeRow).where(FactChangeRow.id > after_change_id)
    if up_to is not None:
        query = query.where(FactChangeRow.id <= up_to)
    query = query.order_by(FactChangeRow.id)
    if limit is not None:
        query = query.limit(limit)
    return [_change(r) for r in session.scalars(query)]


def conflicting_changes(session: Session, after_change_id: int, up_to: int | None = None) -> dict[int, int]:
    """Feed rows in the range that share subject, relation and changed_at with a row giving another
    new_object: {change id: distinct new_objects in its group}. Computed in the database, so a feed
    checked page by page still sees conflicts that straddle two pages."""
    in_range = FactChangeRow.id > after_change_id
    if up_to is not None:
        in_range = sa.and_(in_range, FactChangeRow.id <= up_to)
    groups = (
        sa.select(FactChangeRow.subject, FactChangeRow.relation, FactChangeRow.changed_at,
                  sa.func.count(sa.distinct(FactChangeRow.new_object)).label("n"))
        .where(in_range)
        .group_by(FactChangeRow.subject, FactChangeRow.relation, FactChangeRow.changed_at)
        .having(sa.func.count(sa.distinct(FactChangeRow.new_object)) > 1)
        .subquery()
    )
    query = sa.select(FactChangeRow.id, groups.c.n).join(groups, sa.and_(
        FactChangeRow.subject == groups.c.subject, FactChangeRow.relation == groups.c.relation,
        FactChangeRow.changed_at == groups.c.changed_at)).where(in_range)
    return {int(i): int(n) for i, n in session.execute(query)}


def base_values(session: Session, keys: Iterable[tuple[str, str]] | None = None) -> dict[tuple[str, str], str | None]:
    """The value each fact held before its first feed row: the catalogue the base model was built on.

    Seeding writes no feed rows, so a fact's first change records its seeded value as `old_object`
    (None for a fact the feed introduced). Facts never changed are not listed (their current
    value is their base value). With `keys`, only those facts.
    """
    if keys is not None:
        return _first_old_objects(session, set(keys))
    first = (
        sa.select(FactChangeRow.subject, FactChangeRow.relation, sa.func.min(FactChangeRow.id).label("first_id"))
        .group_by(FactChangeRow.subject, FactChangeRow.relation)
        .subquery()
    )
    query = sa.select(FactChangeRow.subject, FactChangeRow.relation, FactChangeRow.old_object).join(
        first, FactChangeRow.id == first.c.first_id
    )
    wanted = None
    out: dict[tuple[str, str], str | None] = {}
    for subject, relation, old in session.execute(query):
        if wanted is None or (subject, relation) in wanted:
            out[(subject, relation)] = old
    return out


def ledger(session: Session, up_to: int | None = None) -> list[LedgerEntry]:
    """Every fact whose latest *accepted* value (feed rows up to `up_to`, none of them rejected by
    a refresh's input checks) differs from its base value; ordered by the feed row that set it.

    This is what the live model must say beyond what the base model says, whatever runs were
    promoted, rejected or rolled back in between: a fact changed back to its base value leaves it.
    """
    return list(iter_ledger(session, up_to))


def iter_ledger(session: Session, up_to: int | None = None, page_rows: int = 10_000) -> Iterator[LedgerEntry]:
    """:func:`ledger` a page of feed rows at a time (keyset pages on the change id), each page's base
    values read for its keys only: memory bounded by a page, not by the ledger."""
    rejected = sa.select(ChangeRejectionRow.change_id)
    latest = sa.select(FactChangeRow.subject, FactChangeRow.relation, sa.func.max(FactChangeRow.id).label("last_id")).where(
        FactChangeRow.id.not_in(rejected)
    )
    if up_to is not None:
        latest = latest.where(FactChangeRow.id <= up_to)
    latest_q = latest.group_by(FactChangeRow.subject, FactChangeRow.relation).subquery()
    cursor = 0
    while True:
        rows = session.execute(
            sa.select(FactChangeRow.id, FactChangeRow.subject, FactChangeRow.relation, FactChangeRow.new_object)
            .join(latest_q, FactChangeRow.id == latest_q.c.last_id)
            .where(FactChangeRow.id > cursor)
            .order_by(FactChangeRow.id)
            .limit(page_rows)
        ).all()
        if not rows:
            return
        bases = _first_old_objects(session, {(r.subject, r.relation) for r in rows})
        for change_id, subject, relation, value in rows:
            base = bases.get((subject, relation))
            if value != base:
                yield LedgerEntry(subject, relation, value, base, change_id)
        cursor = rows[-1].id


def _first_old_objects(session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
    """:func:`base_values` of `keys`, queried by subject in chunks (not the whole feed)."""
    out: dict[tuple[str, str], str | None] = {}
    subjects = sorted({subject for subject, _ in keys})
    for start in range(0, len(subjects), _IN_CHUNK):
        chunk = subjects[start:start + _IN_CHUNK]
        first = (
            sa.select(FactChangeRow.subject, FactChangeRow.relation, sa.func.min(FactChangeRow.id).label("first_id"))
            .where(FactChangeRow.subject.in_(chunk))
            .group_by(FactChangeRow.subject, FactChangeRow.relation)
            .subquery()
        )
        query = sa.select(FactChangeRow.subject, FactChangeRow.relation, FactChangeRow.old_object).join(
            first, FactChangeRow.id == first.c.first_id)
        for subject, relation, old in session.execute(query):
            if (subject, relation) in keys:
                out[(subject, relation)] = old
    return out


def latest_change_id(session: Session) -> int:
    """The newest feed position, 0 when the feed is empty."""
    return session.scalar(sa.select(sa.func.max(FactChangeRow.id))) or 0


def watermark(session: Session, model_name: str) -> int:
    """The last feed position `model_name` has consumed: the highest ``watermark_to`` of its runs
    that ended promoted or rejected; 0 if none. Failed, rolled-back and open runs do not count."""
    value = session.scalar(
        sa.select(sa.func.max(RefreshRunRow.watermark_to)).where(
            RefreshRunRow.model_name == model_name, RefreshRunRow.status.in_(_WATERMARK_STATUSES)
        )
    )
    return value or 0


# --------------------------------------------------------------------------- refresh runs


def create_run(
    session: Session,
    model_name: str,
    editor: str,
    started_by: str,
    watermark_from: int,
    watermark_to: int,
    flow_run_id: str | None = None,
) -> RunRecord:
    """Open a run over feed positions ``(watermark_from, watermark_to]`` in status ``ingested``."""
    if watermark_to < watermark_from:
        raise InvalidInput(f"watermark_to ({watermark_to}) is before watermark_from ({watermark_from})")
    now = utcnow()
    row = RefreshRunRow(
        model_name=model_name,
        editor=editor,
        status="ingested",
        watermark_from=watermark_from,
        watermark_to=watermark_to,
        started_by=started_by,
        started_at=now,
        updated_at=now,
        flow_run_id=flow_run_id,
    )
    session.add(row)
    session.flush()
    return _run(row)


def get_run(session: Session, run_id: int) -> RunRecord:
    return _run(_run_row(session, run_id))


def list_runs(session: Session, model_name: str | None = None, limit: int = 50) -> list[RunRecord]:
    """Runs, newest first."""
    query = sa.select(RefreshRunRow)
    if model_name is not None:
        query = query.where(RefreshRunRow.model_name == model_name)
    query = query.order_by(RefreshRunRow.id.desc()).limit(limit)
    return [_run(r) for r in session.scalars(query)]


def _rejected(model_name: str) -> sa.Select:
    """Ids of the rejected runs of `model_name` that computed a delta (joined with it)."""
    return (
        sa.select(RefreshRunRow.id)
        .join(DeltaRow, DeltaRow.sha256 == RefreshRunRow.delta_sha)
        .where(RefreshRunRow.model_name == model_name, RefreshRunRow.status == "rejected")
    )


def rejected_runs(session: Session, model_name: str, head: str | None) -> list[int]:
    """Ids of the runs of `model_name` that edited on top of `head` and were rejected, oldest first: a
    retry of the same outstanding facts should learn from them, not repeat them."""
    parent = DeltaRow.parent_sha.is_(None) if head is None else DeltaRow.parent_sha == head
    return [int(run_id) for run_id in session.scalars(_rejected(model_name).where(parent).order_by(RefreshRunRow.id))]


def recent_rejected_runs(session: Session, model_name: str, limit: int) -> list[int]:
    """Ids of the newest `limit` rejected runs of `model_name` on any head, oldest first."""
    query = _rejected(model_name).order_by(RefreshRunRow.id.desc()).limit(limit)
    return sorted(int(run_id) for run_id in session.scalars(query))


def rejected_attempts(session: Session, model_name: str, head: str | None) -> int:
    """How many runs of `model_name` edited on top of `head` and were rejected."""
    return len(rejected_runs(session, model_name, head))


def open_runs(session: Session, model_name: str) -> list[RunRecord]:
    """Runs of `model_name` not yet in a final status, oldest first."""
    query = (
        sa.select(RefreshRunRow)
        .where(RefreshRunRow.model_name == model_name, RefreshRunRow.status.not_in(FINAL_STATUSES))
        .order_by(RefreshRunRow.id)
    )
    return [_run(r) for r in session.scalars(query)]


def allowed_transitions(status: str) -> tuple[str, ...]:
    """The statuses a run in `status` may move to."""
    nexts = _TRANSITIONS.get(status, ())
    return nexts + ("failed",) if status not in FINAL_STATUSES else nexts


def update_run(session: Session, run_id: int, status: str | None = None, **fields: Any) -> RunRecord:
    """Move a run to `status` (if given) and set any of its updatable fields.

    Args:
        status: the new status; None, or the current status, leaves the status as it is.
        fields: any of ``delta_sha, metrics, validation, error, flow_run_id``.

    Raises:
        InvalidState: the transition is not allowed (the message names the allowed ones).
        InvalidInput: an unknown status or field.
        NotFound: no such run, or `delta_sha` names a delta that was never added.
    """
    unknown = set(fields) - set(_UPDATABLE_RUN_FIELDS)
    if unknown:
        raise InvalidInput(
            f"cannot update run field(s) {sorted(unknown)}; updatable: {list(_UPDATABLE_RUN_FIELDS)}"
        )
    if status is not None and status not in RUN_STATUSES:
        raise InvalidInput(f"unknown run status {status!r}; known: {', '.join(RUN_STATUSES)}")
    row = _run_row(session, run_id, for_update=True)
    if status is not None and status != row.status:
        allowed = allowed_transitions(row.status)
        if status not in allowed:
            where = f"may only move to {', '.join(allowed)}" if allowed else "is final"
            raise InvalidState(
                f"run {run_id} cannot move from {row.status} to {status}: {row.status} {where}"
            )
        row.status = status
    if fields.get("delta_sha") is not None and session.get(DeltaRow, fields["delta_sha"]) is None:
        raise NotFound(
            f"delta {fields['delta_sha']} is not recorded; add_delta it before linking it to run {run_id}"
        )
    for name, value in fields.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    session.flush()
    return _run(row)


def record_artifact(session: Session, run_id: int, name: str, sha256: str) -> None:
    """Remember the sha256 of a run's stored file (a rewrite replaces it: the run wrote it again)."""
    row = session.get(RunArtifactRow, (run_id, name))
    if row is None:
        session.add(RunArtifactRow(run_id=run_id, name=name, sha256=sha256))
    else:
        row.sha256 = sha256
    session.flush()


def artifact_sha(session: Session, run_id: int, name: str) -> str | None:
    row = session.get(RunArtifactRow, (run_id, name))
    return row.sha256 if row is not None else None


def record_rejections(session: Session, run_id: int, rejections: Iterable[Rejection]) -> None:
    """Keep the incoming change rows `run_id` refused, each with its reason."""
    _run_row(session, run_id)
    now = utcnow()
    rows = [
        ChangeRejectionRow(run_id=run_id, change_id=r.change_id, reason=r.reason, at=now) for r in rejections
    ]
    try:
        with session.begin_nested():
            session.add_all(rows)
    except IntegrityError as exc:
        raise NotFound(f"run {run_id}: a rejection names a change id that is not in the feed") from exc


def drop_change(session: Session, change_id: int, actor: str, reason: str) -> FactChange:
    """An operator takes a feed row out of the fact ledger, on the record: the row stays in the feed,
    a rejection without a run says who dropped it and why, and no refresh edits toward it again."""
    if not reason.strip():
        raise InvalidInput("dropping a change needs a reason")
    row = session.get(FactChangeRow, change_id)
    if row is None:
        raise NotFound(f"no change {change_id} in the feed")
    session.add(ChangeRejectionRow(run_id=None, change_id=change_id, reason=f"dropped by {actor}: {reason}",
                                   at=utcnow()))
    session.flush()
    return _change(row)


def rejections_for(session: Session, run_id: int) -> list[Rejection]:
    rows = session.scalars(
        sa.select(ChangeRejectionRow)
        .where(ChangeRejectionRow.run_id == run_id)
        .order_by(ChangeRejectionRow.change_id, ChangeRejectionRow.id)
    )
    return [Rejection(change_id=r.change_id, reason=r.reason) for r in rows]


# --------------------------------------------------------------------------- deltas and heads


def add_delta(session: Session, record: DeltaRecord) -> DeltaRecord:
    """Record a stored delta; adding the same sha256 again returns the existing record.

    Raises:
        InvalidState: a delta with this sha256 exists but claims another parent or model.
        NotFound: `parent_sha` is not recorded.
    """
    existing = session.get(DeltaRow, record.sha256)
    if existing is None:
        if record.parent_sha is not None and session.get(DeltaRow, record.parent_sha) is None:
            raise NotFound(f"parent delta {record.parent_sha} of {record.sha256} is not recorded")
        row = DeltaRow(
            sha256=record.sha256,
            parent_sha=record.parent_sha,
            model_name=record.model_name,
            editor=record.editor,
            uri=record.uri,
            size_bytes=record.size_bytes,
            manifest=record.manifest,
            created_at=utc(record.created_at),
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:  # added by a concurrent transaction meanwhile
            existing = session.get(DeltaRow, record.sha256, populate_existing=True)
            if existing is None:
                raise
        else:
            return _delta(row)
    if (existing.parent_sha, existing.model_name) != (record.parent_sha, record.model_name):
        raise InvalidState(
            f"delta {record.sha256} is already recorded with parent {existing.parent_sha} for model "
            f"{existing.model_name}; refusing parent {record.parent_sha} for model {record.model_name}"
        )
    return _delta(existing)


def get_delta(session: Session, sha256: str) -> DeltaRecord:
    row = session.get(DeltaRow, sha256)
    if row is None:
        raise NotFound(f"delta {sha256} is not recorded")
    return _delta(row)


def count_deltas(session: Session, model_name: str) -> int:
    """How many deltas were computed for `model_name` (promoted or not): each depends on its base model."""
    return int(session.scalar(sa.select(sa.func.count()).select_from(DeltaRow).where(DeltaRow.model_name == model_name)) or 0)


def delta_chain(session: Session, head_sha: str | None) -> list[DeltaRecord]:
    """The chain ending at `head_sha`: root first, head last ([] for None)."""
    chain: list[DeltaRecord] = []
    seen: set[str] = set()
    sha = head_sha
    while sha is not None:
        if sha in seen:
            raise InvalidState(f"delta chain of {head_sha} loops at {sha}")
        seen.add(sha)
        record = get_delta(session, sha)
        chain.append(record)
        sha = record.parent_sha
    chain.reverse()
    return chain


def get_head(session: Session, model_name: str) -> str | None:
    """The sha256 of the live delta for `model_name` (None: the base model, or no head yet)."""
    return session.scalar(sa.select(ModelHeadRow.delta_sha).where(ModelHeadRow.model_name == model_name))


def move_head(session: Session, model_name: str, new_sha: str | None, expected_current: str | None) -> None:
    """Compare-and-set the head of `model_name` from `expected_current` to `new_sha`.

    The head row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions are
    serialised by ``BEGIN IMMEDIATE``) until the caller's transaction ends.

    Raises:
        InvalidState: the head is not `expected_current` (someone moved it meanwhile).
        NotFound: `new_sha` is not a recorded delta.
    """
    if new_sha is not None and session.get(DeltaRow, new_sha) is None:
        raise NotFound(f"cannot move head of {model_name} to {new_sha}: delta not recorded")
    row = session.scalar(
        sa.select(ModelHeadRow).where(ModelHeadRow.model_name == model_name).with_for_update()
    )
    current = row.delta_sha if row is not None else None
    if current != expected_current:
        raise InvalidState(
            f"head of {model_name} is {current or 'the base model'}, expected "
            f"{expected_current or 'the base model'}; it moved meanwhile, reload and retry"
        )
    now = utcnow()
    if row is None:
        try:
            with session.begin_nested():
                session.add(ModelHeadRow(model_name=model_name, delta_sha=new_sha, updated_at=now, version=1))
        except IntegrityError as exc:
            raise InvalidState(f"head of {model_name} was created meanwhile; reload and retry") from exc
    else:
        row.delta_sha = new_sha
        row.updated_at = now
        row.version += 1
        session.flush()


# --------------------------------------------------------------------------- approvals


def record_decision(
    session: Session, run_id: int, reviewer: str, decision: str, reason: str, at: datetime | None = None,
    signed_payload: str | None = None, signature: str | None = None,
) -> ApprovalRecord:
    """Record a reviewer's decision on a run awaiting approval.

    Raises:
        InvalidInput: `decision` is not 'approved' or 'rejected', or no reviewer is named.
        InvalidState: the run is not awaiting approval.
        PermissionDenied: the reviewer started the run and tries to approve it.
    """
    if decision not in DECISIONS:
        raise InvalidInput(f"unknown decision {decision!r}; expected one of {', '.join(DECISIONS)}")
    if not reviewer:
        raise InvalidInput("a decision needs a reviewer")
    run = _run_row(session, run_id, for_update=True)
    if run.status != "awaiting_approval":
        raise InvalidState(
            f"run {run_id} is {run.status}, not awaiting_approval; no decision can be recorded"
        )
    if decision == "approved" and reviewer == run.started_by:
        raise PermissionDenied(f"{reviewer} started run {run_id} and cannot approve it")
    row = ApprovalRow(run_id=run_id, reviewer=reviewer, decision=decision, reason=reason or "", at=at or utcnow(),
                      signed_payload=signed_payload, signature=signature)
    session.add(row)
    session.flush()
    return _approval(row)


def approvals_for(session: Session, run_id: int) -> list[ApprovalRecord]:
    query = sa.select(ApprovalRow).where(ApprovalRow.run_id == run_id).order_by(ApprovalRow.id)
    rows = session.scalars(query)
    return [_approval(r) for r in rows]


# --------------------------------------------------------------------------- row -> record


def _run_row(session: Session, run_id: int, for_update: bool = False) -> RefreshRunRow:
    row = session.get(RefreshRunRow, run_id, with_for_update=for_update or None, populate_existing=for_update)
    if row is None:
        raise NotFound(f"refresh run {run_id} does not exist")
    return row


def _fact(row: FactRow) -> Fact:
    return Fact(row.subject, row.relation, row.object, valid_from=row.valid_from, source=row.source)


def _change(row: FactChangeRow) -> FactChange:
    return FactChange(
        change_id=row.id,
        subject=row.subject,
        relation=row.relation,
        old_object=row.old_object,
        new_object=row.new_object,
        changed_at=row.changed_at,
        changed_by=row.changed_by,
    )


def _run(row: RefreshRunRow) -> RunRecord:
    return RunRecord(
        id=row.id,
        model_name=row.model_name,
        editor=row.editor,
        status=row.status,
        watermark_from=row.watermark_from,
        watermark_to=row.watermark_to,
        started_by=row.started_by,
        started_at=row.started_at,
        updated_at=row.updated_at,
        delta_sha=row.delta_sha,
        metrics=row.metrics,
        validation=row.validation,
        error=row.error,
        flow_run_id=row.flow_run_id,
    )


def _delta(row: DeltaRow) -> DeltaRecord:
    return DeltaRecord(
        sha256=row.sha256,
        parent_sha=row.parent_sha,
        model_name=row.model_name,
        editor=row.editor,
        uri=row.uri,
        size_bytes=row.size_bytes,
        manifest=row.manifest,
        created_at=row.created_at,
    )


def _approval(row: ApprovalRow) -> ApprovalRecord:
    return ApprovalRecord(
        id=row.id,
        run_id=row.run_id,
        reviewer=row.reviewer,
        decision=row.decision,
        reason=row.reason,
        at=row.at,
        signed_payload=row.signed_payload,
        signature=row.signature,
    )


__all__: Sequence[str] = (
    "RUN_STATUSES",
    "FINAL_STATUSES",
    "RunRecord",
    "DeltaRecord",
    "ApprovalRecord",
    "Rejection",
    "upsert_facts",
    "load_facts",
    "get_fact",
    "changes_since",
    "latest_change_id",
    "base_values",
    "ledger",
    "watermark",
    "create_run",
    "get_run",
    "list_runs",
    "open_runs",
    "allowed_transitions",
    "update_run",
    "record_rejections",
    "rejections_for",
    "add_delta",
    "get_delta",
    "delta_chain",
    "get_head",
    "move_head",
    "record_decision",
    "approvals_for",
)
