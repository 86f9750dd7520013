"""The scheduled catalogue refresh: a Prefect deployment with a cron schedule.

`kus serve --cron "0 2 * * *"` serves it from this process (Prefect's `flow.serve`); with a Prefect
server and workers, `prefect deploy` uses prefect.yaml instead (refresh on the default pool, the
edit step on the `gpu` pool).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.refresh import catalogue_refresh

#: `kus serve`'s own deployment: never the name prefect.yaml deploys ("nightly"), so serving from one
#: process does not replace a team's production deployment, its schedule or its pull step.
DEPLOYMENT_NAME = "served"


def refresh_deployment(cron: str, editor: str | None = None) -> Any:
    """The deployment object (a RunnerDeployment) for the served refresh: one run at a time (a run
    due while one is in flight is cancelled, not queued behind it: the next tick covers its changes)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return catalogue_refresh.to_deployment(
        name=DEPLOYMENT_NAME,
        cron=cron,
        parameters={"editor": editor},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        description="Scheduled catalogue refresh: edits the model with the day's fact changes, ends awaiting approval.",
        tags=["catalogue"],
    )


def serve_refresh(cron: str, editor: str | None = None) -> None:
    from prefect import serve

    serve(refresh_deployment(cron, editor), pause_on_shutdown=False)  # other deployments are not ours to pause


#: What `kus deploy` creates on a Prefect server: the refresh on the default pool, its edit step on `gpu`.
REFRESH_POOL, GPU_POOL = "default", "gpu"
NIGHTLY, EDIT_ON_GPU = "nightly", "gpu"
#: Settings every worker's flow runs get through the pool's job variables.
WORKER_ENV = {"PREFECT_LOGGING_EXTRA_LOGGERS": "flows,tasks,editing,validation,infra"}


def deploy_to_server(source: Path, cron: str = "0 2 * * *", editor: str | None = None) -> dict[str, str]:
    """Create (or update: idempotent) the two process work pools and the two deployments that
    prefect.yaml describes, with the code at `source` (a directory every worker can read). Returns
    deployment name -> id. Workers: `prefect worker start --pool default` (with
    KUS_EDIT_DEPLOYMENT=edit-model/gpu) and `prefect worker start --pool gpu` on GPU machines."""
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        for pool in (REFRESH_POOL, GPU_POOL):
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:
                pass
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    refresh = Flow.from_source(source=str(source), entrypoint="flows/refresh.py:catalogue_refresh")
    edit = Flow.from_source(source=str(source), entrypoint="flows/edit.py:edit_model")
    ids = {
        f"catalogue-refresh/{NIGHTLY}": refresh.deploy(
            name=NIGHTLY, work_pool_name=REFRESH_POOL, cron=cron, parameters={"editor": editor} if editor else {},
            concurrency_limit=one_at_a_time, job_variables={"env": WORKER_ENV}, print_next_steps=False,
            description="Nightly catalogue refresh; ends awaiting approval (approve with `kus approve`)."),
        f"edit-model/{EDIT_ON_GPU}": edit.deploy(
            name=EDIT_ON_GPU, work_pool_name=GPU_POOL, job_variables={"env": WORKER_ENV}, print_next_steps=False,
            description="The edit step (compute delta + evaluate), run by workers on GPU machines."),
    }
    return {name: str(value) for name, value in ids.items()}
