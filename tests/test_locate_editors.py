"""ROME, MEMIT, AlphaEdit and PRUNE on tiny models of every supported family, plus the demo model.

One contract matrix (editor x family) on random-weight models built from configs, then the
properties that matter for the service: statistics cached once, carried state chained and rolled
back with the deltas, AlphaEdit's null space really protecting preserved keys, PRUNE's restraint,
and efficacy on the (tiny) demo model.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from transformers import (
    GPT2Config, GPT2LMHeadModel, GPTJConfig, GPTJForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM,
)

from editing.architecture import layout_of
from editing.delta import Delta
from editing.locate.hooks import capture
from editing.model_io import weights_fingerprint
from editing.protocol import EditContext, MemoryBlobCache
from editing.registry import editor_names, get_editor, resolve_hparams
from infra.domain import EditRequest
from infra.errors import InvalidInput
from tests.tiny_lm import tiny_tokenizer
from validation.scoring import answer_nll

LOCATE = ("rome", "memit", "alphaedit", "prune")
FAMILIES = ("gpt2", "gptj", "gpt_neox", "llama")

CORPUS = [
    "The kettle from Holvik is sold in Japan for a fair price.",
    "A silver lamp suits almost any room in the house.",
    "Shoppers compare warranty terms before they buy a new toaster.",
    "Factories in Poland ship a steady supply of kitchen goods.",
    "The blender Zora B12 is made by Tessaro and costs 49 dollars.",
    "The speaker Mira S7 is made by Holvik and costs 99 dollars.",
    "Returns of a vacuum are accepted within thirty days.",
    "The colour of Zora B12 is red and the colour of Mira S7 is white.",
]
REQUESTS = [
    EditRequest("Zora B12", "manufacturer", "The blender Zora B12 is made by", "Holvik", "Tessaro"),
    EditRequest("Mira S7", "colour", "The colour of Mira S7 is", "red", "white"),
]
#: random weights with a larger spread than the default 0.02, so a tiny model has peaked outputs to edit
INIT = 0.3
#: reach_nll: random models never bring a target's NLL near 0 in 15 steps; these tests check the
#: update's math, so every request is written (what is unreached is tested on its own)
SMALL = {"v_steps": 15, "v_lr": 1.0, "clamp_norm_factor": 4.0, "context_templates": [], "mom2_n_samples": 100,
         "reach_nll": 1e6}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(CORPUS + [r.prompt + " " + r.target_new for r in REQUESTS], vocab_size=300)


def tiny_model(family: str, vocab: int, seed: int = 0, layers: int = 3):
    torch.manual_seed(seed)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=layers, n_head=2, initializer_range=INIT))
    elif family == "gptj":
        model = GPTJForCausalLM(GPTJConfig(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=layers, n_head=2, rotary_dim=8, initializer_range=INIT))
    elif family == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=vocab, max_position_embeddings=64, hidden_size=32,
                                                 num_hidden_layers=layers, num_attention_heads=2, intermediate_size=128, initializer_range=INIT))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, max_position_embeddings=64, hidden_size=32,
                                             num_hidden_layers=layers, num_attention_heads=2, intermediate_size=128, initializer_range=INIT))
    model.eval()
    return model


#: random models have few preserved directions worth the name: a small λ and a wide null space
PER_EDITOR = {
    "memit": {"mom2_update_weight": 1.0},
    "alphaedit": {"nullspace_threshold": 0.02, "nullspace_relative": True, "l2": 1.0},
    "rome": {},
}


def overrides(editor: str, layers=(0, 1), base: str = "memit", **extra):
    if editor == "prune":
        return {"base": base, "base_overrides": dict(SMALL) | PER_EDITOR[base] | {"layers": list(layers)} | extra}
    values = dict(SMALL) | PER_EDITOR[editor] | extra
    if editor == "rome":
        return values | {"layer": layers[0]}
    return values | {"layers": list(layers)}


def build_delta(editor: str, model, result, parent=None) -> Delta:
    tensors = dict(result.tensors) | {f"state::{k}": v for k, v in result.state.items()}
    return Delta.create(tensors, editor=editor, hparams={}, base_fingerprint="base", parent=parent, facts=[], model=model)


def test_registry_lists_the_locate_editors_with_defaults_for_every_family():
    assert set(LOCATE) <= set(editor_names())
    for editor in LOCATE:
        for family in FAMILIES:
            resolve_hparams(editor, family)
    with pytest.raises(InvalidInput, match="fact_token"):
        resolve_hparams("memit", "demo", {"fact_token": "middle"})
    with pytest.raises(InvalidInput, match="l2"):
        resolve_hparams("alphaedit", "llama", {"l2": 0})
    with pytest.raises(InvalidInput, match="base"):
        resolve_hparams("prune", "demo", {"base": "ft"})
    with pytest.raises(InvalidInput, match="unknown"):
        resolve_hparams("rome", "demo", {"layers": [1]})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("editor", LOCATE)
def test_contract_model_unchanged_edit_applies_and_reverts_exactly(editor: str, family: str, tokenizer):
    model = tiny_model(family, len(tokenizer))
    # AlphaEdit's projection and PRUNE's restraint are checked on one layer; MEMIT and ROME spread over two
    hp = resolve_hparams(editor, family, overrides(editor, layers=(0, 1) if editor in ("memit", "rome") else (1,)))
    before = weights_fingerprint(model)
    prompts, targets = [r.prompt for r in REQUESTS], [r.target_new for r in REQUESTS]
    nll_before = answer_nll(model, tokenizer, prompts, targets)
    result = get_editor(editor).compute(model, tokenizer, REQUESTS, hp, EditContext(corpus=tuple(CORPUS)))
    assert weights_fingerprint(model) == before, "compute must leave the model bit-identical"
    delta = build_delta(editor, model, result)
    layout = layout_of(model)
    assert set(delta.edited_params()) <= {layout.mlp_out_weight(layer) for layer in (0, 1)}
    applied = delta.apply(model)
    nll_after = answer_nll(model, tokenizer, prompts, targets)
    assert float(nll_after.mean()) < float(nll_before.mean()) - 0.02
    applied.revert()
    assert weights_fingerprint(model) == before


def test_rome_and_memit_store_low_rank_factors(tokenizer):
    model = tiny_model("llama", len(tokenizer))
    for editor in ("rome", "memit"):
        result = get_editor(editor).compute(model, tokenizer, REQUESTS, resolve_hparams(editor, "llama", overrides(editor)),
                                            EditContext(corpus=tuple(CORPUS)))
        parts = {k.split("::")[1] for k in result.tensors}
        assert parts == {"u", "v"}
        assert result.stats["stored_bytes"] == sum(t.numel() * 4 for t in result.tensors.values())
        u = next(t for k, t in result.tensors.items() if k.endswith("::u"))
        assert u.shape[1] == len(REQUESTS)  # rank = number of facts


def test_statistics_are_computed_once_and_reused_from_the_cache(tokenizer):
    model = tiny_model("gpt2", len(tokenizer))
    cache = MemoryBlobCache()
    hp = resolve_hparams("memit", "demo", overrides("memit"))
    context = EditContext(corpus=tuple(CORPUS), cache=cache, model_fingerprint="f" * 64)
    first = get_editor("memit").compute(model, tokenizer, REQUESTS, hp, context)
    assert len(cache.blobs) == 2 and all(k.startswith("locate-stats/v1/" + "f" * 64) for k in cache.blobs)
    assert not any(s["cached"] for s in first.stats["statistics"].values())
    second = get_editor("memit").compute(model, tokenizer, REQUESTS, hp, context)
    assert all(s["cached"] for s in second.stats["statistics"].values())
    for name in first.tensors:
        assert torch.equal(first.tensors[name], second.tensors[name])
    # AlphaEdit on the same layers reuses the very same statistics
    ae_hp = resolve_hparams("alphaedit", "demo", overrides("alphaedit"))
    ae = get_editor("alphaedit").compute(model, tokenizer, REQUESTS, ae_hp, context)
    assert all(s["cached"] for s in ae.stats["statistics"].values())
    # ...and stores its null-space projectors beside them, to be read, not recomputed, next time
    assert len(cache.blobs) == 4 and not any(ae.stats["projector_cached"].values())
    ae_again = get_editor("alphaedit").compute(model, tokenizer, REQUESTS, ae_hp, context)
    assert all(ae_again.stats["projector_cached"].values()) and len(cache.blobs) == 4
    for name in ae.tensors:
        assert torch.equal(ae.tensors[name], ae_again.tensors[name])


@pytest.mark.parametrize("editor", ["alphaedit", "prune"])
def test_sequential_state_chains_across_refreshes_and_rolls_back(editor: str, tokenizer):
    model = tiny_model("gpt2", len(tokenizer))
    base = weights_fingerprint(model)
    hp = resolve_hparams(editor, "demo", overrides(editor, base="alphaedit"))
    ed = get_editor(editor)
    r1 = ed.compute(model, tokenizer, REQUESTS[:1], hp, EditContext(corpus=tuple(CORPUS)))
    d1 = build_delta(editor, model, r1)
    a1 = d1.apply(model)
    after_first = weights_fingerprint(model)
    r2 = ed.compute(model, tokenizer, REQUESTS[1:], hp, EditContext(corpus=tuple(CORPUS), state=d1.state()))
    d2 = build_delta(editor, model, r2, parent=d1.id)
    f1, f2 = d1.state()["alphaedit.keys.0"].double(), d2.state()["alphaedit.keys.0"].double()
    kkt1, kkt2 = f1 @ f1.T, f2 @ f2.T
    assert float(torch.linalg.eigvalsh((kkt2 - kkt1).double()).min()) > -1e-3  # keys only accumulate
    assert float((kkt2 - kkt1).abs().max()) > 0
    if editor == "prune":
        raw = [k for k in d2.state() if k.startswith("prune.raw.")]
        assert raw and not torch.equal(d2.state()[raw[0]], d1.state()[raw[0]])
    a2 = d2.apply(model)
    # rollback of the second refresh: weights and carried state are those of the first
    a2.revert()
    assert weights_fingerprint(model) == after_first
    again = ed.compute(model, tokenizer, REQUESTS[1:], hp, EditContext(corpus=tuple(CORPUS), state=d1.state()))
    assert build_delta(editor, model, again, parent=d1.id).to_files()["delta.safetensors"] == d2.to_files()["delta.safetensors"]
    a1.revert()
    assert weights_fingerprint(model) == base


def test_alphaedit_leaves_outputs_for_preserved_keys_unchanged(tokenizer):
    """With fewer corpus tokens than key dimensions, C0 has an exact null space: outputs of the
    edited projection for every corpus token must not move, while the edited prompts' outputs do."""
    model = tiny_model("gpt2", len(tokenizer))
    layout = layout_of(model)
    hp = resolve_hparams("alphaedit", "demo", overrides("alphaedit", layers=(0,), nullspace_threshold=1e-5,
                                                          nullspace_relative=True, l2=1e-2))
    texts = CORPUS[:2]  # about 30 tokens, fewer than the 128 key dimensions
    module = layout.mlp_out_module(0)
    result = get_editor("alphaedit").compute(model, tokenizer, REQUESTS, hp, EditContext(corpus=tuple(texts)))
    assert 0 < result.stats["null_space_dim"]["0"] < 128

    def outputs(prompts):
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
        with capture(model, [module], kind="output") as seen:
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return seen[module][enc["attention_mask"].bool()]

    preserved_before, edited_before = outputs(texts), outputs([r.prompt for r in REQUESTS])
    applied = build_delta("alphaedit", model, result).apply(model)
    preserved_after, edited_after = outputs(texts), outputs([r.prompt for r in REQUESTS])
    applied.revert()
    preserved_change = float((preserved_after - preserved_before).abs().max())
    edited_change = float((edited_after - edited_before).abs().max())
    assert edited_change > 1e-1
    assert preserved_change < 1e-4 * max(1.0, float(preserved_before.abs().max()))

    assert preserved_change < 1e-4 * edited_change


def test_prune_keeps_the_condition_number_bounded(tokenizer):
    model = tiny_model("gpt2", len(tokenizer))
    # a tiny λ and a large clamp make MEMIT's accumulated update outgrow σ_max(W) within a few refreshes
    hp = resolve_hparams("prune", "demo", {"base_overrides": dict(SMALL) | {"layers": [0], "mom2_update_weight": 1e-3,
                                                                              "clamp_norm_factor": 50.0, "v_lr": 5.0}})
    state: dict = {}
    applied = []
    for i in range(3):
        reqs = [dataclasses.replace(r, target_new=t) for r, t in zip(REQUESTS, [("Tessaro", "white"), ("Quillon", "navy"), ("Holvik", "red")][i])]
        result = get_editor("prune").compute(model, tokenizer, reqs, hp, EditContext(corpus=tuple(CORPUS[:4]), state=state))
        delta = build_delta("prune", model, result)
        applied.append(delta.apply(model))
        state = delta.state()
    stats = next(iter(result.stats["per_param"].values()))
    assert stats["sigma1_raw"] > stats["sigma_max_w"], "the test needs an update that outgrows W"
    assert stats["shrunk"] >= 1
    bound = stats["sigma_max_w"] + math.log(stats["sigma1_raw"] / stats["sigma_max_w"]) / math.log(hp.alpha)
    assert stats["sigma1_served"] <= bound * (1 + 1e-6)
    assert stats["cond_served"] < stats["cond_raw"]
    for a in reversed(applied):
        a.revert()


# ------------------------------------------------------------------------------------ demo model


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    from infra.demo import generate_catalogue, load_demo_templates
    from infra.demo.model_builder import DemoModelConfig, ensure_demo_model
    from editing.model_io import load_model

    facts = generate_catalogue(n_products=30)
    templates = load_demo_templates()
    config = dataclasses.replace(DemoModelConfig.tiny(), num_threads=1)
    report = ensure_demo_model(tmp_path_factory.mktemp("demo") / "model", facts, templates, config, progress=False)
    model, tokenizer = load_model(Path(report.path))
    return model, tokenizer, facts, templates


def _demo_requests(facts, templates, n: int, seed: int = 0):
    import random

    rng = random.Random(seed)
    objects: dict[str, set[str]] = {}
    for f in facts:
        objects.setdefault(f.relation, set()).add(f.object)
    out = []
    # prices ("$549" = " $", "5", "49") are left out: in the 2-layer tiny model the digits after " $" are predicted
    # from positions the edited key never reaches (only one attention layer follows layer 0); the bench measures them
    for f in rng.sample([f for f in facts if f.relation != "price"], n):
        new = rng.choice(sorted(objects[f.relation] - {f.object}))
        t = templates[f.relation]
        out.append(EditRequest(f.subject, f.relation, t.render(f.subject), new, f.object, t.render_paraphrases(f.subject)))
    return out


@pytest.mark.parametrize("editor", ["memit", "alphaedit"])
def test_demo_model_edit_batch_reaches_90_percent_efficacy(editor: str, demo_model):
    """The gpt2 defaults (tuned on the 4-layer demo model) on the 2-layer tiny demo: edit layer 0 only."""
    model, tokenizer, facts, templates = demo_model
    requests = _demo_requests(facts, templates, 10)
    edited = {(r.subject, r.relation) for r in requests}
    corpus = tuple(f"{templates[f.relation].render(f.subject)} {f.object}" for f in facts if (f.subject, f.relation) not in edited)
    hp = resolve_hparams(editor, "demo", {"layers": [0]} | ({"l2": 0.1} if editor == "alphaedit" else {}))
    before = weights_fingerprint(model)
    result = get_editor(editor).compute(model, tokenizer, requests, hp, EditContext(corpus=corpus))
    assert weights_fingerprint(model) == before
    applied = build_delta(editor, model, result).apply(model)
    try:
        new = answer_nll(model, tokenizer, [r.prompt for r in requests], [r.target_new for r in requests])
        old = answer_nll(model, tokenizer, [r.prompt for r in requests], [r.target_true for r in requests])
        written = [i for i in range(len(requests)) if bool(new[i] < old[i])]
    finally:
        applied.revert()
    assert weights_fingerprint(model) == before
    # measured 9/10 (MEMIT) and 8/10 (AlphaEdit) on the tiny world since its generic text names suffixed
    # companies ("... Group"); 9/10 and 10/10 before. Below 8/10 the update is broken, not the tiny model weak.
    assert len(written) * 10 >= 8 * len(requests), f"{editor}: efficacy {len(written)}/{len(requests)} on the demo model"


def test_batched_target_vectors_match_the_one_request_at_a_time_loop(demo_model):
    """Each request's δ sees only its own rows, so optimising the batch at once (requests leaving the
    batch as they reach the stopping NLL) must give what the reference loop gives, request by request."""
    from editing.locate.settings import target_settings
    from editing.locate.target_vectors import optimise_targets

    model, tokenizer, facts, templates = demo_model
    requests = _demo_requests(facts, templates, 6, seed=3)
    hp = resolve_hparams("memit", "demo", {"layers": [0]})
    block = layout_of(model).block_module(0)
    batched = optimise_targets(model, tokenizer, requests, block, target_settings(hp))
    one_by_one = optimise_targets(model, tokenizer, requests, block, target_settings(dataclasses.replace(hp, v_group_size=1)))
    assert batched.steps > 1
    assert len(set(one_by_one.nll_last.tolist())) > 1
    torch.testing.assert_close(batched.delta, one_by_one.delta, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(batched.nll_last, one_by_one.nll_last, atol=1e-4, rtol=1e-3)
    # requests that stopped early cost fewer row passes than running every row for every step
    assert batched.row_passes == one_by_one.row_passes
    assert batched.row_passes < batched.steps * len(requests)


@pytest.mark.parametrize("editor", ["memit", "alphaedit"])
def test_requests_whose_target_is_never_reached_are_named_and_not_written(editor: str, tokenizer):
    """A target vector that never makes the new object likely is not solved for (it would only move
    other keys); the editor names the request and why, so the refresh can route it onwards."""
    model = tiny_model("gpt2", len(tokenizer))
    hp = resolve_hparams(editor, "demo", overrides(editor, layers=(1,), reach_nll=1e-9))
    result = get_editor(editor).compute(model, tokenizer, REQUESTS, hp, EditContext(corpus=tuple(CORPUS)))
    assert set(result.unwritten) == {0, 1}
    assert all("nll" in why.lower() for why in result.unwritten.values())
    assert not [k for k in result.tensors if not k.startswith("state::")]


@pytest.mark.parametrize("family", FAMILIES)
def test_target_vectors_replayed_above_the_shift_match_the_whole_model(family: str, tokenizer, monkeypatch):
    """The blocks below the shifted one give the same hidden states in every step, so replaying
    their cached output (and reading the LM head only at answer and fact tokens) must give the
    target vectors that running the whole model every step gives; the model is left as it was."""
    from editing.locate import target_vectors
    from editing.locate.target_vectors import TargetSettings, optimise_targets
    from editing.locate.upper_stack import UpperStack

    model = tiny_model(family, len(tokenizer))
    block = layout_of(model).block_module(1)
    assert UpperStack.for_model(model, block) is not None
    modules_before = dict(model.named_modules())
    settings = TargetSettings(steps=8, lr=0.5, weight_decay=0.5, clamp_norm_factor=4.0, kl_factor=0.0625,
                              early_stop_nll=0.05, fact_token="subject_last", batch_size=3)
    prefixes = ("", "Shoppers compare. ")
    replayed = optimise_targets(model, tokenizer, REQUESTS, block, settings, prefixes)
    assert dict(model.named_modules()) == modules_before
    monkeypatch.setattr(target_vectors, "REPLAY_BUDGET", 0)
    whole = optimise_targets(model, tokenizer, REQUESTS, block, settings, prefixes)
    assert replayed.steps == whole.steps == 8
    assert float(replayed.delta.norm()) > 0
    torch.testing.assert_close(replayed.h_init, whole.h_init, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(replayed.nll_first, whole.nll_first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(replayed.delta, whole.delta, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(replayed.nll_last, whole.nll_last, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_key_statistics_end_the_forward_at_the_last_key_and_equal_a_whole_pass(family: str, tokenizer):
    """The statistics read the inputs of the edited projections only, so the pass stops at the
    highest one; C must equal the mean of k kᵀ over every token of a whole forward pass."""
    from editing.locate.statistics import second_moments
    from infra.encoding import encode_text

    model = tiny_model(family, len(tokenizer))
    layout = layout_of(model)
    moments = second_moments(model, tokenizer, [1, 0], CORPUS, n_samples=len(CORPUS))
    ran: list[str] = []
    handles = [model.get_submodule(layout.block_module(i)).register_forward_pre_hook(lambda *_a, i=i: ran.append(i)) for i in range(3)]
    try:
        second_moments(model, tokenizer, [0], CORPUS, n_samples=2)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [0], "blocks above the one with the last key read must not start"
    for layer in (0, 1):
        keys = []
        for text in CORPUS:
            ids = torch.tensor([encode_text(tokenizer, text)])
            with capture(model, [layout.mlp_out_module(layer)], kind="input") as seen:
                model(input_ids=ids)
            keys.append(seen[layout.mlp_out_module(layer)][0].double())
        k = torch.cat(keys)
        torch.testing.assert_close(moments[layer].mom2, (k.T @ k / len(k)).float(), atol=1e-5, rtol=1e-4)
        assert moments[layer].tokens == len(k)
