"""Promotion and rollback flows: triggered by a reviewer's approval (or an operator), never by Prefect's UI."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from infra.context import service_context
from tasks.promotion import promote_run, rollback_model


@task(name="promote-delta", cache_policy=NO_CACHE)
def promote_task(run_id: int, actor: str) -> str:
    with service_context() as ctx:
        return promote_run(ctx, run_id, actor)


@flow(name="promote")
def promote(run_id: int, actor: str) -> str:
    """Move the model head to an approved run's delta; refuses without an approval of record."""
    return promote_task(run_id, actor)


@task(name="rollback-head", cache_policy=NO_CACHE)
def rollback_task(model_name: str, actor: str, reason: str, to: str | None) -> str | None:
    with service_context() as ctx:
        return rollback_model(ctx, model_name, actor, reason, to)


@flow(name="rollback")
def rollback(model_name: str, actor: str, reason: str, to: str | None = "previous") -> str | None:
    """Move the head back ('previous', 'base' or a delta id prefix) and record why."""
    return rollback_task(model_name, actor, reason, to)
