"""One registry of editors: a name maps to an editor and its hyperparameter dataclass.

Per-model-family defaults live in a JSON file next to each editor (`defaults.json`, keyed by family)
and are loaded strictly: an unknown key is an error, not a silent default::

    editor = get_editor("ft")
    hparams = resolve_hparams("ft", family="gpt2", overrides={"steps": 40})
    result = editor.compute(model, tokenizer, requests, hparams)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from editing.protocol import Editor
from infra.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class EditorSpec:
    name: str
    factory: Callable[[], Editor]
    hparams_type: type
    defaults_file: Path
    summary: str


_REGISTRY: dict[str, EditorSpec] = {}


def register(spec: EditorSpec) -> None:
    """Register an editor once; names are lowercase identifiers."""
    if not spec.name.isidentifier() or spec.name.lower() != spec.name:
        raise InvalidInput(f"editor name {spec.name!r} must be a lowercase identifier")
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise InvalidInput(f"editor {spec.name!r} is already registered")
    if not dataclasses.is_dataclass(spec.hparams_type):
        raise InvalidInput(f"editor {spec.name!r}: hparams type must be a dataclass")
    _REGISTRY[spec.name] = spec


def _load_builtin() -> None:
    # Importing the editor packages registers them (one line each in their __init__).
    import editing.ft  # noqa: F401
    import editing.rome  # noqa: F401
    import editing.memit  # noqa: F401
    import editing.alphaedit  # noqa: F401
    import editing.prune  # noqa: F401
    import editing.lora  # noqa: F401
    import editing.saul  # noqa: F401
    import editing.flearning  # noqa: F401
    import editing.elder  # noqa: F401


def editor_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_spec(name: str) -> EditorSpec:
    _load_builtin()
    if name not in _REGISTRY:
        raise NotFound(f"no editor named {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_editor(name: str) -> Editor:
    return get_spec(name).factory()


def resolve_hparams(name: str, family: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """Defaults for the model family, then the caller's overrides; validated by the dataclass."""
    spec = get_spec(name)
    table = json.loads(spec.defaults_file.read_text())
    if family not in table:
        raise InvalidInput(f"editor {name!r} has no defaults for model family {family!r}; known: {sorted(table)}")
    values = dict(table[family])
    values.update(overrides or {})
    fields = {f.name for f in dataclasses.fields(spec.hparams_type)}
    unknown = set(values) - fields
    if unknown:
        raise InvalidInput(f"editor {name!r}: unknown hyperparameters {sorted(unknown)}; known: {sorted(fields)}")
    return spec.hparams_type(**values)
