"""The edit step on a work pool, watched: a lost worker ends the refresh within minutes, never hangs it.

The refresh starts the edit deployment's flow run and polls it. The step proves it is alive by
renewing the run's lease (its heartbeat, `tasks.run_lease.heartbeat`); after
`worker_silence_seconds` without a renewal (no worker picked the step up, or its worker died), or
after `edit_timeout_seconds` in any case, the child flow run is set Crashed and the refresh fails
with the reason: the run is marked failed, its changes stay outstanding, and the next refresh redoes
the step.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from infra import leases
from infra import repository as repo
from infra.context import service_context
from infra.db.models import utcnow

log = logging.getLogger(__name__)

#: Seconds between two looks at the child flow run and the lease.
POLL_SECONDS = 2.0


class EditStepLost(RuntimeError):
    """The edit step's worker went silent, or the step ran past its time limit."""


def run_edit_on_pool(deployment: str, run_id: int, editor: str, hparams: dict[str, Any] | None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Crashed

    with service_context() as ctx:
        settings = ctx.settings
        with ctx.db.session() as session:
            model_name = repo.get_run(session, run_id).model_name
    child = run_deployment(deployment, parameters={"run_id": run_id, "editor": editor, "hparams": hparams}, timeout=0)
    started = time.monotonic()
    ttl = timedelta(seconds=settings.lease_ttl_seconds)
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(child.id).state
            if state is not None and state.is_final():
                if not state.is_completed():
                    raise RuntimeError(f"edit step on {deployment} ended {state.name}: {state.message or ''}".strip())
                return
            with service_context(settings) as ctx, ctx.db.session() as session:
                renewed = leases.last_renewed(session, model_name, run_id, ttl)
            silent = (utcnow() - renewed).total_seconds() if renewed is not None else float("inf")
            why = None
            if silent > settings.worker_silence_seconds:
                waiting = state is None or state.is_scheduled() or state.is_pending()
                why = (f"no worker of {deployment} picked the edit step up within {silent:.0f} s" if waiting else
                       f"the worker running the edit step on {deployment} went silent: no heartbeat for {silent:.0f} s")
            elif time.monotonic() - started > settings.edit_timeout_seconds:
                why = f"the edit step on {deployment} ran past KUS_EDIT_TIMEOUT ({settings.edit_timeout_seconds} s)"
            if why:
                client.set_flow_run_state(child.id, Crashed(message=why), force=True)
                log.error("run %s: %s; flow run %s set Crashed", run_id, why, child.id)
                raise EditStepLost(why)
            time.sleep(POLL_SECONDS)
