"""Each step of a refresh renews its model's lease (infra.leases) before it works, so a live run is
never taken for a dead one, and a step of a run whose lease was taken over stops at once."""

from __future__ import annotations

from datetime import timedelta

from infra import leases
from infra import repository as repo
from infra.context import ServiceContext


def keep_lease(ctx: ServiceContext, run_id: int) -> None:
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
        leases.renew(session, run.model_name, run_id, timedelta(seconds=ctx.settings.lease_ttl_seconds))


def end_lease(ctx: ServiceContext, run_id: int) -> None:
    with ctx.db.session() as session:
        leases.release(session, repo.get_run(session, run_id).model_name, run_id)
