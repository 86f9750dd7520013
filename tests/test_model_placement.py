"""Loading a user's model with a device map and a dtype (KUS_DEVICE_MAP, KUS_TORCH_DTYPE): the same
base (fingerprint, answers), an edit computed on the placed model, a delta from a plain load that
applies to a placed one and reverts bit for bit (the delta format does not depend on placement), and
placements that cannot be edited refused with a reason. On CPU here; sharding over GPUs is the same
code path with more devices."""

from __future__ import annotations

import pytest
import torch

from editing.delta import Delta
from editing.model_io import load_model, weights_fingerprint
from editing.registry import get_editor, resolve_hparams
from infra.domain import EditRequest
from infra.errors import InvalidInput
from infra.settings import Settings


@pytest.mark.parametrize("value", ["auto", "balanced", "sequential", "cpu", "cuda:1", "0",
                                   '{"transformer": 0, "lm_head": "cpu"}'])
def test_device_maps_a_user_may_set_are_accepted(value: str) -> None:
    assert Settings.load(env={"KUS_DEVICE_MAP": value}).device_map == value


@pytest.mark.parametrize("value", ["everywhere", '{"transformer": "disk"}', "{}", "[0, 1]", '{"lm_head": "gpu"}'])
def test_device_maps_that_cannot_be_edited_or_parsed_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="device_map must be"):
        Settings.load(env={"KUS_DEVICE_MAP": value})


def test_torch_dtype_is_checked() -> None:
    assert Settings.load(env={"KUS_TORCH_DTYPE": "bfloat16"}).torch_dtype == "bfloat16"
    with pytest.raises(InvalidInput, match="torch_dtype must be one of"):
        Settings.load(env={"KUS_TORCH_DTYPE": "int8"})


def _requests(facts, templates, tokenizer) -> list[EditRequest]:  # noqa: ANN001
    """One demo change batch, kept to answers whose tokens the tiny model has written before."""
    from infra.demo import next_change_batch

    old = {(f.subject, f.relation): f.object for f in facts}
    written = {t for f in facts for t in tokenizer(" " + templates[f.relation].answer_format.format(object=f.object))["input_ids"]}
    requests = []
    for change in next_change_batch(facts, 1):
        t = templates[change.relation]
        request = EditRequest(change.subject, change.relation, t.render(change.subject),
                              t.answer_format.format(object=change.object),
                              t.answer_format.format(object=old[(change.subject, change.relation)]))
        if set(tokenizer(" " + request.target_new)["input_ids"]) <= written:
            requests.append(request)
    return requests


def test_a_placed_model_is_the_same_base_and_takes_the_same_deltas(tiny_world) -> None:  # noqa: ANN001
    from validation.scoring import greedy_answers

    facts, templates, report = tiny_world
    plain, tokenizer = load_model(report.path)
    placed, _ = load_model(report.path, device_map="auto", dtype="float32")
    assert {p.device.type for p in placed.parameters()} == {"cpu"}  # one device here: nothing to dispatch
    assert weights_fingerprint(placed) == weights_fingerprint(plain)
    prompts = [templates[f.relation].render(f.subject) for f in facts[:12]]
    assert greedy_answers(placed, tokenizer, prompts) == greedy_answers(plain, tokenizer, prompts)

    requests = _requests(facts, templates, tokenizer)
    hp = resolve_hparams("ultraedit", "demo", {"layers": [1], "lr": 0.03, "ridge": 0.3})  # tests/test_ultraedit.py
    before = weights_fingerprint(placed)
    result = get_editor("ultraedit").compute(placed, tokenizer, requests, hp)  # computed on the placed model
    assert weights_fingerprint(placed) == before
    delta = Delta.from_files(Delta.create(dict(result.tensors), editor="ultraedit", hparams={}, base_fingerprint=before,
                                          parent=None, facts=[], model=placed).to_files())
    applied_plain = delta.apply(plain)  # verify: the plain model ends at the weights the placed one recorded
    applied_placed = delta.apply(placed)
    assert weights_fingerprint(plain) == weights_fingerprint(placed) != before
    answers = greedy_answers(placed, tokenizer, [r.prompt for r in requests])
    assert sum(a == r.target_new for a, r in zip(answers, requests)) >= 0.7 * len(requests), answers
    applied_placed.revert()
    applied_plain.revert()
    assert weights_fingerprint(placed) == before == weights_fingerprint(plain)


def test_another_dtype_is_another_base(tiny_world) -> None:  # noqa: ANN001
    _facts, _templates, report = tiny_world
    plain, _ = load_model(report.path)
    half, _ = load_model(report.path, dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16
    assert weights_fingerprint(half) != weights_fingerprint(plain)


def test_a_placement_that_offloads_weights_is_refused(tiny_world, tmp_path) -> None:  # noqa: ANN001
    _facts, _templates, report = tiny_world
    model, _ = load_model(report.path)
    names = sorted({name.split(".")[0] for name, _ in model.named_children()})
    first = next(n for n, _ in model.named_children())
    mapping = {n: "cpu" for n in names} | {first: "disk"}
    import json

    with pytest.raises(InvalidInput, match="editing needs every weight"):
        load_model(report.path, device_map=json.dumps(mapping))
