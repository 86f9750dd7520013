"""The scheduled catalogue refresh: a Prefect deployment with a cron schedule.

`kus serve --cron "0 2 * * *"` serves it from this process (Prefect's `flow.serve`); with a Prefect
server and workers, `prefect deploy` uses prefect.yaml instead (refresh on the default pool, the
edit step on the `gpu` pool).
"""

from __future__ import annotations

from typing import Any

from flows.refresh import catalogue_refresh

DEPLOYMENT_NAME = "nightly"


def refresh_deployment(cron: str, editor: str | None = None) -> Any:
    """The deployment object (a RunnerDeployment) for the nightly refresh."""
    return catalogue_refresh.to_deployment(
        name=DEPLOYMENT_NAME,
        cron=cron,
        parameters={"editor": editor, "started_by": "catalogue-scheduler"},
        description="Scheduled catalogue refresh: edits the model with the day's fact changes, ends awaiting approval.",
        tags=["catalogue"],
    )


def serve_refresh(cron: str, editor: str | None = None) -> None:
    from prefect import serve

    serve(refresh_deployment(cron, editor))
