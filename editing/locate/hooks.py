"""Forward hooks that read and write hidden states of named modules, removed on exit.

    with capture(model, ["transformer.h.1.mlp.c_proj"], kind="input") as seen:
        model(input_ids=ids, attention_mask=mask)
    keys = seen["transformer.h.1.mlp.c_proj"]          # [B, T, d0] input of the projection

    with add_at_positions(model, "transformer.h.3", rows, positions, vectors):
        logits = model(input_ids=ids, attention_mask=mask).logits   # block 3 output shifted at (row, pos)

Modules may return a tensor or a tuple whose first item is the hidden state (GPT-J blocks); both
are handled. Hooks are always removed, also when the forward pass raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from infra.errors import InvalidInput


def get_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise InvalidInput(f"the model has no module {name!r}")
    return modules[name]


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


@contextmanager
def capture(model: nn.Module, names: Sequence[str], kind: str = "input", detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the input (first positional argument) or output hidden state of each named module.

    The dict is filled on every forward pass (the last pass wins).
    """
    if kind not in ("input", "output"):
        raise InvalidInput(f"capture kind must be 'input' or 'output', got {kind!r}")
    seen: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            module = get_module(model, name)
            if kind == "input":

                def pre_hook(_m: nn.Module, args: tuple, kwargs: dict, _name: str = name) -> None:
                    value = args[0] if args else next(iter(kwargs.values()))
                    seen[_name] = value.detach() if detach else value

                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:

                def hook(_m: nn.Module, _args: tuple, output: Any, _name: str = name) -> None:
                    value = _hidden(output)
                    seen[_name] = value.detach() if detach else value

                handles.append(module.register_forward_hook(hook))
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def add_at_positions(
    model: nn.Module,
    name: str,
    rows: torch.Tensor,
    positions: torch.Tensor,
    vectors: torch.Tensor,
) -> Iterator[None]:
    """Add `vectors[i]` to the output hidden state of module `name` at (rows[i], positions[i]).

    rows, positions: [N] long; vectors: [N, d] (may require grad: the addition is differentiable).
    The `vectors` tensor is read at forward time, so it can be a parameter updated between passes.
    """
    module = get_module(model, name)

    def hook(_m: nn.Module, _args: tuple, output: Any) -> Any:
        hidden = _hidden(output)  # [B, T, d]
        shift = torch.zeros_like(hidden).index_put((rows, positions), vectors.to(hidden.dtype), accumulate=True)
        return _replace_hidden(output, hidden + shift)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class StopForward(Exception):
    """Raised by `stopping_after` once the module whose output is needed has run."""


@contextmanager
def stopping_after(model: nn.Module, name: str, kind: str = "output") -> Iterator[None]:
    """End every forward pass at module `name` (before it runs with `kind="input"`, after it with
    "output"): the caller reads what it needs through `capture` and the blocks above never run.

    The forward raises `StopForward`, which this context swallows; hooks registered before it (a
    `capture` entered first) have run by then."""
    module = get_module(model, name)

    def stop(*_args: Any) -> None:
        raise StopForward

    handle = module.register_forward_pre_hook(stop) if kind == "input" else module.register_forward_hook(stop)
    try:
        yield
    except StopForward:
        pass
    finally:
        handle.remove()
