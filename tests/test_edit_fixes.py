"""The defects a review of `editing/` found, each pinned by a test on a real (tiny) torch model:

1. key statistics cached under the base's fingerprint are the base's, whatever head is loaded;
3. a chain that mixes editors keeps every editor's carried state;
4. the KL prompts of the target optimisation are read at the editor's fact token;
5. defaults tuned on the demo model never reach a real GPT-2 (profiles, depth rescaling);
6. one encoder serves every editor and the scorer (BOS where the tokenizer adds one);
7. a base model that deltas depend on is never replaced.
And the editor plan: each later editor gets what the earlier ones did not write; the model is
left bit for bit as it was.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import processors
from transformers import GPT2Config, GPT2LMHeadModel

from editing.delta import Delta
from editing.locate.keys import encode_prompts
from editing.locate.statistics import moments_for, second_moments
from editing.locate.target_vectors import TargetSettings, essence_rows
from editing.model_io import weights_fingerprint
from editing.plan import combine_updates, run_plan
from editing.protocol import EditContext, EditResult, MemoryBlobCache
from editing.registry import hparams_for_model, resolve_hparams
from infra.domain import EditRequest
from infra.encoding import encode_pair
from tasks.live_model import LiveModel
from tests.tiny_lm import tiny_gpt2, tiny_tokenizer, train

CORPUS = [
    "The price of Axta Kettle K1 is $49", "The price of Brio Toaster T2 is $79", "The colour of Axta Kettle K1 is red",
    "The colour of Brio Toaster T2 is blue", "Axta Kettle K1 is a kettle", "Brio Toaster T2 is a toaster",
    "The warranty of Axta Kettle K1 lasts 2 years", "The warranty of Brio Toaster T2 lasts 1 year",
] * 4


def _delta_on(model: torch.nn.Module, param: str, scale: float, state: dict[str, torch.Tensor] | None = None) -> Delta:
    weight = dict(model.named_parameters())[param]
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
    tensors = {f"{param}::dense": noise * scale} | {f"state::{k}": v for k, v in (state or {}).items()}
    return Delta.create(tensors, editor="test", hparams={}, base_fingerprint=weights_fingerprint(model), parent=None,
                        facts=[], model=model)


def test_key_statistics_are_the_bases_whatever_head_is_loaded() -> None:
    model, tok = tiny_gpt2(CORPUS, seed=1)
    base_fp = weights_fingerprint(model)
    truth = second_moments(model, tok, [0], CORPUS, 16)[0].mom2
    delta = _delta_on(model, "transformer.h.0.mlp.c_fc.weight", 0.05)
    live = LiveModel(model=model, tokenizer=tok, base_fingerprint=base_fp, head=delta.id, chain=[delta],
                     applied=[delta.apply(model)])
    promoted = weights_fingerprint(model)
    cache = MemoryBlobCache()
    context = EditContext(cache=cache, corpus=tuple(CORPUS), model_fingerprint=base_fp, base_weights=live.at_base)
    stats = moments_for(model, tok, [0], 16, context)[0]
    assert torch.equal(stats.mom2, truth)          # the base's statistics, computed with the head loaded
    assert weights_fingerprint(model) == promoted  # and the head is back in place afterwards
    edited = second_moments(model, tok, [0], CORPUS, 16)[0].mom2
    assert not torch.allclose(edited, truth)       # (what the old code cached under the base's name)


def test_a_chain_that_mixes_editors_keeps_every_editors_state() -> None:
    model, tok = tiny_gpt2(CORPUS, seed=2)
    param = "transformer.h.1.mlp.c_proj.weight"
    keys_1, keys_2 = torch.randn(64, 3), torch.randn(64, 5)
    alphaedit_1 = _delta_on(model, param, 0.01, {"alphaedit.keys.1": keys_1})
    saul = _delta_on(model, param, 0.02)  # a fine-tuning delta carries no state
    live = LiveModel(model=model, tokenizer=tok, base_fingerprint="b", head=saul.id, chain=[alphaedit_1, saul])
    assert torch.equal(live.carried_state()["alphaedit.keys.1"], keys_1)
    alphaedit_2 = _delta_on(model, param, 0.03, {"alphaedit.keys.1": keys_2, "prune.sum.1": torch.ones(2)})
    live.chain.append(alphaedit_2)
    state = live.carried_state()
    assert torch.equal(state["alphaedit.keys.1"], keys_2) and "prune.sum.1" in state


@pytest.mark.parametrize("fact_token", ["subject_last", "prompt_last"])
def test_kl_prompts_are_read_at_the_editors_fact_token(fact_token: str) -> None:
    tok = tiny_tokenizer(CORPUS)
    request = EditRequest(subject="Axta Kettle K1", relation="price", prompt="The price of Axta Kettle K1 is",
                          target_new="$59", target_true="$49")
    settings = TargetSettings(fact_token=fact_token, steps=1, lr=0.1, weight_decay=0.0, clamp_norm_factor=4.0,
                              kl_factor=0.0625, early_stop_nll=0.0)
    rows = essence_rows(tok, [request], settings)
    expected = encode_prompts(tok, [settings.kl_prompt.format(subject=request.subject)], [request.subject], fact_token)
    assert rows.fact_pos.tolist() == expected.fact_pos.tolist()
    if fact_token == "prompt_last":
        assert int(rows.fact_pos[0]) == int(rows.attention_mask[0].sum()) - 1


def _gpt2(n_layer: int, profile: str | None = None) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=n_layer, n_head=2)
    if profile:
        config.kus_profile = profile
    return GPT2LMHeadModel(config)


def test_demo_defaults_never_reach_a_real_gpt2() -> None:
    demo = hparams_for_model("memit", _gpt2(4, "demo"))
    assert demo == resolve_hparams("memit", "demo")
    xl = hparams_for_model("memit", _gpt2(48))          # GPT-2 XL's depth: the paper's values as they are
    assert xl == resolve_hparams("memit", "gpt2") and xl.layers == (13, 14, 15, 16, 17)
    assert xl.mom2_update_weight != demo.mom2_update_weight
    small = hparams_for_model("memit", _gpt2(12))       # GPT-2 small: the same relative depth
    assert small.layers == (3, 4) and small.mom2_update_weight == xl.mom2_update_weight
    assert hparams_for_model("rome", _gpt2(12)).layer == 4


def test_one_encoder_serves_every_editor_and_the_scorer() -> None:
    """With a tokenizer that adds BOS (as LLaMA's does), editors train with it and the scorer reads with it."""
    from editing.batches import answer_batch
    from editing.saul.editor import _pair
    from validation.scoring import encode_pairs

    tok = tiny_tokenizer(CORPUS)
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    prompt, answer = "The price of Axta Kettle K1 is", "$59"
    prompt_ids, answer_ids = encode_pair(tok, prompt, answer)
    assert prompt_ids[0] == bos and prompt_ids[1] != bos
    assert encode_pairs(tok, [prompt], [answer]) == [(prompt_ids, answer_ids)]     # the scorer
    saul_prompt, saul_answer = _pair(tok, prompt, answer)                         # SAUL
    assert saul_prompt == prompt_ids and saul_answer[:-1] == answer_ids
    batch = answer_batch(tok, [prompt], [answer])                                  # FT, LoRA, F-Learning
    n = len(prompt_ids) + len(answer_ids) + 1
    assert batch.input_ids[0, :n].tolist() == prompt_ids + answer_ids + [tok.eos_token_id]
    rows = encode_prompts(tok, [prompt], ["Axta Kettle K1"], "subject_last")      # ROME, MEMIT, AlphaEdit
    assert rows.input_ids[0, : len(prompt_ids)].tolist() == prompt_ids


def test_combined_updates_sum_per_parameter_and_keep_low_rank_alone() -> None:
    a = EditResult(tensors={"w::u": torch.ones(3, 1), "w::v": torch.ones(1, 2), "x::dense": torch.ones(2, 2)})
    b = EditResult(tensors={"w::dense": torch.full((3, 2), 2.0)})
    combined = combine_updates([a, b])
    assert torch.equal(combined["w::dense"], torch.full((3, 2), 3.0))
    assert set(combined) == {"w::dense", "x::dense"}


def test_a_plan_routes_what_one_editor_did_not_write_to_the_next() -> None:
    torch.set_num_threads(1)
    model, tok = tiny_gpt2(CORPUS, seed=3, n_layer=2)
    train(model, tok, CORPUS, steps=200)
    requests = [
        EditRequest(subject="Axta Kettle K1", relation="price", prompt="The price of Axta Kettle K1 is",
                    target_new="$79", target_true="$49"),
        EditRequest(subject="Brio Toaster T2", relation="colour", prompt="The colour of Brio Toaster T2 is",
                    target_new="red", target_true="blue"),
    ]
    before = weights_fingerprint(model)
    # the first editor cannot write anything (no steps), so the second gets every request
    steps = [("ft", resolve_hparams("ft", "demo", {"layers": [0], "steps": 1, "lr": 1e-9})),
             ("lora", resolve_hparams("lora", "demo", {"layers": [1], "steps": 80, "lr": 0.05}))]
    result = run_plan(model, tok, requests, steps, EditContext())
    assert weights_fingerprint(model) == before
    assert [s.editor for s in result.steps] == ["ft", "lora"]
    assert result.steps[0].written == [] and result.steps[1].given == [0, 1]
    delta = Delta.create(result.tensors, editor="ft,lora", hparams={}, base_fingerprint=before, parent=None,
                         facts=[], model=model)
    handle = delta.apply(model)
    from infra.decoding import greedy_answers

    assert greedy_answers(model, tok, [r.prompt for r in requests]) == ["$79", "red"]
    handle.revert()
    assert weights_fingerprint(model) == before


def test_auto_mode_is_cumulative_where_it_was_measured_to_win_and_elder_stays_sequential() -> None:
    from editing.registry import parse_plan, resolve_mode
    from infra.errors import InvalidInput

    assert resolve_mode(parse_plan("saul"), "auto") == "sequential"
    assert resolve_mode(parse_plan("alphaedit,saul"), "auto") == "cumulative"
    assert resolve_mode(parse_plan("ft"), "auto") == "sequential"
    assert resolve_mode(parse_plan("elder"), "auto") == "sequential"
    with pytest.raises(InvalidInput, match="cumulative"):
        resolve_mode(parse_plan("elder"), "cumulative")
    with pytest.raises(InvalidInput, match="only editor"):
        parse_plan("saul,elder")
