"""Run only what an optimised shift can change: the blocks above it, and the LM head where it is read.

A target vector δ is added to the output of block L. Everything below L (embeddings and blocks
0..L) gives the same hidden states in every optimisation step, and the loss reads the logits at a
few positions only (the answer tokens, or the fact token for the KL term). So the blocks up to L
are run once per row and their output is cached; each step replays that output and runs the
blocks above, the final norm, and the LM head at the read positions only::

    stack = UpperStack.for_model(model, "model.layers.8")           # None where replay is not possible
    cached = stack.block_outputs(input_ids, attention_mask, 32)      # [R, T, d], once
    with stack.replaying() as replay:                                # blocks 0..8 return the cache
        replay.value = cached[index]
        hidden = stack.final_hidden(input_ids[index], attention_mask[index])
    logits = stack.logits_at(hidden, rows, positions)                # [N, V]

Replay needs blocks that return their hidden state as a tensor (transformers 5 does for every
supported family); a block returning a tuple gets no replay, and the full forward runs instead.
The logits are exact: the LM head is the model's own output embedding on the final hidden state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from editing.locate.hooks import capture, get_module, stopping_after


class _PassThrough(nn.Module):
    """A block below the replayed one: its output is never read, so it hands its input on."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class _Replay(nn.Module):
    """The replayed block: returns the cached output of the real block for the rows being run."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.value is None or self.value.shape != hidden_states.shape:
            raise RuntimeError("replayed block output missing or of the wrong shape for this batch")
        return self.value.to(hidden_states.dtype)


class UpperStack:
    """The model above block `block_module`, run from that block's cached outputs."""

    def __init__(self, model: nn.Module, block_module: str, blocks: nn.ModuleList, index: int) -> None:
        self.model = model
        self.block_module = block_module
        self._blocks = blocks
        self._index = index
        self._base = getattr(model, model.base_model_prefix)
        self._head = model.get_output_embeddings()

    @classmethod
    def for_model(cls, model: nn.Module, block_module: str) -> "UpperStack | None":
        """The upper stack of `model` above `block_module`, or None where it cannot be replayed:
        the block is not an item of a ModuleList, the model has no separate LM head, or its
        logits are post-processed (soft-capping, scaling)."""
        parent_name, _, index = block_module.rpartition(".")
        if not index.isdigit() or not parent_name:
            return None
        blocks = get_module(model, parent_name)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        config = getattr(model, "config", None)
        post_processed = any(getattr(config, a, None) for a in ("final_logit_softcapping", "logit_scale", "output_multiplier"))
        base = getattr(model, getattr(model, "base_model_prefix", ""), None)
        if not isinstance(blocks, nn.ModuleList) or head is None or base is None or post_processed:
            return None
        return cls(model, block_module, blocks, int(index))

    @torch.no_grad()
    def block_outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int) -> torch.Tensor | None:
        """Block L's output hidden state for every row: [R, T, d] (None when the block returns a tuple).
        Each pass ends at block L."""
        kinds: list[bool] = []
        handle = self._blocks[self._index].register_forward_hook(lambda _m, _a, out: kinds.append(isinstance(out, torch.Tensor)))
        try:
            parts = []
            for start in range(0, input_ids.size(0), batch_size):
                with capture(self.model, [self.block_module], kind="output") as seen, \
                        stopping_after(self.model, self.block_module):
                    self._base(input_ids=input_ids[start:start + batch_size],
                               attention_mask=attention_mask[start:start + batch_size], use_cache=False)
                if not all(kinds):
                    return None
                parts.append(seen[self.block_module])
        finally:
            handle.remove()
        return torch.cat(parts)

    @contextmanager
    def replaying(self) -> Iterator[_Replay]:
        """Blocks 0..L-1 pass their input on and block L returns `replay.value`; restored on exit."""
        saved = [self._blocks[i] for i in range(self._index + 1)]
        replay = _Replay()
        try:
            for i in range(self._index):
                self._blocks[i] = _PassThrough()
            self._blocks[self._index] = replay
            yield replay
        finally:
            for i, block in enumerate(saved):
                self._blocks[i] = block

    def final_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The base model's last hidden state (after its final norm): [B, T, d]."""
        return self._base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def logits_at(self, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The LM head at (rows[i], positions[i]) only: [N, V]."""
        return self._head(hidden[rows, positions])
