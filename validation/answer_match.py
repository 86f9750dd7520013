"""When does a greedy answer state a database value?

The demo model ends every answer with its end-of-text token, so its answer *is* the value or is
wrong ("Wesley Works" is not "Wesley"). A pretrained model goes on writing after the fact ("French.
She is a Canadian artist who"), so equality would count every answer wrong: on SmolLM2-135M every
generated metric and the catalogue agreement read 0 whatever the edit did. For such a model the
answer states the value when it begins with it as whole words (what follows is not a letter or a
digit), the rule the CounterFact benchmark uses.

`KUS_ANSWER_MATCH`: `exact`, `leading`, or `auto` (the default): `exact` for a model whose config
names the demo profile (trained to stop after the value), `leading` for any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infra.errors import InvalidInput

__all__ = ["AnswerMatch", "exact_answer", "leading_answer", "answer_match_for", "ANSWER_MATCHES"]

#: (greedy answer, database value) -> does the answer state the value?
AnswerMatch = Callable[[str, str], bool]

#: the profile of models that end each answer with end-of-text (the demo model's config names it)
STOPPING_PROFILES = ("demo",)


def exact_answer(answer: str, value: str) -> bool:
    """The answer is the value (a model that stops after its answer)."""
    return answer.strip() == value.strip()


def leading_answer(answer: str, value: str) -> bool:
    """The answer begins with the value as whole words (a model that goes on writing)."""
    answer, value = answer.strip(), value.strip()
    if answer == value:
        return True
    return bool(value) and answer.startswith(value) and not answer[len(value)].isalnum()


ANSWER_MATCHES: dict[str, AnswerMatch] = {"exact": exact_answer, "leading": leading_answer}


def answer_match_for(setting: str, model: Any = None) -> AnswerMatch:
    """The rule `setting` names; `auto` decides by the model's profile (exact for the demo model)."""
    if setting == "auto":
        profile = getattr(getattr(model, "config", None), "kus_profile", None)
        return exact_answer if profile in STOPPING_PROFILES else leading_answer
    if setting not in ANSWER_MATCHES:
        raise InvalidInput(f"answer_match must be auto, exact or leading, got {setting!r}")
    return ANSWER_MATCHES[setting]
