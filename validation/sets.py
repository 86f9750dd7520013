"""Target and regression sets: what an edit must achieve and what it must not break.

Usage::

    targets = ledger_targets(ledger, live_values, base_values, templates)   # what this refresh changes
    requests = ledger_requests(ledger, templates)          # every edit since the base (cumulative mode)
    regression = build_regression_set(facts, targets, templates, heldout_text=texts, seed=0)
    agreement = build_agreement_set(facts, ledger, templates, sample_size=1000, seed=0)

The regression set never contains a (subject, relation) being edited, and is a pure function of
its arguments (the same facts, targets and seed give the same set, whatever the facts' order).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from infra.domain import EditRequest, Fact, FactChange, LedgerEntry, RelationTemplates
from infra.errors import InvalidInput

__all__ = [
    "RegressionSet",
    "AgreementSet",
    "build_target_set",
    "ledger_targets",
    "ledger_requests",
    "build_regression_set",
    "build_agreement_set",
]

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


def _request(subject: str, relation: str, new: str, old: str | None, templates: RelationTemplates) -> EditRequest:
    if relation not in templates:
        raise InvalidInput(f"relation {relation!r} of {subject!r} has no template; known: {templates.relations()}")
    template = templates[relation]
    return EditRequest(subject=subject, relation=relation, prompt=template.render(subject), target_new=new,
                       target_true=old, paraphrases=template.render_paraphrases(subject))


def ledger_targets(
    ledger: Sequence[LedgerEntry],
    live: Mapping[tuple[str, str], str],
    base: Mapping[tuple[str, str], str | None],
    templates: RelationTemplates,
) -> list[EditRequest]:
    """What a refresh must change in the live model, one request per fact, in feed order.

    The live model says `live[key]` for a fact its deltas taught it, else the base value. Every
    fact whose database value (its ledger value, or its base value when it is not in the ledger)
    differs from that is a target: new changes, changes a rejected or rolled-back run never
    delivered, and facts changed back to their base value (`base` must hold those keys) alike.
    ``target_true`` is what the live model says now.
    """
    return [_request(key[0], key[1], new, says, templates) for key, new, says in outstanding_facts(ledger, live, base)]


def outstanding_facts(
    ledger: Iterable[LedgerEntry],
    live: Mapping[tuple[str, str], str],
    base: Mapping[tuple[str, str], str | None],
) -> Iterator[tuple[tuple[str, str], str, str | None]]:
    """(key, value the database holds, what the live model says) of each :func:`ledger_targets`
    target, in the same order, without rendering prompts: counting them costs no strings."""
    taught_and_in_ledger: set[tuple[str, str]] = set()  # one pass: `ledger` may be a stream
    for entry in ledger:
        if entry.key in live:
            taught_and_in_ledger.add(entry.key)
        says = live.get(entry.key, entry.base)
        if says != entry.value:
            yield entry.key, entry.value, says
    for key, says in sorted(live.items()):
        if key in taught_and_in_ledger:
            continue
        if key not in base:
            raise InvalidInput(f"the live model was edited on {key} but its base value is unknown")
        original = base[key]
        if original is not None and says != original:
            yield key, original, says


def ledger_requests(ledger: Sequence[LedgerEntry], templates: RelationTemplates) -> list[EditRequest]:
    """Every ledger fact as an edit of the base model (``target_true`` = the base value)."""
    return [_request(e.subject, e.relation, e.value, e.base, templates) for e in ledger]


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
    exclude: Collection[tuple[str, str]] = (),
) -> RegressionSet:
    """Neighbourhood and unrelated facts, held-out text and generation prompts for `targets`.

    - Candidates are the facts whose (subject, relation) is neither edited nor in `exclude` (facts
      earlier refreshes changed, judged by catalogue agreement instead) and whose relation has a
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
    edited = {(t.subject, t.relation) for t in targets} | set(exclude)

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


@dataclass(frozen=True)
class AgreementSet:
    """Catalogue facts whose greedy answers are compared with the database: (prompt, value, relation).

    `changed`: the ledger facts (their value differs from what the base model was built on): every
    one the run changes, and the others up to a fixed, seeded sample; `changed_left_out` counts the
    ledger facts past that sample (0 while the ledger is small);
    `unchanged`: a fixed, seeded sample of the facts that still hold their base value.
    """

    changed: tuple[tuple[str, str, str], ...]
    unchanged: tuple[tuple[str, str, str], ...]
    changed_left_out: int = 0


def _sample_rank(seed: int, subject: str, relation: str) -> str:
    return hashlib.sha256(f"{seed}|{subject}|{relation}".encode()).hexdigest()


def build_agreement_set(
    facts: Sequence[Fact],
    ledger: Sequence[LedgerEntry],
    templates: RelationTemplates,
    sample_size: int = 1000,
    seed: int = 0,
    also_changed: Sequence[EditRequest] = (),
    deferred: Collection[tuple[str, str]] = (),
) -> AgreementSet:
    """The changed facts, and up to `sample_size` unchanged ones stratified by relation.

    Changed facts: every fact the refresh changes (`also_changed`), and up to `sample_size` of the
    ledger's other facts (all of them while the ledger is that small, else a fixed sample ranked
    like the unchanged one): the work of a refresh stays bounded however long the ledger grows.
    `also_changed`: the facts the refresh changes; those not in the ledger (changed back to their base
    value) count as changed facts of this refresh, with their new value.
    `deferred`: (subject, relation) of changes left to later refreshes (over the per-run cap): scored
    neither as changed nor as unchanged facts.

    The unchanged sample is fixed for a seed: facts are ranked by a hash of (seed, subject,
    relation) within their relation, and each relation contributes its share of `sample_size`
    (by its size in the catalogue) from the top of its ranking, skipping facts now in the ledger.
    So the same facts are sampled refresh after refresh, and a product added later changes the
    sample only where it ranks.
    """
    if sample_size < 0:
        raise InvalidInput(f"sample_size must be >= 0, got {sample_size}")
    deferred = set(deferred)
    changed_keys = {e.key for e in ledger}
    in_run = {(r.subject, r.relation) for r in also_changed}
    scored = [e for e in ledger if e.relation in templates and e.key not in deferred]
    earlier = [e for e in scored if e.key not in in_run]
    left_out = max(0, len(earlier) - sample_size)
    if left_out:
        kept = {e.key for e in sorted(earlier, key=lambda e: _sample_rank(seed, *e.key))[:sample_size]}
        scored = [e for e in scored if e.key in in_run or e.key in kept]
    changed = tuple(
        (templates[e.relation].render(e.subject), e.value, e.relation) for e in scored
    ) + tuple(
        (r.prompt, r.target_new, r.relation) for r in also_changed
        if (r.subject, r.relation) not in changed_keys and (r.subject, r.relation) not in deferred
    )
    changed_keys |= {(r.subject, r.relation) for r in also_changed} | deferred
    by_relation: dict[str, list[Fact]] = {}
    for fact in facts:
        if fact.relation in templates:
            by_relation.setdefault(fact.relation, []).append(fact)
    total = sum(len(v) for v in by_relation.values())
    unchanged: list[tuple[str, str, str]] = []
    for relation in sorted(by_relation):
        members = by_relation[relation]
        share = len(members) if sample_size >= total else round(sample_size * len(members) / max(total, 1))
        ranked = sorted(members, key=lambda f: _sample_rank(seed, f.subject, f.relation))
        picked = [f for f in ranked[:share] if (f.subject, f.relation) not in changed_keys]
        unchanged.extend((templates[relation].render(f.subject), f.object, relation) for f in picked)
    return AgreementSet(changed=changed, unchanged=tuple(unchanged), changed_left_out=left_out)


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
