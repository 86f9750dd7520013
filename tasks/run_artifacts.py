"""Small JSON artefacts of a run (evaluation sets, results), kept in the delta store next to the deltas.

Keeping them in the store, not on a local disk, lets the edit step run on another machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from infra.context import ServiceContext
from infra.domain import EditRequest
from infra.errors import NotFound
from validation.sets import RegressionSet


def artifact_key(run_id: int, name: str) -> str:
    return f"runs/{run_id}/{name}"


def put_json(ctx: ServiceContext, run_id: int, name: str, value: Any) -> str:
    key = artifact_key(run_id, name)
    ctx.store.put_blob(key, json.dumps(value, sort_keys=True, default=str).encode())
    return key


def get_json(ctx: ServiceContext, run_id: int, name: str) -> Any:
    data = ctx.store.get_blob(artifact_key(run_id, name))
    if data is None:
        raise NotFound(f"run {run_id} has no artefact {name!r}")
    return json.loads(data)


def sets_to_json(targets: list[EditRequest], regression: RegressionSet) -> dict[str, Any]:
    return {"targets": [asdict(t) for t in targets], "regression": asdict(regression)}


def sets_from_json(data: dict[str, Any]) -> tuple[list[EditRequest], RegressionSet]:
    targets = [
        EditRequest(
            subject=t["subject"], relation=t["relation"], prompt=t["prompt"], target_new=t["target_new"],
            target_true=t.get("target_true"), paraphrases=tuple(t.get("paraphrases", ())),
            neighbours=tuple(tuple(n) for n in t.get("neighbours", ())),
        )
        for t in data["targets"]
    ]
    reg = data["regression"]
    regression = RegressionSet(
        neighbourhood=tuple(tuple(x) for x in reg["neighbourhood"]),
        unrelated=tuple(tuple(x) for x in reg["unrelated"]),
        heldout_text=tuple(reg["heldout_text"]),
        generation_prompts=tuple(reg["generation_prompts"]),
    )
    return targets, regression
