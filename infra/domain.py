"""Plain domain types shared by every layer.

These are frozen dataclasses with no dependency beyond the standard library, so
`editing/` and `validation/` can use them from a notebook with no database::

    fact = Fact("Acme X100", "price", "$199")
    template = RelationTemplate("price", "The price of {subject} is", ("{subject} costs",))
    template.prompt(fact.subject)  # 'The price of Acme X100 is'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Fact:
    """One (subject, relation, object) triple as the source system holds it."""

    subject: str
    relation: str
    object: str
    valid_from: datetime | None = None
    source: str = "unknown"


@dataclass(frozen=True)
class FactChange:
    """One row of the change feed: a fact's object moved from `old_object` to `new_object`.

    `old_object` is None for a brand-new fact.
    """

    change_id: int
    subject: str
    relation: str
    old_object: str | None
    new_object: str
    changed_at: datetime
    changed_by: str = "unknown"


@dataclass(frozen=True)
class LedgerEntry:
    """A fact whose accepted value differs from the value the base model was built on.

    `base` is None for a fact that is new since the base model (nothing to overwrite);
    `change_id` is the feed row that set `value`.
    """

    subject: str
    relation: str
    value: str
    base: str | None
    change_id: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.subject, self.relation)


@dataclass(frozen=True)
class RelationTemplate:
    """How one relation is asked: a prompt template and paraphrases, each with `{subject}`."""

    relation: str
    prompt: str
    paraphrases: tuple[str, ...]
    answer_format: str = "{object}"

    def render(self, subject: str) -> str:
        return self.prompt.format(subject=subject)

    def render_paraphrases(self, subject: str) -> tuple[str, ...]:
        return tuple(p.format(subject=subject) for p in self.paraphrases)


@dataclass(frozen=True)
class RelationTemplates:
    """All relation templates of a catalogue, keyed by relation name."""

    templates: dict[str, RelationTemplate] = field(default_factory=dict)

    def __getitem__(self, relation: str) -> RelationTemplate:
        return self.templates[relation]

    def __contains__(self, relation: object) -> bool:
        return relation in self.templates

    def relations(self) -> list[str]:
        return sorted(self.templates)


@dataclass(frozen=True)
class EditRequest:
    """What an editor consumes: write `target_new` as the answer to `prompt` about `subject`.

    `prompt` is the rendered prompt (subject filled in) and ends where the object starts.
    `paraphrases` and `neighbours` are rendered prompts used for evaluation only.
    `neighbours` pairs a prompt with the answer it must keep.
    """

    subject: str
    relation: str
    prompt: str
    target_new: str
    target_true: str | None = None
    paraphrases: tuple[str, ...] = ()
    neighbours: tuple[tuple[str, str], ...] = ()
