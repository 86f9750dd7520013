"""Each step of a refresh renews its model's lease (infra.leases) before it works, so a live run is
never taken for a dead one, and a step of a run whose lease was taken over stops at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from infra import leases
from infra import repository as repo
from infra.audit import append_event
from infra.context import ServiceContext
from infra.errors import InvalidState, PermissionDenied


def keep_lease(ctx: ServiceContext, run_id: int) -> None:
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
        leases.renew(session, run.model_name, run_id, timedelta(seconds=ctx.settings.lease_ttl_seconds))


log = logging.getLogger(__name__)


@contextmanager
def heartbeat(ctx: ServiceContext, run_id: int, every: float) -> Iterator[None]:
    """Renew the run's lease every `every` seconds from a background thread while the block runs: a
    long edit proves it is alive, and its silence tells the refresh that its worker is gone."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                keep_lease(ctx, run_id)
            except Exception:  # the lease was taken over: the step itself stops at its next renewal
                log.warning("run %s: heartbeat could not renew the refresh lease", run_id, exc_info=True)
                return

    thread = threading.Thread(target=beat, name=f"kus-heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every + 5)


def end_lease(ctx: ServiceContext, run_id: int) -> None:
    with ctx.db.session() as session:
        leases.release(session, repo.get_run(session, run_id).model_name, run_id)


def close_run(ctx: ServiceContext, run_id: int, actor: str, reason: str, force: bool = False) -> None:
    """Close a run stuck while working (its process was killed) on the record: status failed with
    `reason`, lease released, its changes outstanding for the next refresh. Its starter or a reviewer
    may; a run whose lease is still live is refused unless `force` (its process may be alive)."""
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
        if actor != run.started_by and actor not in ctx.settings.reviewers:
            raise PermissionDenied(f"{actor!r} neither started run {run_id} nor is a configured reviewer")
        if run.status == "awaiting_approval":
            raise InvalidState(f"run {run_id} awaits approval: decide it with `kus reject {run_id}` or `kus approve`")
        if run.status not in leases.WORKING_STATUSES:
            raise InvalidState(f"run {run_id} is {run.status}; only a run still working can be closed")
        lease = leases.holder_of(session, run.model_name, run_id)
        if lease is not None and not force:
            raise InvalidState(
                f"run {run_id} still holds its refresh lease (by {lease.holder}, until "
                f"{lease.expires_at.isoformat(timespec='seconds')}): its process may be working; if it is gone, "
                "pass --force")
        repo.update_run(session, run_id, status="failed", error=f"closed by {actor}: {reason}")
        leases.release(session, run.model_name, run_id)
        append_event(session, actor, "run_closed", f"run:{run_id}",
                     {"reason": reason, "status_was": run.status, "forced": bool(force and lease is not None)})
