"""One registry of editors: a name maps to an editor and its hyperparameter dataclass.

Defaults live in a JSON file next to each editor (`defaults.json`), keyed by *profile*: a model
family ("gpt2", "llama", ...; values from the papers, with the depth they were chosen for as
`_depth`) or a named model ("demo", the model the demo builds). They are loaded strictly: an
unknown key is an error, not a silent default::

    editor = get_editor("ft")
    hparams = hparams_for_model("ft", model, overrides={"steps": 40})   # the model's profile and depth
    hparams = resolve_hparams("ft", "demo", overrides={"steps": 40})    # a profile by name
    result = editor.compute(model, tokenizer, requests, hparams)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from editing.protocol import Editor
from infra.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EditorSpec:
    """One registered editor.

    cumulative:         it can compute one delta from the base model over every change since it
                        (False for ELDER: its lifelong memory is the sequential chain itself);
    prefers_cumulative: the `auto` edit mode uses cumulative for it (the locate-and-edit family:
                        per-fact target vectors are cached, so a refresh costs its new facts plus one
                        closed-form solve).
    """

    name: str
    factory: Callable[[], Editor]
    hparams_type: type
    defaults_file: Path
    summary: str
    cumulative: bool = True
    prefers_cumulative: bool = False


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
    import editing.ultraedit  # noqa: F401


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


def parse_plan(plan: str | Sequence[str]) -> list[str]:
    """An editor plan ("alphaedit,saul" or a list): registered editors, in order, each at most once."""
    names = [p.strip() for p in (plan.split(",") if isinstance(plan, str) else plan) if p and p.strip()]
    if not names:
        raise InvalidInput("an editor plan needs at least one editor")
    for name in names:
        get_spec(name)
    if len(set(names)) != len(names):
        raise InvalidInput(f"editor plan {','.join(names)!r} names an editor twice")
    if len(names) > 1:
        unmergeable = [n for n in names if not get_spec(n).cumulative]
        if unmergeable:
            raise InvalidInput(f"{', '.join(unmergeable)} must be the only editor of a plan (its delta is served unmerged)")
    return names


def resolve_mode(plan: Sequence[str], mode: str) -> str:
    """The edit mode a refresh with this plan uses: `mode`, or for "auto" what the first editor prefers."""
    if mode not in ("auto", "sequential", "cumulative"):
        raise InvalidInput(f"edit mode must be auto, sequential or cumulative, got {mode!r}")
    specs = [get_spec(name) for name in plan]
    if mode == "auto":
        return "cumulative" if specs[0].prefers_cumulative and all(s.cumulative for s in specs) else "sequential"
    if mode == "cumulative" and not all(s.cumulative for s in specs):
        raise InvalidInput(f"{', '.join(s.name for s in specs if not s.cumulative)} cannot edit in cumulative mode")
    return mode


#: Hyperparameter fields that name block indices; a profile's `_depth` rescales them to the model's depth.
LAYER_FIELDS = ("layers", "layer", "query_layer")
DEPTH_KEY = "_depth"


def defaults_table(name: str) -> dict[str, dict[str, Any]]:
    """The editor's defaults by profile, as stored in its `defaults.json`."""
    return json.loads(get_spec(name).defaults_file.read_text())


def scale_layers(values: Mapping[str, Any], reference_depth: int, depth: int) -> dict[str, Any]:
    """Layer fields chosen for a `reference_depth`-layer model, mapped to the same relative depth of a
    `depth`-layer one (first stays first, last stays last); lists lose the duplicates this makes."""
    def one(layer: int) -> int:
        if reference_depth <= 1:
            return 0
        return min(depth - 1, max(0, round(int(layer) * (depth - 1) / (reference_depth - 1))))

    out = dict(values)
    for field_name in LAYER_FIELDS:
        if field_name not in out:
            continue
        value = out[field_name]
        out[field_name] = sorted({one(v) for v in value}) if isinstance(value, (list, tuple)) else one(value)
    return out


def resolve_hparams(name: str, profile: str, overrides: Mapping[str, Any] | None = None, depth: int | None = None) -> Any:
    """Defaults of a profile (a model family, or a named model such as "demo"), then the caller's overrides.

    With `depth`, layer choices are rescaled from the depth the profile's defaults were chosen for
    (its `_depth` entry) to the model's; overrides are taken as they are. Validated by the dataclass.
    """
    spec = get_spec(name)
    table = defaults_table(name)
    if profile not in table:
        raise InvalidInput(f"editor {name!r} has no defaults for profile {profile!r}; known: {sorted(table)}")
    values = dict(table[profile])
    reference = values.pop(DEPTH_KEY, None)
    if depth is not None and reference is not None and int(reference) != depth:
        values = scale_layers(values, int(reference), depth)
    values.update(overrides or {})
    fields = {f.name for f in dataclasses.fields(spec.hparams_type)}
    unknown = set(values) - fields
    if unknown:
        raise InvalidInput(f"editor {name!r}: unknown hyperparameters {sorted(unknown)}; known: {sorted(fields)}")
    return spec.hparams_type(**values)


def hparams_for_model(name: str, model: Any, overrides: Mapping[str, Any] | None = None) -> Any:
    """`resolve_hparams` for a loaded model: its profile (`editing.architecture.profile_of`) and depth.

    A model that names its own profile (e.g. "smollm2", set by `kus models pull`) gets the editor's
    defaults measured on it; an editor not yet measured there falls back to the model's family
    (the papers' values), and the log says so.
    """
    from editing.architecture import family_of, num_layers, profile_of

    profile = profile_of(model)
    if profile not in defaults_table(name):
        family = family_of(model)
        if profile != family and family in defaults_table(name):
            log.info("%s has no defaults measured on profile %r; using the %r family's", name, profile, family)
            profile = family
    return resolve_hparams(name, profile, overrides, depth=num_layers(model))
