"""Behaviour tests of validation.scoring / fluency / sets / evaluate on a tiny trained GPT-2."""

from __future__ import annotations

import copy
import math
from datetime import datetime, timedelta

import pandas as pd
import pytest
import torch

from infra.domain import EditRequest, Fact, FactChange, RelationTemplate, RelationTemplates
from infra.errors import InvalidInput
from tests.tiny_lm import tiny_gpt2, train
from validation.evaluate import SUMMARY_METRICS, evaluate, retention_table
from validation.fluency import ngram_entropy, text_ngram_entropy
from validation.scoring import answer_nll, answer_scores, generate_texts, greedy_answers, perplexity
from validation.sets import build_regression_set, build_target_set

TEMPLATES = RelationTemplates(
    {
        "price": RelationTemplate("price", "The price of {subject} is", ("{subject} costs",)),
        "colour": RelationTemplate("colour", "The colour of {subject} is", ("{subject} comes in",)),
    }
)
WORLD = {
    ("Acme X100", "price"): "$199",
    ("Zeta Q7", "price"): "$45",
    ("Bolt K2", "price"): "$80",
    ("Nova P9", "price"): "$12",
    ("Acme X100", "colour"): "red",
    ("Zeta Q7", "colour"): "blue",
    ("Bolt K2", "colour"): "green",
    ("Nova P9", "colour"): "black",
}
T0 = datetime(2026, 1, 1)


def corpus_of(world: dict[tuple[str, str], str]) -> list[str]:
    lines = []
    for (subject, relation), obj in world.items():
        template = TEMPLATES[relation]
        lines.append(f"{template.render(subject)} {obj}")
        lines.extend(f"{p} {obj}" for p in template.render_paraphrases(subject))
    return lines


@pytest.fixture(scope="module")
def torch_one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is overhead-bound; threads only contend
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lm(torch_one_thread):
    corpus = corpus_of(WORLD)
    model, tok = tiny_gpt2(corpus)
    loss = train(model, tok, corpus, steps=300, lr=3e-3)
    assert loss < 0.5, f"tiny model did not memorise its corpus (loss {loss})"
    return model, tok


@pytest.fixture(scope="module")
def edited_lm(lm):
    """The same model fine-tuned so that Acme X100's price is $45 (a real, if crude, edit)."""
    model, tok = lm
    edited = copy.deepcopy(model)
    world = dict(WORLD)
    world[("Acme X100", "price")] = "$45"
    train(edited, tok, corpus_of(world), steps=120, lr=3e-3, seed=1)
    return edited, tok


def main_prompts():
    return [TEMPLATES[r].render(s) for (s, r) in WORLD]


# ------------------------------------------------------------------------------------ scoring


def test_greedy_answers_return_the_trained_objects(lm):
    model, tok = lm
    assert greedy_answers(model, tok, main_prompts()) == list(WORLD.values())


def test_greedy_answers_are_independent_of_batching_and_padding(lm):
    model, tok = lm
    # very different prompt lengths force heavy left padding in the batch
    prompts = ["The", "Zeta Q7 costs"] + main_prompts() + ["The colour of Nova P9 is black and the price of Bolt K2 is"]
    one_by_one = [greedy_answers(model, tok, [p], batch_size=1)[0] for p in prompts]
    assert greedy_answers(model, tok, prompts, batch_size=64) == one_by_one
    assert greedy_answers(model, tok, prompts, batch_size=3) == one_by_one


def test_answer_nll_matches_an_unpadded_reference_and_is_batch_invariant(lm):
    model, tok = lm
    prompts = main_prompts() + ["Bolt K2 comes in"]
    answers = list(WORLD.values()) + ["a colour nobody trained"]
    batched = answer_nll(model, tok, prompts, answers, batch_size=64)
    single = torch.cat([answer_nll(model, tok, [p], [a], batch_size=1) for p, a in zip(prompts, answers)])
    assert batched.shape == (len(prompts),)
    assert torch.allclose(batched, single, atol=1e-4)
    # independent reference: one unpadded forward pass over prompt + " " + answer
    p_ids = tok(prompts[-1])["input_ids"]
    full = tok(prompts[-1] + " " + answers[-1])["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0], -1)
    ref = -torch.stack([logp[j - 1, full[j]] for j in range(len(p_ids), len(full))]).mean()
    assert abs(float(batched[-1]) - float(ref)) < 1e-4
    # trained answers are far more probable than a wrong one
    assert float(batched[:-1].max()) < 0.5 < float(batched[-1])


def test_answer_scores_exact_flags_the_argmax_answers(lm):
    model, tok = lm
    nll, exact = answer_scores(model, tok, main_prompts()[:2], ["$199", "$12"])
    assert exact.tolist() == [True, False]
    assert float(nll[0]) < float(nll[1])


def test_scoring_keeps_the_train_eval_mode_and_grad_state(lm):
    model, tok = lm
    model.train()
    try:
        greedy_answers(model, tok, main_prompts()[:2])
        answer_nll(model, tok, main_prompts()[:2], ["$199", "$45"])
        assert model.training
    finally:
        model.eval()
    answer_nll(model, tok, main_prompts()[:2], ["$199", "$45"])
    assert not model.training
    assert torch.is_grad_enabled()


def test_perplexity_is_lower_on_trained_text_than_on_shuffled_text(lm):
    model, tok = lm
    texts = corpus_of(WORLD)
    shuffled = [" ".join(reversed(t.split())) for t in texts]
    trained = perplexity(model, tok, texts)
    assert 1.0 <= trained < 3.0
    assert perplexity(model, tok, shuffled) > 10 * trained
    assert perplexity(model, tok, texts, batch_size=3) == pytest.approx(trained, rel=1e-5)


def test_memory_sized_batches_cover_every_row_in_order_within_the_budget() -> None:
    from infra.decoding import memory_sized_batches

    lengths = [3, 10, 2, 2, 40, 1, 5, 5, 5, 5]
    vocab, budget = 100, 100 * 4 * 2 * 12  # room for 12 logit positions per pass (logits + log-softmax)
    batches = list(memory_sized_batches(lengths, vocab * 4 * 2, max_rows=3, budget=budget))
    assert [i for b in batches for i in range(b.start, b.stop)] == list(range(len(lengths)))
    for b in batches:
        rows = lengths[b]
        assert len(rows) <= 3
        assert len(rows) == 1 or len(rows) * max(rows) * vocab * 4 * 2 <= budget
    assert [lengths[b] for b in batches][:3] == [[3], [10], [2, 2]]  # 3 and 10 together need 20 positions
    assert lengths[batches[3]] == [40]  # alone over the budget: a batch of its own, never dropped
    big = list(memory_sized_batches(lengths, vocab * 4 * 2, max_rows=64, budget=2**40))
    assert big == [slice(0, len(lengths))]


def test_scores_do_not_depend_on_the_logits_budget(lm):
    """A budget that forces one row per forward pass gives the answers and scores of one big batch."""
    model, tok = lm
    prompts = main_prompts() + ["The colour of Nova P9 is black and the price of Bolt K2 is"]
    answers = list(WORLD.values()) + ["$45"]
    tight = 1  # bytes: every row is a batch of its own
    assert greedy_answers(model, tok, prompts, logits_budget=tight) == greedy_answers(model, tok, prompts)
    nll, exact = answer_scores(model, tok, prompts, answers)
    nll_tight, exact_tight = answer_scores(model, tok, prompts, answers, logits_budget=tight)
    assert torch.allclose(nll, nll_tight, atol=1e-5) and torch.equal(exact, exact_tight)
    texts = corpus_of(WORLD)
    assert perplexity(model, tok, texts, logits_budget=tight) == pytest.approx(perplexity(model, tok, texts), rel=1e-5)


def test_generate_texts_is_deterministic_for_a_seed_and_leaves_the_global_rng(lm):
    model, tok = lm
    prompts = ["The", "The price of", "Zeta"]
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = generate_texts(model, tok, prompts, max_new_tokens=12, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    assert generate_texts(model, tok, prompts, max_new_tokens=12, seed=7) == first
    assert len(first) == 3 and all(isinstance(t, str) for t in first)
    # top_k=1 is greedy: the first generated words are the greedy answer
    assert generate_texts(model, tok, ["The price of Zeta Q7 is"], max_new_tokens=8, top_k=1, stop_at_eos=True) == ["$45"]


# ------------------------------------------------------------------------------------ fluency


def test_ngram_entropy_exact_value_on_a_hand_computed_example():
    # "a b a b": bigrams ab, ba, ab -> p = (2/3, 1/3), H2 = 0.9182958; trigrams aba, bab -> H3 = 1
    h2 = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    assert text_ngram_entropy("a b a b") == pytest.approx(h2 / 3 + 2 / 3, abs=1e-12)
    # all-distinct 5 tokens: H2 = log2(4), H3 = log2(3)
    assert text_ngram_entropy("a b c d e") == pytest.approx(2 / 3 + 2 * math.log2(3) / 3, abs=1e-12)
    assert ngram_entropy(["a b a b", "a b c d e"]) == pytest.approx(
        (h2 / 3 + 2 / 3 + 2 / 3 + 2 * math.log2(3) / 3) / 2, abs=1e-12
    )
    assert text_ngram_entropy("one") == 0.0
    assert math.isnan(ngram_entropy([]))


def test_ngram_entropy_is_lower_for_repetitive_text():
    repetitive = ["the the the the the the the the the the the the"]
    varied = ["the quick brown fox jumps over the lazy dog near a quiet river bank"]
    assert ngram_entropy(repetitive) == 0.0
    assert ngram_entropy(varied) > 3.0


# ------------------------------------------------------------------------------------ sets


def change(cid, subject, relation, old, new, minutes):
    return FactChange(cid, subject, relation, old, new, T0 + timedelta(minutes=minutes))


def test_build_target_set_one_request_per_key_latest_wins():
    changes = [
        change(3, "Acme X100", "price", "$150", "$99", 20),
        change(1, "Acme X100", "price", "$199", "$150", 10),
        change(2, "Zeta Q7", "colour", "blue", "teal", 5),
        change(4, "Bolt K2", "colour", "green", "grey", 1),
        change(5, "Bolt K2", "colour", "grey", "green", 2),  # back where it started: nothing to edit
        change(6, "Nova P9", "price", None, "$10", 30),  # brand-new fact
    ]
    requests = build_target_set(changes, TEMPLATES)
    assert [(r.subject, r.relation) for r in requests] == [("Zeta Q7", "colour"), ("Acme X100", "price"), ("Nova P9", "price")]
    acme = requests[1]
    assert acme == EditRequest(
        subject="Acme X100",
        relation="price",
        prompt="The price of Acme X100 is",
        target_new="$99",
        target_true="$199",
        paraphrases=("Acme X100 costs",),
    )
    assert requests[2].target_true is None
    with pytest.raises(InvalidInput, match="weight"):
        build_target_set([change(9, "Acme X100", "weight", "1kg", "2kg", 0)], TEMPLATES)


def facts_of(world):
    return [Fact(s, r, o) for (s, r), o in world.items()]


def test_build_regression_set_excludes_edited_keys_and_is_deterministic():
    world = {(f"Item {i}", rel): f"{rel}-{i}" for i in range(30) for rel in ("price", "colour")}
    targets = build_target_set(
        [change(1, "Item 3", "price", "price-3", "$1", 0), change(2, "Item 7", "colour", "colour-7", "pink", 0)],
        TEMPLATES,
    )
    kwargs = dict(neighbours_per_request=4, n_unrelated=10, heldout_text=("A held-out sentence of words here.",), seed=5)
    reg = build_regression_set(facts_of(world), targets, TEMPLATES, **kwargs)
    edited_prompts = {t.prompt for t in targets}
    items = reg.neighbourhood + reg.unrelated
    assert not edited_prompts & {p for p, _ in items}
    assert len(reg.neighbourhood) == 8 and len(reg.unrelated) == 10
    assert not set(reg.neighbourhood) & set(reg.unrelated)
    # every neighbour shares the subject or the relation of a target
    for prompt, obj in reg.neighbourhood:
        assert any(
            t.subject in prompt or obj.startswith(t.relation + "-") for t in targets
        ), (prompt, obj)
    # Item 3's neighbours alternate: same subject first (its colour), then same relation
    assert reg.neighbourhood[0] == ("The colour of Item 3 is", "colour-3")
    assert reg.neighbourhood[1][1].startswith("price-")
    # objects are the facts' objects
    for prompt, obj in items:
        assert obj in world.values()
    # deterministic for a seed, whatever the facts' order; another seed draws differently
    again = build_regression_set(list(reversed(facts_of(world))), targets, TEMPLATES, **kwargs)
    assert again == reg
    other = build_regression_set(facts_of(world), targets, TEMPLATES, **{**kwargs, "seed": 6})
    assert other.unrelated != reg.unrelated
    assert reg.heldout_text == ("A held-out sentence of words here.",)
    assert reg.generation_prompts == ("The price of Item 3 is", "The colour of Item 7 is", "A held-out sentence of words here.")


def test_regression_set_leaves_out_facts_earlier_refreshes_changed():
    # the ledger's facts are judged by catalogue agreement; "unrelated" means untouched by any edit
    world = {(f"Item {i}", rel): f"{rel}-{i}" for i in range(30) for rel in ("price", "colour")}
    targets = build_target_set([change(1, "Item 3", "price", "price-3", "$1", 0)], TEMPLATES)
    ledger = [(f"Item {i}", "colour") for i in range(0, 30, 2)]
    reg = build_regression_set(facts_of(world), targets, TEMPLATES, neighbours_per_request=4, n_unrelated=40,
                               exclude=ledger, seed=1)
    ledger_prompts = {TEMPLATES["colour"].render(s) for s, _ in ledger}
    assert not ledger_prompts & {p for p, _ in reg.neighbourhood + reg.unrelated}
    assert len(reg.neighbourhood) + len(reg.unrelated) == 60 - 1 - len(ledger)


# ------------------------------------------------------------------------------------ evaluate


@pytest.fixture(scope="module")
def edit_case():
    targets = build_target_set([change(1, "Acme X100", "price", "$199", "$45", 0)], TEMPLATES)
    regression = build_regression_set(
        facts_of(WORLD),
        targets,
        TEMPLATES,
        neighbours_per_request=3,
        n_unrelated=4,
        heldout_text=tuple(corpus_of(WORLD)[2:6]),
        seed=0,
    )
    return targets, regression


@pytest.fixture(scope="module")
def evaluations(lm, edited_lm, edit_case):
    targets, regression = edit_case
    before = evaluate(lm[0], lm[1], targets, regression)
    after = evaluate(edited_lm[0], edited_lm[1], targets, regression)
    return before, after


def test_evaluate_scores_targets_and_regression_items(evaluations, edit_case):
    before, after = evaluations
    targets, regression = edit_case
    assert set(before.summary) == set(SUMMARY_METRICS)
    rows = before.rows
    assert list(rows["kind"].value_counts().sort_index().items()) == [
        ("neighbourhood", len(regression.neighbourhood)),
        ("paraphrase", 1),
        ("target", 1),
        ("unrelated", len(regression.unrelated)),
    ]
    # before the edit the model answers the old price; after, the new one
    assert rows.loc[rows["kind"] == "target", "greedy"].tolist() == ["$199"]
    assert before.summary["efficacy_gen"] == 0.0 and before.summary["efficacy_tf"] == 0.0
    assert after.summary["efficacy_gen"] == 1.0 and after.summary["efficacy_tf"] == 1.0
    assert after.summary["paraphrase_gen"] == 1.0
    # the untouched model knows all its other facts
    assert before.summary["neighbourhood_gen"] == 1.0 and before.summary["unrelated_gen"] == 1.0
    assert before.summary["neighbourhood_tf"] == 1.0
    assert 1.0 <= before.summary["perplexity"] < 3.0
    assert before.summary["fluency"] >= 0.0
    # summary values are the means of the rows
    for kind, metric in [("neighbourhood", "neighbourhood_gen"), ("unrelated", "unrelated_gen")]:
        sel = after.rows[after.rows["kind"] == kind]
        assert after.summary[metric] == pytest.approx(sel["gen_correct"].mean())
        assert (sel["gen_correct"] == (sel["greedy"] == sel["expected"])).all()


def test_an_answer_memo_serves_a_second_evaluation_of_the_same_model_without_a_forward_pass(lm, evaluations, edit_case):
    """What a model state answered once is answered from the memo (also after a round trip through
    bytes): the evaluation is the same and the model is never called; a new question is computed."""
    from validation.answer_memo import AnswerMemo

    model, tok = lm
    targets, regression = edit_case
    before, _ = evaluations
    memo = AnswerMemo()
    first = evaluate(model, tok, targets, regression, memo=memo)
    assert memo.computed == memo.asked > 0
    pd.testing.assert_frame_equal(first.rows, before.rows)
    assert first.summary == pytest.approx(before.summary, nan_ok=True)

    stored = AnswerMemo.from_bytes(memo.to_bytes())
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        again = evaluate(model, tok, targets, regression, memo=stored)
    finally:
        hook.remove()
    assert calls == [] and stored.computed == 0 and stored.asked == memo.asked
    pd.testing.assert_frame_equal(again.rows, first.rows)
    assert again.summary == pytest.approx(first.summary, nan_ok=True)

    extra = AnswerMemo.from_bytes(memo.to_bytes())
    other = build_target_set([change(1, "Acme X100", "colour", "red", "blue", 0)], TEMPLATES)
    fresh = evaluate(model, tok, other, regression)
    pd.testing.assert_frame_equal(evaluate(model, tok, other, regression, memo=extra).rows, fresh.rows)
    assert 0 < extra.computed < extra.asked
    assert AnswerMemo.from_bytes(b"not a memo").greedy == {}


def test_retention_table_derives_values_from_real_evaluations(evaluations):
    before, after = evaluations
    table = retention_table(before, after).set_index("metric")
    for m in SUMMARY_METRICS:
        assert table.at[m, "before"] == pytest.approx(before.summary[m], nan_ok=True)
        assert table.at[m, "after"] == pytest.approx(after.summary[m], nan_ok=True)
        assert table.at[m, "change"] == pytest.approx(after.summary[m] - before.summary[m], nan_ok=True)
    for kind in ("neighbourhood", "unrelated"):
        b = before.rows[before.rows["kind"] == kind]["greedy"].tolist()
        a = after.rows[after.rows["kind"] == kind]["greedy"].tolist()
        expected = sum(x == y for x, y in zip(b, a)) / len(b)
        assert table.at[f"{kind}_unchanged", "after"] == pytest.approx(expected)
    ppl_b, ppl_a = before.summary["perplexity"], after.summary["perplexity"]
    assert table.at["perplexity_drift", "after"] == pytest.approx((ppl_a - ppl_b) / ppl_b)
    flu_b, flu_a = before.summary["fluency"], after.summary["fluency"]
    expected_drop = 0.0 if flu_b == 0 else (flu_b - flu_a) / flu_b
    assert table.at["fluency_drop", "after"] == pytest.approx(expected_drop)
    for metric, baseline in [("neighbourhood_unchanged", 1.0), ("unrelated_unchanged", 1.0), ("perplexity_drift", 0.0), ("fluency_drop", 0.0)]:
        assert table.at[metric, "before"] == baseline
        assert table.at[metric, "change"] == pytest.approx(table.at[metric, "after"] - baseline)
    assert not table[["before", "after", "change"]].isna().any().any()


def test_retention_table_refuses_evaluations_of_different_sets(lm, evaluations, edit_case):
    before, _ = evaluations
    targets, regression = edit_case
    other = build_regression_set(facts_of(WORLD), targets, TEMPLATES, neighbours_per_request=1, n_unrelated=1, seed=3)
    with pytest.raises(InvalidInput, match="different"):
        retention_table(before, evaluate(lm[0], lm[1], targets, other))


def test_knowledge_diff_sorts_every_changed_answer_by_what_it_means() -> None:
    from validation.agreement import AgreementAnswers, knowledge_diff
    from validation.sets import AgreementSet

    agreement = AgreementSet(
        changed=(("p1", "$5", "price"), ("p2", "$6", "price"), ("p3", "$7", "price")),
        unchanged=(("q1", "red", "colour"), ("q2", "blue", "colour"), ("q3", "tan", "colour"), ("q4", "ash", "colour")),
    )
    before = AgreementAnswers(changed=["$1", "$6", "$2"], unchanged=["red", "green", "pink", "ash"])
    after = AgreementAnswers(changed=["$5", "$9", "$3"], unchanged=["gold", "blue", "lime", "ash"])
    diff = knowledge_diff(agreement, before, after)
    assert diff["counts"] == {"intended": 1, "broken": 2, "repaired": 1, "churn": 2}
    assert [d["prompt"] for d in diff["broken"]] == ["p2", "q1"]
    assert diff["repaired"][0] == {"prompt": "q2", "relation": "colour", "fact": "unchanged", "database": "blue",
                                   "before": "green", "after": "blue"}
    assert {d["prompt"] for d in diff["churn"]} == {"p3", "q3"} and diff["n_facts"] == 7


def test_answer_match_exact_for_models_that_stop_leading_for_models_that_go_on_writing() -> None:
    from types import SimpleNamespace

    from validation.agreement import AgreementAnswers, knowledge_diff
    from validation.answer_match import answer_match_for, exact_answer, leading_answer
    from validation.sets import AgreementSet

    assert exact_answer("Wesley", "Wesley") and not exact_answer("Wesley Works", "Wesley")
    assert leading_answer("French. She is a Canadian artist who", "French")
    assert leading_answer("Paris, France", "Paris") and leading_answer("Wesley Works", "Wesley")
    assert not leading_answer("$199", "$19") and not leading_answer("Frenchman", "French")
    assert not leading_answer("", "French") and not leading_answer("the French", "French")
    demo, pretrained = (SimpleNamespace(config=SimpleNamespace(kus_profile=p)) for p in ("demo", "smollm2"))
    assert answer_match_for("auto", demo) is exact_answer and answer_match_for("auto", pretrained) is leading_answer
    assert answer_match_for("exact", pretrained) is exact_answer
    with pytest.raises(InvalidInput, match="answer_match"):
        answer_match_for("fuzzy", demo)

    # two different continuations that both state the value are no change of knowledge
    agreement = AgreementSet(changed=(("The mother tongue of D is", "English", "language"),),
                             unchanged=(("The capital of F is", "Paris", "capital"),))
    before = AgreementAnswers(changed=["French. She"], unchanged=["Paris, the city"])
    after = AgreementAnswers(changed=["English, and"], unchanged=["Paris. It"])
    diff = knowledge_diff(agreement, before, after, leading_answer)
    assert diff["counts"] == {"intended": 1, "broken": 0, "repaired": 0, "churn": 0}
    assert knowledge_diff(agreement, before, after)["counts"]["churn"] == 2  # exact: both read as wrong


def test_targets_not_taken_names_unwritten_facts_and_facts_whose_paraphrases_fail() -> None:
    from tasks.evaluation_sets import hold_back
    from validation.evaluate import targets_not_taken

    def req(subject: str, value: str) -> EditRequest:
        return EditRequest(subject, "price", f"The price of {subject} is", value, "$1",
                           paraphrases=(f"{subject} costs", f"{subject} sells for", f"You can buy {subject} for"))

    targets = [req("A", "$5"), req("B", "$6"), req("C", "$7")]

    def rows(main: bool, paraphrases: list[bool], t: EditRequest) -> list[dict]:
        return ([{"kind": "target", "prompt": t.prompt, "greedy": t.target_new if main else "$1", "gen_correct": main}]
                + [{"kind": "paraphrase", "prompt": p, "greedy": "", "gen_correct": ok} for p, ok in zip(t.paraphrases, paraphrases)])

    records = (rows(True, [True, True, False], targets[0]) + rows(False, [True, True, True], targets[1])
               + rows(True, [True, False, False], targets[2]) + [{"kind": "unrelated", "prompt": "x", "gen_correct": False}])
    missed = targets_not_taken(targets, records, paraphrase_min=0.6)
    assert [(t.subject, why.split(":")[0].split(" ")[0]) for t, why in missed] == [("B", "not"), ("C", "paraphrases")]
    with pytest.raises(InvalidInput, match="scored"):
        targets_not_taken(targets[:2], records, paraphrase_min=0.6)

    not_taken = {(t.subject, t.relation, t.target_new): why for t, why in missed}
    kept, held = hold_back(targets + [req("D", "$8")], not_taken)
    assert [t.subject for t in kept] == ["A", "D"] and [t.subject for t in held] == ["B", "C"]
    changed_again = req("B", "$9")  # the database moved on: a new value is tried again
    assert hold_back([changed_again], not_taken) == ([changed_again], [])
    assert hold_back(targets[1:], not_taken) == (targets[1:], [])  # everything held: edit them all again


def test_facts_failed_on_an_earlier_head_get_a_bounded_share_of_each_run() -> None:
    from tasks.evaluation_sets import schedule

    def req(subject: str, value: str = "$5") -> EditRequest:
        return EditRequest(subject, "price", f"The price of {subject} is", value, "$1")

    failed = [req(f"F{i}") for i in range(6)]
    fresh = [req(f"N{i}") for i in range(10)]
    feed = failed[:3] + fresh[:5] + failed[3:] + fresh[5:]  # the hard facts come first in feed order
    failed_before = {(t.subject, t.relation, t.target_new): "run 3: paraphrases 0.00 < 0.60" for t in failed}
    taken, later, retries = schedule(feed, failed_before, cap=8, retry_share=0.25)
    assert [t.subject for t in taken] == [f"N{i}" for i in range(6)] + ["F0", "F1"] and retries == 2
    assert [t.subject for t in later] == ["N6", "N7", "N8", "N9", "F2", "F3", "F4", "F5"]
    # few fresh changes: the room they leave goes to retries; the cap always holds
    taken, later, retries = schedule(failed + fresh[:2], failed_before, cap=5, retry_share=0.25)
    assert [t.subject for t in taken] == ["N0", "N1", "F0", "F1", "F2"] and retries == 3 and len(later) == 3
    # at least one place for a retry, however small the cap
    assert schedule(fresh[:3] + failed[:1], failed_before, cap=2, retry_share=0.25)[2] == 1
    # a fact failed with another value is a fresh change; nothing failed before: plain feed order
    assert schedule([req("F0", "$9")], failed_before, cap=8)[2] == 0
    taken, later, retries = schedule(fresh, {}, cap=4)
    assert taken == fresh[:4] and later == fresh[4:] and retries == 0
