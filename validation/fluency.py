"""Generation fluency as n-gram entropy (methods.md 1.1, "Generation Entropy").

For one text: ``GE = H2/3 + 2*H3/3`` where ``H_n`` is the Shannon entropy (base 2) of the
frequency distribution of its n-grams over whitespace tokens. A degenerate, repetitive model
scores low; :func:`ngram_entropy` is the mean over texts (not x100)::

    ngram_entropy(["a b a b"])  # H2 = 0.918 (ab x2, ba x1), H3 = 1.0 -> 0.973
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

__all__ = ["ngram_entropy", "text_ngram_entropy"]


def _entropy(tokens: Sequence[str], n: int) -> float:
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    if total == 0:
        return 0.0
    return -sum((c / total) * math.log2(c / total) for c in grams.values())


def text_ngram_entropy(text: str) -> float:
    """``H2/3 + 2*H3/3`` of one text; 0.0 for a text too short to have a bigram."""
    tokens = text.split()
    return _entropy(tokens, 2) / 3 + 2 * _entropy(tokens, 3) / 3


def ngram_entropy(texts: Sequence[str]) -> float:
    """Mean over `texts` of :func:`text_ngram_entropy`; NaN when `texts` is empty."""
    if len(texts) == 0:
        return math.nan
    return sum(text_ngram_entropy(t) for t in texts) / len(texts)
