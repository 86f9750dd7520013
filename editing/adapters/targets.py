"""Module names an editor trains: block-relative module names (per family) x layer indices.

    names = target_modules(model, layers=(1,), modules=("mlp.c_fc", "mlp.c_proj"))
    # ['transformer.h.1.mlp.c_fc', 'transformer.h.1.mlp.c_proj']
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from editing.architecture import layout_of, num_layers
from infra.errors import InvalidInput


def target_modules(model: nn.Module, layers: Sequence[int], modules: Sequence[str], editor: str = "editor") -> list[str]:
    """Full module names `<block>.<module>` for every layer; every one must exist in `model`."""
    layout = layout_of(model)
    depth = num_layers(model)
    bad = [layer for layer in layers if not 0 <= layer < depth]
    if bad:
        raise InvalidInput(f"{editor}: layers {bad} out of range for a {depth}-layer model")
    names = [f"{layout.block_module(layer)}.{module}" for layer in layers for module in modules]
    known = dict(model.named_modules())
    missing = [name for name in names if name not in known]
    if missing:
        raise InvalidInput(f"{editor}: the model has no modules {missing} (family {layout.family!r})")
    return names


def weight_names(module_names: Sequence[str]) -> list[str]:
    return [f"{name}.weight" for name in module_names]
