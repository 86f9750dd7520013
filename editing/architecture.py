"""Where the editable modules live in each supported transformers architecture.

Locate-and-edit and constrained fine-tuning both treat an MLP output projection as the memory to
edit. Module names differ per family; this module maps a loaded model to its family's layout::

    layout = layout_of(model)
    name = layout.mlp_out_weight(1)   # 'transformer.h.1.mlp.c_proj.weight' for GPT-2
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from infra.errors import InvalidInput


@dataclass(frozen=True)
class ModelLayout:
    """Name templates for one architecture family; `{layer}` is replaced by the block index."""

    family: str
    block: str
    mlp_out: str
    #: GPT-2 stores Conv1D weights as (in, out); every other family uses nn.Linear's (out, in).
    transposed_weights: bool

    def mlp_out_module(self, layer: int) -> str:
        return self.mlp_out.format(layer=layer)

    def mlp_out_weight(self, layer: int) -> str:
        return f"{self.mlp_out_module(layer)}.weight"

    def block_module(self, layer: int) -> str:
        return self.block.format(layer=layer)


LAYOUTS: dict[str, ModelLayout] = {
    "gpt2": ModelLayout("gpt2", "transformer.h.{layer}", "transformer.h.{layer}.mlp.c_proj", True),
    "gptj": ModelLayout("gptj", "transformer.h.{layer}", "transformer.h.{layer}.mlp.fc_out", False),
    "gpt_neox": ModelLayout("gpt_neox", "gpt_neox.layers.{layer}", "gpt_neox.layers.{layer}.mlp.dense_4h_to_h", False),
    "llama": ModelLayout("llama", "model.layers.{layer}", "model.layers.{layer}.mlp.down_proj", False),
}

#: model_type values (config.model_type) that share a layout.
FAMILY_OF_MODEL_TYPE: dict[str, str] = {
    "gpt2": "gpt2",
    "gptj": "gptj",
    "gpt_neox": "gpt_neox",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
}


def family_of(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = FAMILY_OF_MODEL_TYPE.get(str(model_type))
    if family is None:
        raise InvalidInput(
            f"unsupported architecture {model_type!r}; supported model types: {sorted(FAMILY_OF_MODEL_TYPE)}"
        )
    return family


#: Config attribute naming a model's own defaults profile (the demo model sets it to "demo").
PROFILE_ATTRIBUTE = "kus_profile"


def profile_of(model: nn.Module) -> str:
    """Which editor defaults suit `model`: the profile its config names, else its family.

    Defaults tuned on the 4-layer demo model must not reach a real GPT-2, so the demo model
    carries its own profile in its config.
    """
    named = getattr(getattr(model, "config", None), PROFILE_ATTRIBUTE, None)
    return str(named) if named else family_of(model)


def layout_of(model: nn.Module) -> ModelLayout:
    return LAYOUTS[family_of(model)]


def num_layers(model: nn.Module) -> int:
    config = model.config  # type: ignore[attr-defined]
    for attr in ("n_layer", "num_hidden_layers"):
        if hasattr(config, attr):
            return int(getattr(config, attr))
    raise InvalidInput("cannot tell the number of layers from the model config")
