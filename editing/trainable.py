"""Temporarily make only some parameters trainable, restoring every flag afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

from torch import nn


@contextmanager
def only_these_trainable(model: nn.Module, names: Iterable[str]) -> Iterator[None]:
    wanted = set(names)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(name in wanted)
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
