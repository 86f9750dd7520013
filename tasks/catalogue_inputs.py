"""Where the refresh finds its relation templates and held-out text: the user's files, or the demo's."""

from __future__ import annotations

from infra.domain import Fact, RelationTemplates
from infra.fact_import import load_templates
from infra.settings import Settings


def templates_for(settings: Settings) -> RelationTemplates:
    if settings.templates_path is not None:
        return load_templates(settings.templates_path)
    from infra.demo.catalogue import demo_templates_path

    return load_templates(demo_templates_path())


def heldout_text_for(settings: Settings, facts: list[Fact]) -> list[str]:
    """Text whose perplexity must not drift: the user's file (one line each) or demo sentences."""
    if settings.heldout_text_path is not None:
        lines = settings.heldout_text_path.read_text().splitlines()
        return [line.strip() for line in lines if line.strip()]
    from infra.demo.catalogue import heldout_texts

    return heldout_texts(facts)


def statistics_corpus_for(settings: Settings, facts: list[Fact]) -> list[str]:
    """Generic text for key statistics and regularisers: the user's file (one text per line) or,
    for the demo world, generic catalogue sentences of the demo grammar's training split.

    Never the held-out text (that measures drift and must stay unseen by the editors) and never
    the catalogue's own prompts (C0 would then contain the very keys being edited)."""
    if settings.stats_corpus_path is not None:
        lines = settings.stats_corpus_path.read_text().splitlines()
        return [line.strip() for line in lines if line.strip()]
    from infra.demo.catalogue import generic_texts

    return generic_texts(facts)
