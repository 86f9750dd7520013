"""The contract every editor meets.

An editor *computes* an update and leaves the model unchanged; applying and reverting belong to
`Delta`. Sequential editors receive the state they carried out of the previous refresh (e.g.
AlphaEdit's accumulated keys) and return the state to carry into the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch
from torch import nn

from infra.domain import EditRequest


@dataclass(frozen=True)
class EditResult:
    """What an editor computed: tensors for a `Delta` (`<param>::dense|u|v`) plus carried state."""

    tensors: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


class Editor(Protocol):
    """Computes an edit for a batch of requests on `model` without modifying it."""

    name: str

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: Any,
        state: dict[str, torch.Tensor] | None = None,
    ) -> EditResult: ...
