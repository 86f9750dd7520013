"""What one model state answered, kept so that the same question is never asked of it twice.

A refresh evaluates the live model before its delta and the candidate after it. Once the candidate
is promoted it *is* the next refresh's live model, so that refresh's "before" pass would recompute
answers the previous "after" pass already gave: on a real model each pass takes minutes. A memo
holds, for one model state, the greedy answer per prompt, the teacher-forced score per (prompt,
answer), and whole-set figures (perplexity, fluency) per digest of their inputs. Evaluation asks the
memo first and computes only what is missing, in the same batched calls.

The memo does not know which state it belongs to: the caller keys it (the service by the head's
delta sha256, or the base model's fingerprint) and stores it beside the deltas. Every setting that
changes an answer (answer length, sampling seed and length) is part of the entry's key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["AnswerMemo"]

FORMAT = "kus-answer-memo/v1"


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


@dataclass
class AnswerMemo:
    """Answers of one model state. `asked` counts the items asked of it in this process, `computed`
    those it did not hold and had to compute."""

    greedy: dict[str, str] = field(default_factory=dict)
    scores: dict[str, tuple[float, bool]] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    asked: int = 0
    computed: int = 0

    def greedy_answers(self, prompts: Sequence[str], max_new_tokens: int,
                       compute: Callable[[list[str]], list[str]]) -> list[str]:
        """The greedy answer to each prompt; `compute` is called once, on the prompts not yet known."""
        key = lambda p: f"{max_new_tokens}\x00{p}"  # noqa: E731
        missing = list(dict.fromkeys(p for p in prompts if key(p) not in self.greedy))
        self.asked += len(set(prompts))
        if missing:
            for prompt, answer in zip(missing, compute(missing), strict=True):
                self.greedy[key(prompt)] = answer
            self.computed += len(missing)
        return [self.greedy[key(p)] for p in prompts]

    def answer_scores(self, pairs: Sequence[tuple[str, str]],
                      compute: Callable[[list[tuple[str, str]]], tuple[list[float], list[bool]]]
                      ) -> tuple[list[float], list[bool]]:
        """(mean answer NLL, every answer token the argmax) per (prompt, answer); `compute` gets the missing pairs."""
        key = lambda pair: f"{pair[0]}\x00{pair[1]}"  # noqa: E731
        missing = list(dict.fromkeys(pair for pair in pairs if key(pair) not in self.scores))
        self.asked += len(set(pairs))
        if missing:
            nll, exact = compute(missing)
            for pair, n, e in zip(missing, nll, exact, strict=True):
                self.scores[key(pair)] = (float(n), bool(e))
            self.computed += len(missing)
        return [self.scores[key(p)][0] for p in pairs], [self.scores[key(p)][1] for p in pairs]

    def figure(self, name: str, inputs: object, compute: Callable[[], float]) -> float:
        """A whole-set figure (e.g. perplexity of the held-out text), once per `inputs`."""
        key = f"{name}\x00{_digest(inputs)}"
        self.asked += 1
        if key not in self.figures:
            self.figures[key] = float(compute())
            self.computed += 1
        return self.figures[key]

    def to_bytes(self) -> bytes:
        return json.dumps({"format": FORMAT, "greedy": self.greedy,
                           "scores": {k: [n, e] for k, (n, e) in self.scores.items()},
                           "figures": self.figures}, ensure_ascii=False, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> AnswerMemo:
        """A stored memo; one in an unknown format counts as empty (it is only ever a shortcut)."""
        try:
            raw = json.loads(data)
        except ValueError:
            return cls()
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            return cls()
        return cls(greedy=dict(raw["greedy"]), scores={k: (float(n), bool(e)) for k, (n, e) in raw["scores"].items()},
                   figures={k: float(v) for k, v in raw["figures"].items()})
