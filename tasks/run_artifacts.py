"""Small JSON artefacts of a run (evaluation sets, results), kept in the delta store next to the deltas.

Keeping them in the store, not on a local disk, lets the edit step run on another machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from infra.context import ServiceContext
from infra.domain import EditRequest
from infra import repository as repo
from infra.errors import IntegrityMismatch, NotFound
from validation.answer_memo import AnswerMemo
from validation.sets import AgreementSet, RegressionSet


def artifact_key(run_id: int, name: str) -> str:
    return f"runs/{run_id}/{name}"


def put_bytes(ctx: ServiceContext, run_id: int, name: str, data: bytes, session: Any = None) -> str:
    """Store the file and record its sha256 with the run (the database is the reference, not the store).
    With `session`, the sha256 is recorded in that transaction (it commits or rolls back with it)."""
    key = artifact_key(run_id, name)
    ctx.store.put_blob(key, data)
    if session is not None:
        repo.record_artifact(session, run_id, name, hashlib.sha256(data).hexdigest())
    else:
        with ctx.db.session() as own:
            repo.record_artifact(own, run_id, name, hashlib.sha256(data).hexdigest())
    return key


def get_bytes(ctx: ServiceContext, run_id: int, name: str) -> bytes:
    """The file as the run wrote it; IntegrityMismatch when the stored bytes differ from the recorded sha256."""
    with ctx.db.session() as session:
        expected = repo.artifact_sha(session, run_id, name)
    data = ctx.store.get_blob(artifact_key(run_id, name))
    if data is None:
        raise NotFound(f"run {run_id} has no artefact {name!r}")
    actual = hashlib.sha256(data).hexdigest()
    if expected is None:
        raise IntegrityMismatch(f"run {run_id}'s {name} has no recorded sha256; it was not written by the run")
    if actual != expected:
        raise IntegrityMismatch(f"run {run_id}'s {name} in the store has sha256 {actual[:12]}, the run recorded "
                                f"{expected[:12]}: it was changed after the run wrote it; refusing to use it")
    return data


def put_json(ctx: ServiceContext, run_id: int, name: str, value: Any) -> str:
    return put_bytes(ctx, run_id, name, json.dumps(value, sort_keys=True, default=str).encode())


def get_json(ctx: ServiceContext, run_id: int, name: str) -> Any:
    return json.loads(get_bytes(ctx, run_id, name))


@dataclass(frozen=True)
class RunSets:
    """Everything a run's edit and evaluation read, written once by the sets step.

    targets:    what this refresh changes in the live model (scored for efficacy)
    requests:   what the editors are asked to write: the targets (sequential mode) or every
                ledger fact, from the base model (cumulative mode)
    regression: what must not change; agreement: the catalogue facts compared with the database
    mode, plan: "sequential" | "cumulative", and the editors in the order they are tried
    head:       the promoted head the sets were built against (the delta's parent)
    """

    targets: list[EditRequest]
    requests: list[EditRequest]
    regression: RegressionSet
    agreement: AgreementSet
    mode: str
    plan: tuple[str, ...]
    head: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "targets": [asdict(t) for t in self.targets],
            "requests": [asdict(t) for t in self.requests],
            "regression": asdict(self.regression),
            "agreement": {"changed": [list(x) for x in self.agreement.changed],
                          "unchanged": [list(x) for x in self.agreement.unchanged],
                          "changed_left_out": self.agreement.changed_left_out},
            "mode": self.mode,
            "plan": list(self.plan),
            "head": self.head,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunSets":
        targets, regression = sets_from_json(data)
        agreement = data.get("agreement", {})
        return cls(
            targets=targets,
            requests=[_request(t) for t in data.get("requests", data["targets"])],
            regression=regression,
            agreement=AgreementSet(changed=tuple(tuple(x) for x in agreement.get("changed", ())),
                                   unchanged=tuple(tuple(x) for x in agreement.get("unchanged", ())),
                                   changed_left_out=int(agreement.get("changed_left_out", 0))),
            mode=str(data.get("mode", "sequential")),
            plan=tuple(data.get("plan", ())),
            head=data.get("head"),
        )


def load_sets(ctx: ServiceContext, run_id: int) -> RunSets:
    return RunSets.from_json(get_json(ctx, run_id, "sets.json"))


def _request(t: dict[str, Any]) -> EditRequest:
    return EditRequest(
        subject=t["subject"], relation=t["relation"], prompt=t["prompt"], target_new=t["target_new"],
        target_true=t.get("target_true"), paraphrases=tuple(t.get("paraphrases", ())),
        neighbours=tuple(tuple(n) for n in t.get("neighbours", ())),
    )


def sets_from_json(data: dict[str, Any]) -> tuple[list[EditRequest], RegressionSet]:
    """(targets, regression) of a sets file; files written before `RunSets` read the same way."""
    targets = [_request(t) for t in data["targets"]]
    reg = data["regression"]
    regression = RegressionSet(
        neighbourhood=tuple(tuple(x) for x in reg["neighbourhood"]),
        unrelated=tuple(tuple(x) for x in reg["unrelated"]),
        heldout_text=tuple(reg["heldout_text"]),
        generation_prompts=tuple(reg["generation_prompts"]),
    )
    return targets, regression


#: Run file: every answer the candidate (live model + the run's delta) gave during evaluation. Once the
#: delta is promoted the candidate is the live model, and the next run's "before" pass starts from it.
ANSWERS_AFTER_FILE = "answers_after.json"
#: the after-edit evaluation, one row per scored item (validation.evaluate.ROW_COLUMNS)
EVALUATION_ROWS_AFTER_FILE = "evaluation_rows_after.json"
#: the retention validation's full GX result (ExpectationSuiteValidationResult as JSON): the record
VALIDATION_RESULT_FILE = "retention_validation.json"
#: the same result as GX's Data Docs page, self-contained HTML that opens offline (validation.gx_docs)
VALIDATION_DOCS_FILE = "retention_validation.html"


def head_answers(ctx: ServiceContext, head: str | None) -> tuple[AnswerMemo, int | None]:
    """What the live model at `head` already answered, and the run that asked: the head delta's own
    run evaluated exactly these weights as its "after" (a verified run file: a changed file is
    refused, never trusted). Empty for the base model or a run that left no such file."""
    if head is None:
        return AnswerMemo(), None
    with ctx.db.session() as session:
        run_id = repo.get_delta(session, head).manifest.get("run_id")
    if run_id is None:
        return AnswerMemo(), None
    try:
        return AnswerMemo.from_bytes(get_bytes(ctx, int(run_id), ANSWERS_AFTER_FILE)), int(run_id)
    except NotFound:
        return AnswerMemo(), None
