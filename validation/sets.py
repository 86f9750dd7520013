"""Target and regression sets: what an edit must achieve and what it must not break.

Usage::

    targets = build_target_set(changes, templates)            # one EditRequest per (subject, relation)
    regression = build_regression_set(facts, targets, templates, heldout_text=texts, seed=0)

The regression set never contains a (subject, relation) being edited, and is a pure function of
its arguments (the same facts, targets and seed give the same set, whatever the facts' order).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from infra.domain import EditRequest, Fact, FactChange, RelationTemplates
from infra.errors import InvalidInput

__all__ = ["RegressionSet", "build_target_set", "build_regression_set"]

#: Words of a held-out text used as a generation prompt (see :func:`build_regression_set`).
_HELDOUT_PROMPT_WORDS = 6


@dataclass(frozen=True)
class RegressionSet:
    """Items whose behaviour an edit must keep.

    `neighbourhood` and `unrelated` are (rendered prompt, true object) pairs; `heldout_text`
    is scored for perplexity; `generation_prompts` are sampled from for fluency.
    """

    neighbourhood: tuple[tuple[str, str], ...]
    unrelated: tuple[tuple[str, str], ...]
    heldout_text: tuple[str, ...]
    generation_prompts: tuple[str, ...]


def build_target_set(changes: Sequence[FactChange], templates: RelationTemplates) -> list[EditRequest]:
    """One :class:`EditRequest` per (subject, relation) of `changes`, the latest change winning.

    "Latest" is the largest ``(changed_at, change_id)``. ``target_true`` is the object the model
    held before this batch: the ``old_object`` of the key's *earliest* change (for a single change,
    simply its ``old_object``; for a chain A->B->C it is A, not B). A key whose chain ends where
    it started (A->B->A) needs no edit and is left out. Requests come in the order of their
    winning change.

    Raises:
        InvalidInput: a change names a relation with no template.
    """
    by_key: dict[tuple[str, str], list[FactChange]] = {}
    for change in changes:
        if change.relation not in templates:
            raise InvalidInput(
                f"change {change.change_id}: relation {change.relation!r} has no template; known: {templates.relations()}"
            )
        by_key.setdefault((change.subject, change.relation), []).append(change)

    def order(c: FactChange) -> tuple[datetime, int]:
        return (c.changed_at, c.change_id)

    winners: list[tuple[FactChange, str | None]] = []
    for chain in by_key.values():
        chain = sorted(chain, key=order)
        first, last = chain[0], chain[-1]
        if first.old_object is not None and first.old_object == last.new_object:
            continue
        winners.append((last, first.old_object))
    winners.sort(key=lambda w: order(w[0]))

    requests = []
    for change, old in winners:
        template = templates[change.relation]
        requests.append(
            EditRequest(
                subject=change.subject,
                relation=change.relation,
                prompt=template.render(change.subject),
                target_new=change.new_object,
                target_true=old,
                paraphrases=template.render_paraphrases(change.subject),
            )
        )
    return requests


def build_regression_set(
    facts: Sequence[Fact],
    targets: Sequence[EditRequest],
    templates: RelationTemplates,
    *,
    neighbours_per_request: int = 2,
    n_unrelated: int = 100,
    heldout_text: Sequence[str] = (),
    seed: int = 0,
    max_generation_prompts: int = 32,
) -> RegressionSet:
    """Neighbourhood and unrelated facts, held-out text and generation prompts for `targets`.

    - Candidates are the facts whose (subject, relation) is not edited and whose relation has a
      template; for a key listed twice the fact with the latest ``valid_from`` wins.
    - Neighbourhood: for each target, up to `neighbours_per_request` candidates that share its
      subject (other relations) or its relation (other subjects), alternating the two kinds
      (same subject first) and drawn at random within each kind; shared items appear once.
    - Unrelated: a random sample of `n_unrelated` of the remaining candidates.
    - Generation prompts: the targets' prompts, then the first words of each held-out text,
      at most `max_generation_prompts` in all.

    Args:
        facts: the current facts of the catalogue.
        targets: the edit requests (from :func:`build_target_set`).
        templates: how each relation is asked.
        neighbours_per_request: neighbourhood items per target.
        n_unrelated: unrelated items in all.
        heldout_text: texts for perplexity.
        seed: drives every random choice.
        max_generation_prompts: cap on `generation_prompts`.
    """
    if neighbours_per_request < 0 or n_unrelated < 0 or max_generation_prompts < 0:
        raise InvalidInput("neighbours_per_request, n_unrelated and max_generation_prompts must be >= 0")
    rng = random.Random(seed)
    edited = {(t.subject, t.relation) for t in targets}

    current: dict[tuple[str, str], Fact] = {}
    for fact in facts:
        key = (fact.subject, fact.relation)
        if key in edited or fact.relation not in templates:
            continue
        held = current.get(key)
        if held is None or _stamp(fact) >= _stamp(held):
            current[key] = fact
    keys = sorted(current)  # independent of the input order

    by_subject: dict[str, list[tuple[str, str]]] = {}
    by_relation: dict[str, list[tuple[str, str]]] = {}
    for key in keys:
        by_subject.setdefault(key[0], []).append(key)
        by_relation.setdefault(key[1], []).append(key)

    chosen: list[tuple[str, str]] = []
    chosen_set: set[tuple[str, str]] = set()
    for target in targets:
        same_subject = list(by_subject.get(target.subject, []))
        same_relation = list(by_relation.get(target.relation, []))
        rng.shuffle(same_subject)
        rng.shuffle(same_relation)
        picked = 0
        for key in _interleave(same_subject, same_relation):
            if picked >= neighbours_per_request:
                break
            picked += 1
            if key not in chosen_set:
                chosen_set.add(key)
                chosen.append(key)

    rest = [k for k in keys if k not in chosen_set]
    unrelated = rng.sample(rest, min(n_unrelated, len(rest)))

    def item(key: tuple[str, str]) -> tuple[str, str]:
        return (templates[key[1]].render(key[0]), current[key].object)

    generation: list[str] = []
    for prompt in [t.prompt for t in targets] + [_text_prompt(text) for text in heldout_text]:
        if prompt and prompt not in generation and len(generation) < max_generation_prompts:
            generation.append(prompt)

    return RegressionSet(
        neighbourhood=tuple(item(k) for k in chosen),
        unrelated=tuple(item(k) for k in unrelated),
        heldout_text=tuple(heldout_text),
        generation_prompts=tuple(generation),
    )


def _stamp(fact: Fact) -> float:
    return fact.valid_from.timestamp() if fact.valid_from is not None else float("-inf")


def _interleave(a: list, b: list) -> list:
    out = []
    for i in range(max(len(a), len(b))):
        if i < len(a):
            out.append(a[i])
        if i < len(b):
            out.append(b[i])
    return out


def _text_prompt(text: str) -> str:
    return " ".join(text.split()[:_HELDOUT_PROMPT_WORDS])
