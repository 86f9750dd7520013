"""One refresh per model at a time: a lease row per model, taken in the database.

A refresh takes the model's lease before it opens a run and renews it at every step; a second
refresh of the same model is refused with who holds it and until when. A lease is void once its
run stops working (awaiting approval or finished) or when it expires (a crashed worker), and only
then may the next refresh declare the old run dead. Refreshes of different models never meet.
Both databases serialise the take: SQLite by its write lock (BEGIN IMMEDIATE), PostgreSQL by the
row lock (SELECT ... FOR UPDATE) or, for a model's first lease, the primary key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from infra.db.models import RefreshLeaseRow, RefreshRunRow, utc, utcnow
from infra.errors import InvalidState

#: Statuses in which a run is still being worked on (its lease, if unexpired, is live).
WORKING_STATUSES = ("ingested", "edited", "validated")


@dataclass(frozen=True)
class Lease:
    model_name: str
    holder: str
    expires_at: datetime
    run_id: int | None


def _live(session: Session, row: RefreshLeaseRow, now: datetime) -> bool:
    if utc(row.expires_at) <= now:
        return False
    if row.run_id is None:
        return True  # a refresh between taking the lease and opening its run
    status = session.scalar(sa.select(RefreshRunRow.status).where(RefreshRunRow.id == row.run_id))
    return status in WORKING_STATUSES


def acquire(session: Session, model_name: str, holder: str, ttl: timedelta) -> Lease:
    """Take the model's lease or raise InvalidState naming who holds it."""
    now = utcnow()
    row = session.get(RefreshLeaseRow, model_name, with_for_update=True)
    if row is not None and _live(session, row, now):
        raise InvalidState(
            f"a refresh of {model_name} is already running (run {row.run_id}, by {row.holder}, lease until "
            f"{utc(row.expires_at).isoformat(timespec='seconds')}); wait for it, or for its lease to expire"
        )
    if row is None:
        row = RefreshLeaseRow(model_name=model_name, run_id=None, holder=holder, expires_at=now + ttl)
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise InvalidState(f"a refresh of {model_name} took the lease at the same moment; try again later") from None
    else:
        row.holder, row.run_id, row.expires_at = holder, None, now + ttl
        session.flush()
    return Lease(model_name, holder, row.expires_at, None)


def holder_of(session: Session, model_name: str, run_id: int) -> Lease | None:
    """The live lease `run_id` holds on `model_name`, if any (None: expired, released or another run's)."""
    row = session.get(RefreshLeaseRow, model_name)
    if row is None or row.run_id != run_id or not _live(session, row, utcnow()):
        return None
    return Lease(row.model_name, row.holder, utc(row.expires_at), row.run_id)


def last_renewed(session: Session, model_name: str, run_id: int, ttl: timedelta) -> datetime | None:
    """When `run_id` last renewed its lease on `model_name` (None: it holds none): a renewal sets the
    expiry to renewal time + `ttl`."""
    row = session.get(RefreshLeaseRow, model_name, populate_existing=True)
    if row is None or row.run_id != run_id:
        return None
    return utc(row.expires_at) - ttl


def bind(session: Session, model_name: str, run_id: int) -> None:
    """Tie the lease to the run the refresh opened."""
    session.execute(sa.update(RefreshLeaseRow).where(RefreshLeaseRow.model_name == model_name).values(run_id=run_id))


def renew(session: Session, model_name: str, run_id: int, ttl: timedelta) -> None:
    """Extend the lease of `run_id`; InvalidState when the run no longer holds it (it expired and was taken)."""
    result = session.execute(
        sa.update(RefreshLeaseRow)
        .where(RefreshLeaseRow.model_name == model_name, RefreshLeaseRow.run_id == run_id)
        .values(expires_at=utcnow() + ttl)
    )
    if result.rowcount != 1:
        raise InvalidState(f"run {run_id} no longer holds the refresh lease of {model_name}; another refresh took over")


def release(session: Session, model_name: str, run_id: int | None) -> None:
    query = sa.delete(RefreshLeaseRow).where(RefreshLeaseRow.model_name == model_name)
    if run_id is not None:
        query = query.where(RefreshLeaseRow.run_id == run_id)
    session.execute(query)
