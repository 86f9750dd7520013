"""PEFT LoRA adapters attached for one computation, read back as low-rank weight deltas.

The model is wrapped with `peft.get_peft_model`, trained, and unwrapped with `unload()` (which puts
the original modules back without merging), so its weights stay bit for bit what they were; every
`requires_grad` flag and the train/eval mode are restored too::

    with lora_attached(model, ["transformer.h.1.mlp.c_proj"], r=8, alpha=16) as peft_model:
        adam_steps(trainable_parameters(peft_model), loss_fn, steps=30, lr=5e-3)
        factors = lora_factors(peft_model)       # {"transformer.h.1.mlp.c_proj.weight": (u, v)}
    # model unchanged; ΔW = u @ v has the parameter's own shape (GPT-2 Conv1D: (in, out))
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from infra.errors import InvalidInput

log = logging.getLogger(__name__)

ADAPTER = "default"


@contextmanager
def lora_attached(
    model: nn.Module,
    modules: Sequence[str],
    *,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    seed: int = 0,
    fan_in_fan_out: bool | None = None,
) -> Iterator[nn.Module]:
    """Yield `model` wrapped with fresh LoRA adapters on `modules` (full module names); unwrap afterwards.

    Only the adapters are trainable inside the block. `fan_in_fan_out` defaults to whether the
    targets are GPT-2 `Conv1D` modules (weights stored as (in, out)).
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    if not modules:
        raise InvalidInput("lora: no target modules")
    known = dict(model.named_modules())
    if fan_in_fan_out is None:
        kinds = {isinstance(known[name], Conv1D) for name in modules}
        if len(kinds) != 1:
            raise InvalidInput("lora: cannot mix Conv1D and Linear targets in one adapter")
        fan_in_fan_out = kinds.pop()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(modules),
        fan_in_fan_out=fan_in_fan_out, bias="none",
    )
    devices = {p.device for p in model.parameters()}
    with torch.random.fork_rng(devices=[d for d in devices if d.type == "cuda"]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    peft_model.eval()
    try:
        yield peft_model
    finally:
        base = peft_model.unload()
        if base is not model:  # pragma: no cover - peft contract
            raise RuntimeError("peft unload() returned a different module than it wrapped")
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
        model.train(was_training)


def trainable_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _base_name(peft_name: str) -> str:
    # "base_model.model.transformer.h.1.mlp.c_proj" -> "transformer.h.1.mlp.c_proj"
    prefix = "base_model.model."
    return peft_name[len(prefix):] if peft_name.startswith(prefix) else peft_name


def lora_factors(peft_model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each adapted weight's ΔW = scaling * B @ A as factors (u, v) with u @ v in the weight's layout.

    nn.Linear weight (out, in):  u = scaling * B  [out, r],  v = A  [r, in]
    GPT-2 Conv1D weight (in, out): u = A^T [in, r],  v = scaling * B^T  [r, out]
    """
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in peft_model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict) or ADAPTER not in lora_a:
            continue
        a = module.lora_A[ADAPTER].weight.detach().float()  # [r, in]
        b = module.lora_B[ADAPTER].weight.detach().float()  # [out, r]
        scaling = float(module.scaling[ADAPTER])
        weight = module.base_layer.weight
        if module.fan_in_fan_out:
            u, v = a.t().contiguous(), (scaling * b).t().contiguous()  # [in, r], [r, out]
        else:
            u, v = (scaling * b).contiguous(), a.contiguous()  # [out, r], [r, in]
        if (u.shape[0], v.shape[1]) != tuple(weight.shape):  # pragma: no cover - layout guard
            raise InvalidInput(f"lora: factors of {name} give {(u.shape[0], v.shape[1])}, weight is {tuple(weight.shape)}")
        out[f"{_base_name(name)}.weight"] = (u.cpu(), v.cpu())
    if not out:
        raise InvalidInput("lora: no adapters found on the model")
    return out


def factor_tensors(factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`<param>::u` / `<param>::v` tensors for a `Delta`."""
    tensors: dict[str, torch.Tensor] = {}
    for param, (u, v) in factors.items():
        tensors[f"{param}::u"] = u
        tensors[f"{param}::v"] = v
    return tensors
