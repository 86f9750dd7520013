"""Which task failures are worth retrying: transient connection trouble, never a refusal of ours."""

from __future__ import annotations

from typing import Any

from infra.errors import ServiceError


def retry_transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry database/network hiccups, not `ServiceError`s (they would
    fail again the same way, e.g. 'run 2 awaits approval')."""
    try:
        state.result()
    except ServiceError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return False
