"""The demo world: a synthetic product catalogue, its change feed, and a small LM that memorised it.

    from infra.demo import generate_catalogue, load_demo_templates, ensure_demo_model, DemoModelConfig

    facts = generate_catalogue()
    report = ensure_demo_model(Path("var/models/demo"), facts, load_demo_templates(), DemoModelConfig.demo())
"""

from infra.demo.catalogue import (
    demo_templates_path,
    generate_catalogue,
    generic_texts,
    heldout_texts,
    load_demo_templates,
)
from infra.demo.changes import apply_changes, next_change_batch

_MODEL_BUILDER_NAMES = {"DemoModelConfig", "DemoModelReport", "build_demo_model", "ensure_demo_model", "fact_accuracy"}


def __getattr__(name: str):  # noqa: ANN202 - lazy, so the catalogue imports without torch
    if name in _MODEL_BUILDER_NAMES:
        from infra.demo import model_builder

        return getattr(model_builder, name)
    raise AttributeError(f"module 'infra.demo' has no attribute {name!r}")


__all__ = [
    "DemoModelConfig",
    "DemoModelReport",
    "apply_changes",
    "build_demo_model",
    "demo_templates_path",
    "ensure_demo_model",
    "fact_accuracy",
    "generate_catalogue",
    "generic_texts",
    "heldout_texts",
    "load_demo_templates",
    "next_change_batch",
]
