"""SAUL's training sequences: edit sentences with random facts appended, plus augmented facts.

Pure token arithmetic on lists of ids; no model. A row has three label sets: `edit` (the answer
tokens of the edit, for the loss that must go to zero), `reg` (the tokens of the random facts,
for the regulariser) and `fix` (the answer tokens of a repaired fact: a fact the live model gets
wrong that it must say again as the database does, learned from its label whatever the regulariser)::

    rows = saul_rows(edits, pool, rng, concat_facts=1, n_augment=len(edits), ...)
    batch = collate(rows, pad_id)      # input_ids, attention_mask, edit_labels, reg_labels, fix_labels  [B, T]
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

IGNORE = -100

#: (prompt ids, answer ids) of one sentence; the answer ids include the trailing eos.
Pair = tuple[list[int], list[int]]


@dataclass(frozen=True)
class Row:
    ids: list[int]
    edit_labels: list[int]
    reg_labels: list[int]
    fix_labels: list[int] | None = None  # None: no repaired fact in the row


@dataclass(frozen=True)
class SaulBatch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]
    edit_labels: torch.Tensor  # [B, T], IGNORE outside edit answers
    reg_labels: torch.Tensor  # [B, T], IGNORE outside random / augmented fact tokens
    fix_labels: torch.Tensor  # [B, T], IGNORE outside the answers of repaired facts


def _fact_labels(pair: Pair, whole: bool) -> list[int]:
    prompt, answer = pair
    return (list(prompt) if whole else [IGNORE] * len(prompt)) + list(answer)


def saul_rows(
    edits: Sequence[Pair],
    pool: Sequence[Pair],
    rng: random.Random,
    *,
    concat_facts: int,
    n_augment: int,
    augment_whole_sentence: bool,
    max_length: int,
    corpus: Sequence[Pair] = (),
    corpus_share: float = 0.0,
    near: Sequence[Pair] = (),
    near_share: float = 0.0,
    repair: Sequence[Pair] = (),
    repair_share: float = 0.0,
) -> list[Row]:
    """One row per edit (its sentence, then `concat_facts` random pool facts) and `n_augment` augmented rows.

    Sentences are joined directly: each answer already ends with eos, the sentence boundary.
    Appended facts are labelled in full (prompt and answer: "keep writing normal text after the new
    object"); augmented facts in full or answer-only. An augmented row is a generic `corpus` sentence
    (labelled in full) with probability `corpus_share`, else a pool fact. A row never exceeds
    `max_length` tokens: an appended fact that would not fit is left out. With an empty pool and
    corpus, only the edit sentences remain. With `near` facts (pool facts of the edited subjects),
    an augmented row is one of them with probability `near_share`: the facts an edit most easily
    drags along are anchored most often. With `repair` facts, an augmented row is one of them with
    probability `repair_share` (drawn first; without repair facts the draws are as before): its
    prompt is regularised like a pool fact's, its answer labelled in `fix_labels`.
    """
    rows: list[Row] = []
    for prompt, answer in edits:
        ids = list(prompt) + list(answer)
        edit = [IGNORE] * len(prompt) + list(answer)
        reg = [IGNORE] * len(ids)
        for _ in range(concat_facts if pool else 0):
            fact = pool[rng.randrange(len(pool))]
            extra = list(fact[0]) + list(fact[1])
            if len(ids) + len(extra) > max_length:
                break
            ids += extra
            edit += [IGNORE] * len(extra)
            reg += _fact_labels(fact, whole=True)
        rows.append(Row(ids, edit, reg))
    for _ in range(n_augment if (pool or corpus or repair) else 0):
        if repair and (rng.random() < repair_share or not (pool or corpus)):
            prompt, answer = repair[rng.randrange(len(repair))]
            ids = (list(prompt) + list(answer))[:max_length]
            reg = ((list(prompt) if augment_whole_sentence else [IGNORE] * len(prompt)) + [IGNORE] * len(answer))
            fix = [IGNORE] * len(prompt) + list(answer)
            rows.append(Row(ids, [IGNORE] * len(ids), reg[:max_length], fix[:max_length]))
            continue
        if near:
            u = rng.random()
            if corpus and u < corpus_share:
                fact, whole = corpus[rng.randrange(len(corpus))], True
            elif u < corpus_share + near_share or not pool:
                fact, whole = near[rng.randrange(len(near))], augment_whole_sentence
            else:
                fact, whole = pool[rng.randrange(len(pool))], augment_whole_sentence
        elif corpus and (not pool or rng.random() < corpus_share):
            fact, whole = corpus[rng.randrange(len(corpus))], True
        else:
            fact, whole = pool[rng.randrange(len(pool))], augment_whole_sentence
        ids = list(fact[0]) + list(fact[1])
        rows.append(Row(ids[:max_length], [IGNORE] * min(len(ids), max_length), _fact_labels(fact, whole)[:max_length]))
    return rows


def collate(rows: Sequence[Row], pad_id: int) -> SaulBatch:
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    edit = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    reg = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    fix = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.ids)
        ids[i, :n] = torch.tensor(r.ids)
        mask[i, :n] = 1
        edit[i, :n] = torch.tensor(r.edit_labels)
        reg[i, :n] = torch.tensor(r.reg_labels)
        if r.fix_labels is not None:
            fix[i, :n] = torch.tensor(r.fix_labels)
    return SaulBatch(ids, mask, edit, reg, fix)


def labelled_positions(labels: torch.Tensor) -> int:
    """How many next-token predictions `labels` (not shifted) asks for: the count the sums below divide by."""
    return int((labels[:, 1:] != IGNORE).sum())


def token_ce_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token CE over labelled positions, number of them); labels are not shifted."""
    shifted = logits[:, :-1, :].reshape(-1, logits.size(-1))  # [B*(T-1), V]
    target = labels[:, 1:].reshape(-1)  # [B*(T-1)]
    total = torch.nn.functional.cross_entropy(shifted.float(), target, ignore_index=IGNORE, reduction="sum")
    return total, (target != IGNORE).sum()


def token_kl_sums(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of KL(teacher || student) of the next-token distributions at labelled positions, number
    of them): the whole distribution is kept, not only its argmax (end-of-text included)."""
    mask = labels[:, 1:] != IGNORE  # [B, T-1]
    student = torch.log_softmax(logits[:, :-1, :][mask].float(), dim=-1)  # [N, V]
    teacher = torch.log_softmax(teacher_logits[:, :-1, :][mask].float(), dim=-1)
    total = torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="sum")
    return total, mask.sum()
