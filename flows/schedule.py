"""The scheduled catalogue refresh: a Prefect deployment with a cron schedule.

`kus serve --cron "0 2 * * *"` serves it from this process (Prefect's `flow.serve`); with a Prefect
server and workers, `prefect deploy` uses prefect.yaml instead (refresh on the default pool, the
edit step on the `gpu` pool).
"""

from __future__ import annotations

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
