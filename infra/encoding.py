"""Token ids for prompts, answers and texts, and padding: the one convention of the whole service.

Every editor trains on these ids, and the scorer, the serving path (`kus ask`) and the demo model
builder read them, so a model is edited exactly as it is later asked::

    prompt_ids, answer_ids = encode_pair(tok, "The price of Acme X100 is", "$199", eos=True)
    ids, mask = right_pad([prompt_ids + answer_ids], pad_id(tok))

- A prompt keeps the tokenizer's special tokens (a BOS where the model family uses one, as on
  LLaMA; none on GPT-2), minus an end-of-text token some tokenizers append by themselves.
- An answer is ``" " + answer``. Its ids come from the encoding of the whole text
  ``prompt + " " + answer`` when the prompt's ids are a prefix of it (what the model sees when it
  reads or writes the answer after the prompt); otherwise ``" " + answer`` is encoded on its own.
- A learned answer ends with the end-of-text token, so the model also stops after it.
- Padding uses the pad id, else the eos id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from infra.errors import InvalidInput

__all__ = [
    "pad_id",
    "encode_prompt",
    "encode_prompt_with_offsets",
    "encode_answer",
    "encode_pair",
    "encode_text",
    "right_pad",
    "left_pad",
]


def pad_id(tokenizer: Any) -> int:
    """The id padding is written with: pad, else eos."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise InvalidInput("the tokenizer has neither a pad token nor an eos token")
    return int(pad)


def _strip_appended_eos(tokenizer: Any, text: str, ids: list[int]) -> int:
    """How many trailing ids to drop: 1 when the tokenizer appended an eos the text does not contain."""
    eos = tokenizer.eos_token_id
    if eos is not None and ids and ids[-1] == eos and not text.endswith(tokenizer.eos_token or "\0"):
        return 1
    return 0


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """A prompt's ids with the tokenizer's special tokens (see the module docstring)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    ids = ids[: len(ids) - _strip_appended_eos(tokenizer, text, ids)]
    if not ids:
        raise InvalidInput(f"prompt {text!r} encodes to no tokens")
    return ids


def encode_prompt_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """`encode_prompt` plus each token's character span in `text` (for finding the subject's tokens)."""
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    drop = _strip_appended_eos(tokenizer, text, ids)
    ids, offsets = ids[: len(ids) - drop], offsets[: len(offsets) - drop]
    if not ids:
        raise InvalidInput(f"prompt {text!r} encodes to no tokens")
    return ids, offsets  # type: ignore[return-value]


def encode_answer(tokenizer: Any, prompt: str, answer: str, prompt_ids: Sequence[int] | None = None) -> list[int]:
    """The ids of ``" " + answer`` as they follow `prompt` (no eos)."""
    p_ids = list(prompt_ids) if prompt_ids is not None else encode_prompt(tokenizer, prompt)
    text = prompt + " " + answer
    full = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    full = full[: len(full) - _strip_appended_eos(tokenizer, text, full)]
    if full[: len(p_ids)] == p_ids and len(full) > len(p_ids):
        a_ids = full[len(p_ids):]
    else:
        a_ids = list(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
    if not a_ids:
        raise InvalidInput(f"answer {answer!r} encodes to no tokens")
    return a_ids


def encode_pair(tokenizer: Any, prompt: str, answer: str, eos: bool = False) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids), the answer followed by the end-of-text token when `eos`."""
    p_ids = encode_prompt(tokenizer, prompt)
    a_ids = encode_answer(tokenizer, prompt, answer, p_ids)
    if eos and tokenizer.eos_token_id is not None:
        a_ids = a_ids + [int(tokenizer.eos_token_id)]
    return p_ids, a_ids


def encode_text(tokenizer: Any, text: str, max_length: int | None = None, eos: bool = False) -> list[int]:
    """A whole text as one document: special tokens, optionally eos, cut to `max_length` ids."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    ids = ids[: len(ids) - _strip_appended_eos(tokenizer, text, ids)]
    if eos and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids[:max_length] if max_length is not None else ids


def right_pad(rows: Sequence[Sequence[int]], pad: int, fill: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] and attention mask [B, T] (long, on the CPU); `fill` overrides the pad value."""
    if not rows:
        raise InvalidInput("nothing to pad")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad if fill is None else fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
            mask[i, : len(row)] = 1
    return ids, mask


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids, each [B, T] (padding does not move positions)."""
    if not rows:
        raise InvalidInput("nothing to pad")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions
