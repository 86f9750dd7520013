"""The edit step as its own flow, so it can be deployed to a GPU work pool and run by workers there.

`prefect.yaml` deploys it as `edit-model/gpu`; set KUS_EDIT_DEPLOYMENT=edit-model/gpu and the
refresh flow hands the step to that pool instead of running it in process.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.logs import service_records_at_info
from tasks.edit import edit_task
from tasks.evaluate import evaluate_task


@flow(name="edit-model")
def edit_model(run_id: int, editor: str, hparams: dict[str, Any] | None = None) -> str:
    """Compute the run's delta on the live model, then score before/after; returns the delta id."""
    service_records_at_info()
    delta_id = edit_task(run_id, editor, hparams)
    evaluate_task(run_id)
    return delta_id
