"""The contract every editor meets.

An editor *computes* an update and leaves the model unchanged; applying and reverting belong to
`Delta`. Sequential editors receive the state they carried out of the previous refresh (e.g.
AlphaEdit's accumulated keys) in `EditContext.state` and return the state to carry into the next
one in `EditResult.state`; the service stores it in the delta (`state::<name>` tensors).

Adding an editor: a package `editing/<name>/` with `hparams.py` (frozen dataclass validated in
`__post_init__`), `core.py` (pure tensor math), `editor.py` (the `Editor`), `defaults.json` (per
model family), and one `register(EditorSpec(...))` call in its `__init__.py`; then one import line
in `editing.registry._load_builtin`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch
from torch import nn

from infra.domain import EditRequest


class BlobCache(Protocol):
    """Content cache for expensive, reusable artefacts (e.g. key covariance statistics)."""

    def get_blob(self, key: str) -> bytes | None: ...

    def put_blob(self, key: str, data: bytes) -> str: ...


class MemoryBlobCache:
    """A `BlobCache` in a dict, for one process's runs (benchmarks, tests); the service uses its delta store."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def get_blob(self, key: str) -> bytes | None:
        return self.blobs.get(key)

    def put_blob(self, key: str, data: bytes) -> str:
        self.blobs[key] = bytes(data)
        return key


@dataclass(frozen=True)
class EditContext:
    """Everything an editor may use besides the model and the requests; all optional.

    state:             tensors carried out of the previous deltas in the chain (sequential editing)
    cache:             where to keep reusable statistics, keyed by `model_fingerprint`
    fact_pool:         (prompt, answer) pairs the model knows and must keep, for regularisers and forgetting
    repair_pool:       (prompt, database value) pairs the live model gets wrong although the base model, or
                       an earlier promoted edit, had them right: drift to undo (editors that rehearse facts)
    corpus:            generic text (never the held-out text) for key statistics and regularisers
    model_fingerprint: the *base* model's fingerprint (statistics belong to the base)
    base_weights:      a context manager under which the model holds the base weights; statistics
                       cached under `model_fingerprint` are computed inside it (None: the model is the base)
    from_base:         the model given to `compute` *is* the base model, so per-fact work (target
                       vectors) may be cached under `model_fingerprint` and reused by later refreshes
    """

    state: dict[str, torch.Tensor] = field(default_factory=dict)
    cache: BlobCache | None = None
    fact_pool: tuple[tuple[str, str], ...] = ()
    repair_pool: tuple[tuple[str, str], ...] = ()
    corpus: tuple[str, ...] = ()
    model_fingerprint: str = ""
    show_progress: bool = False
    base_weights: Callable[[], AbstractContextManager[None]] | None = None
    from_base: bool = False


@dataclass(frozen=True)
class EditResult:
    """What an editor computed: tensors for a `Delta` (`<param>::dense|u|v`) plus carried state.

    `apply_kind` names how the delta is applied: "weights" (added to parameters) or a kind
    registered with `editing.delta.register_applier` (modules served unmerged).
    """

    tensors: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    apply_kind: str = "weights"
    #: requests the editor knows it did not write (index into the requests -> why), e.g. a locate
    #: editor's target vector that never reached the answer; the service routes them onwards
    unwritten: dict[int, str] = field(default_factory=dict)


class Editor(Protocol):
    """Computes an edit for a batch of requests on `model` without modifying it."""

    name: str

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: Any,
        context: EditContext | None = None,
    ) -> EditResult: ...
