"""Realistic batches of catalogue changes for the demo world, as an ERP system would emit them.

Each batch is computed on top of the catalogue as it is now, so batches can be chained::

    facts = generate_catalogue()
    batch = next_change_batch(facts, batch_no=1)   # price changes, new warranty terms, one rename
    facts = apply_changes(facts, batch)
    batch2 = next_change_batch(facts, batch_no=2)  # still real changes on top of batch 1
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from infra.demo.catalogue import (
    PRICE_LADDER,
    RENAME_HEADS,
    RENAME_SUFFIXES,
    RENAME_TAILS,
    WARRANTY_TERMS,
    format_price,
    nearest_price_index,
)
from infra.domain import Fact
from infra.errors import InvalidInput

SOURCE = "demo-erp"

# New manufacturer names are built from syllables no product line or demo manufacturer uses
# (the generic text knows them only from other companies' names).
_EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


def apply_changes(current: Sequence[Fact], changes: Sequence[Fact]) -> list[Fact]:
    """The catalogue after `changes`: same order as `current`, changed facts replaced, new ones appended."""
    by_key = {(c.subject, c.relation): c for c in changes}
    out = [by_key.pop((f.subject, f.relation), f) for f in current]
    return out + list(by_key.values())


def _new_manufacturer_name(rng: random.Random, taken: set[str], subjects: Sequence[str]) -> str:
    words = {w for s in subjects for w in s.split()}
    candidates = [h + t + s for h in RENAME_HEADS for t in RENAME_TAILS for s in RENAME_SUFFIXES]
    rng.shuffle(candidates)
    for name in candidates:
        if name not in taken and name.split()[0] not in words:
            return name
    raise InvalidInput("no unused manufacturer name left for a rename")


def next_change_batch(current: Sequence[Fact], batch_no: int, seed: int = 0) -> list[Fact]:
    """A realistic batch of catalogue changes on top of `current` (the facts as they are now).

    Args:
        current: the catalogue as it is now (e.g. after earlier batches were applied).
        batch_no: which batch; a different number gives a different batch.
        seed: varies the whole sequence of batches.

    Returns:
        Only the new values (same subject and relation, new object), source "demo-erp": 10-20 price
        changes, 2-5 new warranty terms, and one renamed manufacturer (every product of that
        manufacturer gets the new name). Every returned object differs from the current one.
    """
    if batch_no < 0:
        raise InvalidInput(f"batch_no must be >= 0, got {batch_no}")
    rng = random.Random(f"demo-changes:{seed}:{batch_no}")
    valid_from = _EPOCH + timedelta(weeks=batch_no)
    by_rel: dict[str, dict[str, str]] = {}
    for fact in current:
        by_rel.setdefault(fact.relation, {})[fact.subject] = fact.object
    prices = by_rel.get("price", {})
    warranties = by_rel.get("warranty", {})
    makers = by_rel.get("manufacturer", {})
    if not prices or not warranties or not makers:
        raise InvalidInput("a change batch needs price, warranty and manufacturer facts in `current`")

    changes: list[Fact] = []
    n_price = min(len(prices), rng.randint(10, 20))
    for subject in rng.sample(sorted(prices), n_price):
        i = nearest_price_index(prices[subject])
        # Mostly price rises, some discounts; one or two rungs of the ladder.
        step = rng.choice((1, 1, 2, -1, -2)) if 1 < i < len(PRICE_LADDER) - 2 else (1 if i <= 1 else -1)
        new = format_price(PRICE_LADDER[min(max(i + step, 0), len(PRICE_LADDER) - 1)])
        if new == prices[subject]:
            new = format_price(PRICE_LADDER[i - 1 if i > 0 else i + 1])
        changes.append(Fact(subject, "price", new, valid_from=valid_from, source=SOURCE))

    n_warranty = min(len(warranties), rng.randint(2, 5))
    for subject in rng.sample(sorted(warranties), n_warranty):
        terms = [t for t in WARRANTY_TERMS if t != warranties[subject]]
        changes.append(Fact(subject, "warranty", rng.choice(terms), valid_from=valid_from, source=SOURCE))

    old_name = rng.choice(sorted(set(makers.values())))
    new_name = _new_manufacturer_name(rng, set(makers.values()), sorted(makers))
    for subject in sorted(s for s, m in makers.items() if m == old_name):
        changes.append(Fact(subject, "manufacturer", new_name, valid_from=valid_from, source=SOURCE))
    return changes
