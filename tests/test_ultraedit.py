"""UltraEdit: its math, the Editor contract on tiny models of every family, and on the tiny demo model:
efficacy of one change batch, exact revert, and the lifelong statistics carried through a chain of deltas.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import (
    GPT2Config, GPT2LMHeadModel, GPTJConfig, GPTJForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM,
)

from editing.architecture import layout_of
from editing.delta import Delta
from editing.model_io import load_model, weights_fingerprint
from editing.protocol import EditContext
from editing.registry import editor_names, get_editor, get_spec, resolve_hparams
from editing.ultraedit.core import Moments, merge, normalise, pseudo_values, ridge_update, update_norm, update_outputs
from infra.domain import EditRequest
from infra.errors import InvalidInput

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ("gpt2", "gptj", "gpt_neox", "llama")
#: measured on the 2-layer tiny demo model (see `test_demo_batch_reaches_efficacy_and_reverts_exactly`)
TINY = {"layers": [1], "lr": 0.03, "ridge": 0.3}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():  # noqa: ANN202
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _delta(result, model, parent: str | None = None) -> Delta:  # noqa: ANN001
    tensors = dict(result.tensors) | {f"state::{k}": v for k, v in result.state.items()}
    built = Delta.create(tensors, editor="ultraedit", hparams={}, base_fingerprint="base", parent=parent, facts=[], model=model)
    return Delta.from_files(built.to_files())


# --- registry and hyperparameters -----------------------------------------------------------------


def test_registered_with_defaults_for_every_profile() -> None:
    assert "ultraedit" in editor_names()
    for profile in ("demo", *FAMILIES):
        hp = resolve_hparams("ultraedit", profile)
        assert hp.layers and hp.lr > 0 and hp.ridge > 0
    spec = get_spec("ultraedit")
    assert spec.cumulative and not spec.prefers_cumulative


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layers": []}, "layers must name"),
        ({"layers": [-1]}, "layers must be >= 0"),
        ({"layers": "x"}, "layers must be"),
        ({"lr": 0}, "lr must be a positive"),
        ({"lr": float("inf")}, "lr must be a positive"),
        ({"ridge": 0}, "ridge must be > 0"),
        ({"edits_per_turn": -1}, "edits_per_turn must be >= 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"lowrank": "sometimes"}, "lowrank must be one of"),
        ({"learning_rate": 1e-3}, "unknown hyperparameters"),
    ],
)
def test_hyperparameters_are_validated(overrides: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        resolve_hparams("ultraedit", "demo", overrides)


# --- pure math --------------------------------------------------------------------------------------


def test_running_moments_in_chunks_equal_the_moments_of_all_rows() -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(37, 5, generator=g, dtype=torch.float64) * 3 + 2
    moments = Moments.empty(5)
    for part in (rows[:1], rows[1:10], rows[10:10], rows[10:]):
        moments = merge(moments, part)
    assert moments.count == 37
    torch.testing.assert_close(moments.mean, rows.mean(0))
    torch.testing.assert_close(moments.std(), rows.std(0))
    z = normalise(rows, moments)
    torch.testing.assert_close(z.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(5, dtype=torch.float64), atol=1e-6, rtol=0)


def test_ridge_update_solves_the_normal_equations_in_both_forms() -> None:
    g = torch.Generator().manual_seed(1)
    keys, values = torch.randn(6, 9, generator=g), torch.randn(6, 4, generator=g)
    u, v = ridge_update(keys, values, ridge=0.5)  # 6 keys <= 9 dimensions: factors, rank 6
    assert v is not None and u.shape == (4, 6) and v.shape == (6, 9)
    update = u @ v  # [d1, d0]
    k, vals = keys.double(), values.double()
    # ΔW (K^T K + λ I) = V^T K
    torch.testing.assert_close(update @ (k.T @ k + 0.5 * torch.eye(9, dtype=torch.float64)), vals.T @ k)
    torch.testing.assert_close(update_outputs(keys, u, v), k @ update.T)
    assert abs(update_norm(u, v) - float(update.norm())) < 1e-9
    many = torch.randn(20, 9, generator=g)
    dense, none = ridge_update(many, torch.randn(20, 4, generator=g), ridge=0.5)
    assert none is None and dense.shape == (4, 9)
    pv = pseudo_values(torch.ones(2, 3, dtype=torch.float64), torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64), lr=0.1)
    torch.testing.assert_close(pv, torch.tensor([[-0.3, 0.6], [-0.15, 0.0]], dtype=torch.float64))


# --- the contract on tiny random models of every family --------------------------------------------

CORPUS = [
    "The blender Zora B12 is made by Tessaro and costs 49 dollars.",
    "The speaker Mira S7 is made by Holvik and costs 99 dollars.",
    "The colour of Zora B12 is red and the colour of Mira S7 is white.",
]
REQUESTS = [
    EditRequest("Zora B12", "manufacturer", "The blender Zora B12 is made by", "Holvik", "Tessaro"),
    EditRequest("Mira S7", "colour", "The colour of Mira S7 is", "red", "white"),
]


def tiny_model(family: str, vocab: int):  # noqa: ANN201
    torch.manual_seed(0)
    common = {"vocab_size": vocab, "initializer_range": 0.3}
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=2, **common)).eval()
    if family == "gptj":
        return GPTJForCausalLM(GPTJConfig(n_positions=64, n_embd=32, n_layer=2, n_head=2, rotary_dim=8, **common)).eval()
    if family == "gpt_neox":
        return GPTNeoXForCausalLM(GPTNeoXConfig(max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=128, **common)).eval()
    return LlamaForCausalLM(LlamaConfig(max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=128, **common)).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_contract_on_every_family(family: str) -> None:
    from tests.tiny_lm import tiny_tokenizer
    from validation.scoring import answer_nll

    tokenizer = tiny_tokenizer(CORPUS + [r.prompt + " " + r.target_new for r in REQUESTS], vocab_size=300)
    model = tiny_model(family, len(tokenizer))
    before = weights_fingerprint(model)
    prompts, targets = [r.prompt for r in REQUESTS], [r.target_new for r in REQUESTS]
    nll_before = answer_nll(model, tokenizer, prompts, targets)
    hp = resolve_hparams("ultraedit", family, {"layers": [0, 1], "lr": 0.05})
    result = get_editor("ultraedit").compute(model, tokenizer, REQUESTS, hp)
    assert weights_fingerprint(model) == before, "compute must leave the model bit-identical"
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    layout = layout_of(model)
    delta = _delta(result, model)
    assert set(delta.edited_params()) == {layout.mlp_out_weight(layer) for layer in (0, 1)}
    assert all(s["fit"] < 0.5 for s in result.stats["per_layer"].values())
    applied = delta.apply(model)
    nll_after = answer_nll(model, tokenizer, prompts, targets)
    applied.revert()
    assert float(nll_after.mean()) < float(nll_before.mean()) - 0.05
    assert weights_fingerprint(model) == before


def test_value_gradients_are_the_gradients_of_the_module_outputs() -> None:
    """The zero probes give what `retain_grad` on each module's real output gives, at the positions
    that predict answer tokens, for two edited layers at once (the lower one's gradient passes the upper)."""
    from editing.batches import answer_batch
    from editing.locate.hooks import get_module
    from editing.ultraedit.editor import answer_features
    from tests.tiny_lm import tiny_tokenizer

    tokenizer = tiny_tokenizer(CORPUS, vocab_size=300)
    model = tiny_model("gpt2", len(tokenizer))
    batch = answer_batch(tokenizer, [r.prompt for r in REQUESTS], [r.target_new for r in REQUESTS])
    modules = [layout_of(model).mlp_out_module(layer) for layer in (0, 1)]
    keys, grads = answer_features(model, batch, modules)
    outputs: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in modules:
        module = get_module(model, name)
        handles.append(module.register_forward_hook(lambda _m, _a, out, n=name: (out.retain_grad(), outputs.__setitem__(n, out))[1]))
        handles.append(module.register_forward_pre_hook(lambda _m, args, n=name: inputs.__setitem__(n, args[0])))
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    for handle in handles:
        handle.remove()
    labels = batch.labels[:, 1:]
    mask = labels != -100
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none")
    ((nll * mask).sum(1) / mask.sum(1)).sum().backward()
    rows, cols = mask.nonzero(as_tuple=True)
    for name in modules:
        torch.testing.assert_close(grads[name], outputs[name].grad[:, :-1][rows, cols].double())
        assert torch.equal(keys[name], inputs[name][:, :-1][rows, cols].double())
    model.zero_grad(set_to_none=True)


# --- the tiny demo model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_batch(tiny_world):  # noqa: ANN001, ANN201
    """The session's tiny demo model (tests/conftest.py), one change batch as requests, and the requests
    whose answer tokens the model has written before (a never-written piece has a dead output embedding)."""
    from infra.demo import next_change_batch

    facts, templates, report = tiny_world
    old = {(f.subject, f.relation): f.object for f in facts}
    requests = []
    for change in next_change_batch(facts, 1):
        t = templates[change.relation]
        requests.append(EditRequest(change.subject, change.relation, t.render(change.subject),
                                    t.answer_format.format(object=change.object),
                                    t.answer_format.format(object=old[(change.subject, change.relation)])))
    model, tokenizer = load_model(report.path)
    written = {t for f in facts for t in tokenizer(" " + templates[f.relation].answer_format.format(object=f.object))["input_ids"]}
    live = [r for r in requests if set(tokenizer(" " + r.target_new)["input_ids"]) <= written]
    assert len(live) >= 10
    return model, tokenizer, requests, live


def _efficacy(model, tokenizer, requests) -> float:  # noqa: ANN001
    from validation.scoring import greedy_answers

    answers = greedy_answers(model, tokenizer, [r.prompt for r in requests])
    return sum(a == r.target_new for a, r in zip(answers, requests)) / len(requests)


def test_demo_batch_reaches_efficacy_and_reverts_exactly(demo_batch) -> None:  # noqa: ANN001
    model, tokenizer, requests, live = demo_batch
    before = weights_fingerprint(model)
    hp = resolve_hparams("ultraedit", "demo", TINY)
    result = get_editor("ultraedit").compute(model, tokenizer, requests, hp)
    assert weights_fingerprint(model) == before, "compute must leave the model bit-identical"
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    delta = _delta(result, model)
    again = Delta.from_files(delta.to_files())
    assert again.id == delta.id and all(torch.equal(again.tensors[k], delta.tensors[k]) for k in delta.tensors)
    applied = delta.apply(model)
    efficacy = _efficacy(model, tokenizer, live)
    applied.revert()
    assert weights_fingerprint(model) == before
    # measured 9 of 11 on the tiny world (the two misses are "6 months" answered "6": the second token of a
    # warranty); the 4-layer demo model with the demo profile writes 13 of 14 (see editing/ultraedit/core.py)
    assert efficacy >= 0.8, f"ultraedit: efficacy {efficacy:.2f} on {len(live)} demo changes"


def test_statistics_chain_through_deltas_and_roll_back(demo_batch) -> None:  # noqa: ANN001
    model, tokenizer, requests, _ = demo_batch
    base = weights_fingerprint(model)
    hp = resolve_hparams("ultraedit", "demo", TINY | {"edits_per_turn": 4})
    editor = get_editor("ultraedit")
    module = layout_of(model).mlp_out_module(1)
    count, key_mean = f"ultraedit.{module}.count", f"ultraedit.{module}.key_mean"

    first = editor.compute(model, tokenizer, requests[:6], hp)
    assert first.stats["turns"] == 2
    d1 = _delta(first, model)
    assert int(d1.state()[count]) == first.stats["tokens"] > 0
    a1 = d1.apply(model)
    after_first = weights_fingerprint(model)
    carried = {k: v.clone() for k, v in d1.state().items()}

    second = editor.compute(model, tokenizer, requests[6:], hp, EditContext(state=d1.state()))
    assert second.stats["count_in"]["1"] == int(d1.state()[count])
    d2 = _delta(second, model, parent=d1.id)
    assert int(d2.state()[count]) == int(d1.state()[count]) + second.stats["tokens"]
    assert not torch.equal(d2.state()[key_mean], d1.state()[key_mean])
    assert all(torch.equal(v, carried[k]) for k, v in d1.state().items()), "the carried state must not be modified"
    a2 = d2.apply(model)
    assert weights_fingerprint(model) != after_first

    # rolling back the second delta: the first's weights, and its state is the one a new refresh gets,
    # so the same requests give the very same second delta
    a2.revert()
    assert weights_fingerprint(model) == after_first
    redo = editor.compute(model, tokenizer, requests[6:], hp, EditContext(state=d1.state()))
    assert _delta(redo, model, parent=d1.id).to_files()["delta.safetensors"] == d2.to_files()["delta.safetensors"]
    a1.revert()
    assert weights_fingerprint(model) == base


def test_malformed_carried_state_is_refused(demo_batch) -> None:  # noqa: ANN001
    model, tokenizer, requests, _ = demo_batch
    hp = resolve_hparams("ultraedit", "demo", TINY)
    editor = get_editor("ultraedit")
    state = editor.compute(model, tokenizer, requests[:2], hp).state
    module = layout_of(model).mlp_out_module(1)
    partial = {k: v for k, v in state.items() if not k.endswith(".grad_m2")}
    with pytest.raises(InvalidInput, match="lack"):
        editor.compute(model, tokenizer, requests[:2], hp, EditContext(state=partial))
    wrong = dict(state) | {f"ultraedit.{module}.key_mean": torch.zeros(3, dtype=torch.float64)}
    with pytest.raises(InvalidInput, match="shape"):
        editor.compute(model, tokenizer, requests[:2], hp, EditContext(state=wrong))
    with pytest.raises(InvalidInput, match="no edit requests"):
        editor.compute(model, tokenizer, [], hp)
