"""Evaluate a model on a target set and a regression set; compare two evaluations.

Usage::

    before = evaluate(model, tok, targets, regression)
    ...  # apply the edit
    after = evaluate(model, tok, targets, regression)
    table = retention_table(before, after)      # one row per metric, checked by the GX suite

All greedy answers come from one batched call, all teacher-forced scores from another.

Teacher-forced ("_tf") criteria, with P(y|x) = exp(-mean-token NLL) as in methods.md 1.1:

- target / paraphrase: P(target_new) > P(target_true). A brand-new fact (no ``target_true``, or
  one equal to ``target_new``) has nothing to beat, so it counts as correct when every token of
  ``target_new`` is the argmax under teacher forcing.
- neighbourhood: the item's true answer is more probable than the new object of every request
  it neighbours. An item neighbours a request when its prompt mentions the request's subject
  (same subject, other relation: has the edit leaked into the subject's other facts?) or has the
  shape of the request's prompt with another subject in it (same relation, other subject: has the
  edit leaked to other subjects?). At most :data:`MAX_COMPETITORS` objects per item, subject
  matches first. An item that neighbours no request falls back to the argmax criterion.

Greedy ("_gen") criteria: the greedy answer states the expected object (`match`: equal to it for a
model that stops after its answer, beginning with it for one that goes on writing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from infra.domain import EditRequest
from infra.errors import InvalidInput
from validation.answer_match import AnswerMatch, exact_answer
from validation.answer_memo import AnswerMemo
from validation.fluency import ngram_entropy
from validation.scoring import answer_scores, generate_texts, greedy_answers, perplexity
from validation.sets import RegressionSet

__all__ = ["Evaluation", "evaluate", "retention_table", "targets_not_taken", "SUMMARY_METRICS", "DERIVED_METRICS", "MAX_COMPETITORS"]

#: Summary keys of an :class:`Evaluation`, in table order.
SUMMARY_METRICS = (
    "efficacy_tf",
    "efficacy_gen",
    "paraphrase_tf",
    "paraphrase_gen",
    "neighbourhood_tf",
    "neighbourhood_gen",
    "unrelated_gen",
    "perplexity",
    "fluency",
)
#: Rows :func:`retention_table` adds; their value sits in the ``after`` column.
DERIVED_METRICS = ("neighbourhood_unchanged", "unrelated_unchanged", "perplexity_drift", "fluency_drop")
#: Value of each derived metric for a model compared with itself (the ``before`` column).
_DERIVED_BASELINE = {"neighbourhood_unchanged": 1.0, "unrelated_unchanged": 1.0, "perplexity_drift": 0.0, "fluency_drop": 0.0}
#: Most competing objects scored per neighbourhood item.
MAX_COMPETITORS = 16

ROW_COLUMNS = ["kind", "prompt", "expected", "greedy", "tf_correct", "gen_correct", "nll_expected"]


@dataclass(frozen=True)
class Evaluation:
    """`summary`: metric -> value (fractions in [0, 1]; perplexity and fluency as is; NaN when
    there was nothing to score). `rows`: one row per scored item, columns :data:`ROW_COLUMNS`."""

    summary: dict[str, float]
    rows: pd.DataFrame


def _neighboured_objects(prompt: str, true: str, targets: Sequence[EditRequest]) -> list[str]:
    by_subject, by_shape = [], []
    for t in targets:
        if t.subject and t.subject in prompt:
            by_subject.append(t.target_new)
        elif t.subject and t.prompt.count(t.subject) == 1:
            head, tail = t.prompt.split(t.subject)
            if len(prompt) > len(head) + len(tail) and prompt.startswith(head) and prompt.endswith(tail):
                by_shape.append(t.target_new)
    out: list[str] = []
    for obj in by_subject + by_shape:
        if obj != true and obj not in out:
            out.append(obj)
    return out[:MAX_COMPETITORS]


def evaluate(
    model,
    tokenizer,
    targets: Sequence[EditRequest],
    regression: RegressionSet,
    batch_size: int = 64,
    *,
    max_new_tokens: int = 8,
    generation_tokens: int = 40,
    seed: int = 0,
    memo: AnswerMemo | None = None,
    match: AnswerMatch = exact_answer,
) -> Evaluation:
    """Score `model` on `targets` (efficacy, paraphrase) and `regression` (everything else).

    Args:
        model: a transformers causal LM.
        tokenizer: its fast tokenizer.
        targets: the edit requests.
        regression: the regression set (see :mod:`validation.sets`).
        batch_size: prompts per forward pass.
        max_new_tokens: longest greedy answer.
        generation_tokens: length of the sampled texts for fluency.
        seed: sampling seed for fluency.
        memo: what this model state already answered (see :mod:`validation.answer_memo`); only
            what it lacks is computed, and it is filled in.
        match: when a greedy answer states the expected object (:mod:`validation.answer_match`).
    """
    memo = memo if memo is not None else AnswerMemo()
    # items: (kind, prompt, expected, competitors or None -> argmax criterion)
    items: list[tuple[str, str, str, list[str] | None]] = []
    for t in targets:
        old = [t.target_true] if t.target_true is not None and t.target_true != t.target_new else None
        items.append(("target", t.prompt, t.target_new, old))
        items.extend(("paraphrase", p, t.target_new, old) for p in t.paraphrases)
    for prompt, true in regression.neighbourhood:
        items.append(("neighbourhood", prompt, true, _neighboured_objects(prompt, true, targets) or None))
    # unrelated facts are judged on greedy answers only; their tf is the argmax criterion
    items.extend(("unrelated", prompt, true, None) for prompt, true in regression.unrelated)

    prompts = [it[1] for it in items]
    greedy = memo.greedy_answers(prompts, max_new_tokens, lambda todo: greedy_answers(
        model, tokenizer, todo, max_new_tokens=max_new_tokens, batch_size=batch_size))

    # every (prompt, answer) pair to score, deduplicated, in one batched call
    pairs: dict[tuple[str, str], int] = {}
    for _, prompt, expected, competitors in items:
        for ans in [expected] + (competitors or []):
            pairs.setdefault((prompt, ans), len(pairs))
    def score(todo: list[tuple[str, str]]) -> tuple[list[float], list[bool]]:
        nll_t, exact_t = answer_scores(model, tokenizer, [k[0] for k in todo], [k[1] for k in todo], batch_size)
        return nll_t.tolist(), [bool(e) for e in exact_t.tolist()]

    nll, exact = memo.answer_scores(list(pairs), score)

    records = []
    for (kind, prompt, expected, competitors), answer in zip(items, greedy):
        own = pairs[(prompt, expected)]
        if competitors:
            tf = all(nll[own] < nll[pairs[(prompt, c)]] for c in competitors)
        else:
            tf = bool(exact[own])
        records.append((kind, prompt, expected, answer, tf, match(answer, expected), nll[own]))
    rows = pd.DataFrame.from_records(records, columns=ROW_COLUMNS)
    rows = rows.astype({"tf_correct": bool, "gen_correct": bool, "nll_expected": float})

    def mean(kind: str, column: str) -> float:
        sel = rows.loc[rows["kind"] == kind, column]
        return float(sel.mean()) if len(sel) else math.nan

    summary = {
        "efficacy_tf": mean("target", "tf_correct"),
        "efficacy_gen": mean("target", "gen_correct"),
        "paraphrase_tf": mean("paraphrase", "tf_correct"),
        "paraphrase_gen": mean("paraphrase", "gen_correct"),
        "neighbourhood_tf": mean("neighbourhood", "tf_correct"),
        "neighbourhood_gen": mean("neighbourhood", "gen_correct"),
        "unrelated_gen": mean("unrelated", "gen_correct"),
        "perplexity": memo.figure("perplexity", list(regression.heldout_text), lambda: perplexity(
            model, tokenizer, regression.heldout_text, batch_size=max(1, batch_size // 2)))
        if _has_scorable_text(tokenizer, regression.heldout_text)
        else math.nan,
        "fluency": memo.figure("fluency", [list(regression.generation_prompts), generation_tokens, seed],
                               lambda: ngram_entropy(generate_texts(
                                   model, tokenizer, regression.generation_prompts, max_new_tokens=generation_tokens,
                                   seed=seed, batch_size=max(1, batch_size // 2))))
        if regression.generation_prompts
        else math.nan,
    }
    return Evaluation(summary=summary, rows=rows)


def _has_scorable_text(tokenizer, texts: Sequence[str]) -> bool:
    return any(len(tokenizer(t)["input_ids"]) >= 2 for t in texts)


def _unchanged(before: pd.DataFrame, after: pd.DataFrame, kind: str) -> float:
    b = before.loc[before["kind"] == kind].reset_index(drop=True)
    a = after.loc[after["kind"] == kind].reset_index(drop=True)
    if len(a) != len(b) or not (a["prompt"] == b["prompt"]).all():
        raise InvalidInput(f"before and after evaluations scored different {kind} items; use the same regression set")
    if len(a) == 0:
        return math.nan
    return float((a["greedy"] == b["greedy"]).mean())


def retention_table(before: Evaluation, after: Evaluation) -> pd.DataFrame:
    """One row per metric: ``metric, before, after, change`` (change = after - before).

    Then the derived rows the retention thresholds use, whose value is in ``after``:
    ``neighbourhood_unchanged`` and ``unrelated_unchanged`` (fraction of greedy answers identical
    before and after), ``perplexity_drift`` = (after - before) / before, ``fluency_drop`` =
    (before - after) / before (0.0 when fluency was already 0). Their ``before`` is the value a
    model compared with itself would get (1.0 unchanged, 0.0 drift and drop), so the table has no
    NaN unless a metric had nothing to score.
    """
    rows = []
    metrics = [m for m in SUMMARY_METRICS if m in before.summary or m in after.summary]
    metrics += [m for m in before.summary if m not in metrics]
    for m in metrics:
        b = float(before.summary.get(m, math.nan))
        a = float(after.summary.get(m, math.nan))
        rows.append((m, b, a, a - b))

    ppl_b, ppl_a = before.summary.get("perplexity", math.nan), after.summary.get("perplexity", math.nan)
    flu_b, flu_a = before.summary.get("fluency", math.nan), after.summary.get("fluency", math.nan)
    derived = {
        "neighbourhood_unchanged": _unchanged(before.rows, after.rows, "neighbourhood"),
        "unrelated_unchanged": _unchanged(before.rows, after.rows, "unrelated"),
        "perplexity_drift": (ppl_a - ppl_b) / ppl_b if ppl_b and not math.isnan(ppl_b) else math.nan,
        "fluency_drop": _relative_drop(flu_b, flu_a),
    }
    for m, v in derived.items():
        v = float(v)
        baseline = math.nan if math.isnan(v) else _DERIVED_BASELINE[m]
        rows.append((m, baseline, v, v - baseline))
    return pd.DataFrame.from_records(rows, columns=["metric", "before", "after", "change"])


def _relative_drop(before: float, after: float) -> float:
    if math.isnan(before) or math.isnan(after):
        return math.nan
    if before == 0:
        return 0.0  # entropy cannot fall below 0
    return (before - after) / before


def efficacy_by_relation(targets: Sequence[EditRequest], evaluation: Evaluation) -> dict[str, dict]:
    """Per relation: the share of targets whose greedy answer is the new value, and the targets that
    are not (prompt, new value, the model's answer): no change goes unwritten without a name."""
    rows = evaluation.rows.loc[evaluation.rows["kind"] == "target"].reset_index(drop=True)
    if len(rows) != len(targets):
        raise InvalidInput("the evaluation scored a different target set")
    out: dict[str, dict] = {}
    for target, (_, row) in zip(targets, rows.iterrows()):
        entry = out.setdefault(target.relation, {"n": 0, "written": 0, "not_written": []})
        entry["n"] += 1
        if bool(row["gen_correct"]):
            entry["written"] += 1
        else:
            entry["not_written"].append({"prompt": target.prompt, "database": target.target_new, "model": row["greedy"]})
    for entry in out.values():
        entry["efficacy"] = entry["written"] / entry["n"]
    return dict(sorted(out.items()))


def targets_not_taken(targets: Sequence[EditRequest], rows: Sequence[dict], paraphrase_min: float
                      ) -> list[tuple[EditRequest, str]]:
    """The targets an edit did not take, with why: the main prompt does not answer the new value, or
    fewer than `paraphrase_min` of its paraphrases do (the retention suite's paraphrase threshold,
    applied to one fact).

    `rows`: an evaluation's rows as records (``Evaluation.rows``, or the run file written from it), in
    the order :func:`evaluate` scores them: each target, then its paraphrases.
    """
    items = [r for r in rows if r["kind"] in ("target", "paraphrase")]
    expected = sum(1 + len(t.paraphrases) for t in targets)
    if len(items) != expected:
        raise InvalidInput(f"the evaluation scored {len(items)} target and paraphrase items, the targets have {expected}")
    missed: list[tuple[EditRequest, str]] = []
    at = 0
    for target in targets:
        main, paraphrases = items[at], items[at + 1 : at + 1 + len(target.paraphrases)]
        at += 1 + len(target.paraphrases)
        if main["kind"] != "target" or main["prompt"] != target.prompt:
            raise InvalidInput(f"the evaluation's rows do not follow the targets (at {target.prompt!r})")
        share = sum(bool(p["gen_correct"]) for p in paraphrases) / len(paraphrases) if paraphrases else 1.0
        if not bool(main["gen_correct"]):
            missed.append((target, f"not written: answered {main['greedy']!r}"))
        elif share < paraphrase_min:
            missed.append((target, f"paraphrases {share:.2f} < {paraphrase_min:.2f}"))
    return missed
