"""Catalogue agreement: does the model say what the database says?

The number a catalogue team cares about. For an `AgreementSet` (every changed fact and a fixed
sample of unchanged ones) it is the share of facts whose greedy answer equals the database value,
reported separately for changed and unchanged facts, and per relation::

    answers = agreement_answers(model, tokenizer, agreement)
    report = agreement_report(agreement, answers, base_answers)
    report.changed, report.unchanged, report.unchanged_kept

`unchanged_kept` is the share of unchanged facts the *base* model answered right that the model
still answers right: what editing broke, without counting what the base never knew.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.decoding import greedy_answers
from validation.answer_match import AnswerMatch, exact_answer
from validation.answer_memo import AnswerMemo
from validation.sets import AgreementSet

#: Rows of the retention table (metric, before, after, change) the agreement adds.
AGREEMENT_METRICS = ("agreement_changed", "agreement_unchanged", "unchanged_kept")
#: Disagreeing changed facts listed in a report (the counts are always complete).
MAX_LISTED = 50
#: the longest greedy answer of an agreement question (greedy_answers' default, shared with evaluation)
AGREEMENT_ANSWER_TOKENS = 8


@dataclass(frozen=True)
class AgreementAnswers:
    changed: list[str]
    unchanged: list[str]


@dataclass(frozen=True)
class AgreementReport:
    changed: float
    unchanged: float
    unchanged_kept: float
    n_changed: int
    n_unchanged: int
    #: relation -> {"changed": share, "n_changed": n, "unchanged": share, "n_unchanged": n}
    by_relation: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: changed facts the model does not say: {"prompt", "relation", "database", "model"}
    wrong_changed: list[dict[str, str]] = field(default_factory=list)
    #: ledger facts past the changed-fact sample (not scored; 0 while the ledger is small)
    n_changed_left_out: int = 0

    def to_json(self) -> dict[str, Any]:
        def clean(x: float) -> float | None:
            return None if isinstance(x, float) and math.isnan(x) else x

        return {
            "changed": clean(self.changed), "unchanged": clean(self.unchanged),
            "unchanged_kept": clean(self.unchanged_kept), "n_changed": self.n_changed,
            "n_unchanged": self.n_unchanged, "n_changed_left_out": self.n_changed_left_out,
            "by_relation": {r: {k: clean(v) for k, v in d.items()} for r, d in self.by_relation.items()},
            "wrong_changed": self.wrong_changed[:MAX_LISTED],
        }


def agreement_answers(model: Any, tokenizer: Any, agreement: AgreementSet, batch_size: int = 64,
                      progress: str | None = None, memo: AnswerMemo | None = None) -> AgreementAnswers:
    """Greedy answers to every prompt of the set (one batched pass over what `memo`, the model
    state's earlier answers, lacks; `progress`: a bar's label)."""
    prompts = [p for p, _, _ in agreement.changed] + [p for p, _, _ in agreement.unchanged]
    memo = memo if memo is not None else AnswerMemo()
    answers = memo.greedy_answers(prompts, AGREEMENT_ANSWER_TOKENS, lambda todo: greedy_answers(
        model, tokenizer, todo, max_new_tokens=AGREEMENT_ANSWER_TOKENS, batch_size=batch_size, progress=progress))
    n = len(agreement.changed)
    return AgreementAnswers(changed=answers[:n], unchanged=answers[n:])


def _share(hits: Sequence[bool]) -> float:
    return float(sum(hits) / len(hits)) if hits else math.nan


def agreement_report(agreement: AgreementSet, answers: AgreementAnswers, base: AgreementAnswers | None = None,
                     match: AnswerMatch = exact_answer) -> AgreementReport:
    """Agreement of `answers` with the database values; `base` (the base model's answers to the
    same set) gives `unchanged_kept` (NaN without it, or when the base knew none of them)."""
    changed_hits = [match(a, value) for a, (_, value, _) in zip(answers.changed, agreement.changed)]
    unchanged_hits = [match(a, value) for a, (_, value, _) in zip(answers.unchanged, agreement.unchanged)]
    kept = math.nan
    if base is not None:
        known = [hit for hit, b, (_, value, _) in zip(unchanged_hits, base.unchanged, agreement.unchanged) if match(b, value)]
        kept = _share(known)
    by_relation: dict[str, dict[str, Any]] = {}
    for kind, items, hits in (("changed", agreement.changed, changed_hits), ("unchanged", agreement.unchanged, unchanged_hits)):
        grouped: dict[str, list[bool]] = {}
        for (_, _, relation), hit in zip(items, hits):
            grouped.setdefault(relation, []).append(hit)
        for relation, rel_hits in grouped.items():
            entry = by_relation.setdefault(relation, {})
            entry[kind] = _share(rel_hits)
            entry[f"n_{kind}"] = len(rel_hits)
    wrong = [
        {"prompt": prompt, "relation": relation, "database": value, "model": answer}
        for (prompt, value, relation), answer, hit in zip(agreement.changed, answers.changed, changed_hits) if not hit
    ]
    return AgreementReport(
        changed=_share(changed_hits), unchanged=_share(unchanged_hits), unchanged_kept=kept,
        n_changed=len(changed_hits), n_unchanged=len(unchanged_hits),
        by_relation=dict(sorted(by_relation.items())), wrong_changed=wrong,
        n_changed_left_out=agreement.changed_left_out,
    )


def knowledge_diff(agreement: AgreementSet, before: AgreementAnswers, after: AgreementAnswers,
                   match: AnswerMatch = exact_answer) -> dict[str, Any]:
    """Every catalogue fact of the set whose answer the edit changes, with what the database says.

    `intended`: changed facts that now agree; `broken`: facts that agreed and no longer do (for a
    changed fact, one the live model already said); `repaired`: unchanged facts that disagreed and now
    agree; `churn`: wrong before and wrong, differently, after. Counts are complete; the lists too.
    """
    items: dict[str, list[dict[str, str]]] = {"intended": [], "broken": [], "repaired": [], "churn": []}
    for kind, facts, old, new in (("changed", agreement.changed, before.changed, after.changed),
                                  ("unchanged", agreement.unchanged, before.unchanged, after.unchanged)):
        for (prompt, value, relation), b, a in zip(facts, old, new):
            right_before, right_after = match(b, value), match(a, value)
            if a == b or (right_before and right_after):  # the same answer, or the fact stated both times
                continue
            if right_after:
                verdict = "intended" if kind == "changed" else "repaired"
            elif right_before:
                verdict = "broken"
            else:
                verdict = "churn"
            items[verdict].append({"prompt": prompt, "relation": relation, "fact": kind, "database": value,
                                   "before": b, "after": a})
    return {"counts": {k: len(v) for k, v in items.items()}, "n_facts": len(agreement.changed) + len(agreement.unchanged),
            **items}


#: Below this share of the unchanged catalogue answered right by the base model, the retention checks
#: measure churn among wrong answers rather than knowledge kept.
READY_MIN = 0.5


@dataclass(frozen=True)
class Readiness:
    """How much of the catalogue (the unchanged sample of an agreement set) the base model knows."""

    share: float
    n: int
    #: relation -> (facts the base answers right, facts sampled)
    by_relation: dict[str, tuple[int, int]]

    def warnings(self) -> list[str]:
        if not self.n:
            return ["no unchanged catalogue facts to check: seed the catalogue the base model was built on "
                    "(kus seed-catalogue)"]
        out = []
        if self.share < READY_MIN:
            out.append(f"the base model answers only {self.share:.0%} of {self.n} sampled catalogue facts with "
                       "their database value: neighbourhood, unrelated and unchanged-kept checks would measure "
                       "churn among wrong answers, not knowledge kept")
        weak = [r for r, (right, n) in self.by_relation.items() if n and right / n < READY_MIN]
        if weak and self.share >= READY_MIN:
            out.append(f"the base model knows less than {READY_MIN:.0%} of relation(s) {', '.join(weak)}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"share": None if math.isnan(self.share) else self.share, "n": self.n,
                "by_relation": {r: {"right": right, "n": n} for r, (right, n) in self.by_relation.items()}}


def base_readiness(agreement: AgreementSet, base: AgreementAnswers, match: AnswerMatch = exact_answer) -> Readiness:
    """Share of the unchanged sample that the base model (`base`: its answers) says as the database does."""
    by_relation: dict[str, list[int]] = {}
    for answer, (_, value, relation) in zip(base.unchanged, agreement.unchanged):
        counts = by_relation.setdefault(relation, [0, 0])
        counts[0] += match(answer, value)
        counts[1] += 1
    right = sum(c[0] for c in by_relation.values())
    n = sum(c[1] for c in by_relation.values())
    return Readiness(share=right / n if n else math.nan, n=n,
                     by_relation={r: (c[0], c[1]) for r, c in sorted(by_relation.items())})


def agreement_rows(before: AgreementReport, after: AgreementReport) -> list[tuple[str, float, float, float]]:
    """Retention-table rows (metric, before, after, after - before) for the agreement metrics."""
    pairs = ((before.changed, after.changed), (before.unchanged, after.unchanged),
             (before.unchanged_kept, after.unchanged_kept))
    return [(metric, float(b), float(a), float(a) - float(b)) for metric, (b, a) in zip(AGREEMENT_METRICS, pairs)]
