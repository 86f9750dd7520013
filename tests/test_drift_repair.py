"""Drift the service caused is repaired, and a rejected edit is not retried bit for bit.

`fact_pool` on a real tiny model: facts the live model should already say (nothing outstanding) but
does not, although the base said them, are rehearsed as repairs with their database value; facts the
base never knew and outstanding changes keep the live model's answer. `reseeded` and
`rejected_attempts`: the n-th retry on the same head draws other random numbers.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

from editing.model_io import load_model
from editing.registry import resolve_hparams
from infra import repository as repo
from infra.context import service_context
from infra.domain import Fact
from infra.settings import Settings
from tasks.edit import fact_pool, reseeded
from validation.scoring import greedy_answers

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_fact_pool_repairs_what_the_base_knew_and_keeps_the_rest(tmp_path: Path, tiny_world) -> None:  # noqa: ANN001
    facts, templates, report = tiny_world
    settings = Settings.load(home=tmp_path, base_model_path=report.path)
    model, tokenizer = load_model(report.path)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # the "live" model: earlier edits disturbed one MLP
        weight = dict(model.named_parameters())["transformer.h.0.mlp.c_proj.weight"]
        weight += 0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std()
    drifted_state = {k: v.clone() for k, v in model.state_dict().items()}

    @contextmanager
    def at_base():
        model.load_state_dict(base_state)
        try:
            yield
        finally:
            model.load_state_dict(drifted_state)

    outstanding = next(f for f in facts if f.relation == "colour")
    with service_context(settings) as ctx:
        with ctx.db.session() as session:
            repo.seed_facts(session, facts)
            repo.upsert_facts(session, [Fact(outstanding.subject, "colour", "ochre")], changed_by="erp")
        rehearsal = fact_pool(ctx, [], set(), model, tokenizer, head=None, at_base=at_base)
    prompts = {templates[f.relation].render(f.subject): f for f in facts}
    live_said = dict(zip(prompts, greedy_answers(model, tokenizer, list(prompts))))
    with at_base():
        base_said = dict(zip(prompts, greedy_answers(model, tokenizer, list(prompts))))
    db = {p: f.object for p, f in prompts.items()}
    db[templates["colour"].render(outstanding.subject)] = "ochre"

    assert rehearsal.repair, "the disturbed MLP broke no fact: the test needs drift"
    for prompt, value in rehearsal.repair:
        assert value == db[prompt] and live_said[prompt] != value and base_said[prompt] == value
    repaired = {p for p, _ in rehearsal.repair}
    expected = {p for p in prompts if live_said[p] != db[p] and base_said[p] == db[p]}
    assert repaired == expected
    for prompt, answer in rehearsal.keep:
        assert answer == live_said[prompt]  # kept answers are the live model's, right or wrong
    # the outstanding change (the chain never taught "ochre") is not a repair: it is the next edit's target
    assert templates["colour"].render(outstanding.subject) not in repaired
    assert len(rehearsal.keep) + len(rehearsal.repair) == sum(1 for p in prompts if live_said[p])


def test_a_retry_on_the_same_head_draws_another_seed_unless_the_caller_chose_one() -> None:
    steps = [("saul", resolve_hparams("saul", "demo"))]
    assert reseeded(steps, 0, None) == steps
    assert reseeded(steps, 2, None)[0][1].seed == steps[0][1].seed + 2
    assert reseeded(steps, 2, {"seed": 7}) == steps
    two = [("saul", resolve_hparams("saul", "demo")), ("lora", resolve_hparams("lora", "demo"))]
    again = reseeded(two, 1, {"saul": {"seed": 5}})
    assert again[0][1].seed == two[0][1].seed and again[1][1].seed == two[1][1].seed + 1


def test_rejected_attempts_count_rejected_runs_on_the_same_head(db) -> None:  # noqa: ANN001
    def run_with_delta(session, sha: str, parent: str | None, final: str) -> None:  # noqa: ANN001
        run = repo.create_run(session, "m", "saul", "bot", 0, 0)
        repo.add_delta(session, repo.DeltaRecord(sha256=sha, parent_sha=parent, model_name="m", editor="saul",
                                                 uri=f"mem://{sha}", size_bytes=1, manifest={},
                                                 created_at=datetime.now(timezone.utc)))
        repo.update_run(session, run.id, status="edited", delta_sha=sha)
        for status in ("validated", "awaiting_approval", final):
            repo.update_run(session, run.id, status=status)

    with db.session() as session:
        assert repo.rejected_attempts(session, "m", None) == 0
        run_with_delta(session, "a" * 64, None, "rejected")
        run_with_delta(session, "b" * 64, None, "rejected")
        run_with_delta(session, "c" * 64, None, "promoted")
        run_with_delta(session, "d" * 64, "c" * 64, "rejected")
        assert repo.rejected_attempts(session, "m", None) == 2
        assert repo.rejected_attempts(session, "m", "c" * 64) == 1
        assert repo.rejected_attempts(session, "other", None) == 0
