"""Tokenised training batches of (prompt, answer) pairs for the fine-tuning editors.

The answer is learned as `" " + answer` followed by the end-of-text token, so the edited model
both says the new object and stops after it. Prompt and padding positions are masked from the loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from editing.architecture import num_layers
from infra.decoding import memory_sized_batches, vocabulary_size
from infra.encoding import encode_pair, pad_id, right_pad

#: Bytes one training pass (the forward and backward of a chunk of rows) may take besides the model;
#: rows per pass are cut to fit. On SmolLM2-135M a row of 45 tokens costs about 84 MB (logits over
#: 49,152 words with their log-softmax and gradients, and 30 layers' saved activations): 16 rows per
#: pass held 1.35 GB, 4 rows 0.35 GB, and the passes took the same time on CPU (13.3 and 14.2 s for
#: 48 rows). The demo model's passes (64 rows of at most 64 tokens, 0.25 GB) stay whole.
TRAINING_BUDGET = 384 * 2**20


def training_bytes_per_position(model: Any) -> int:
    """About what one position of a training pass holds: five vocabulary-wide float32 rows (logits,
    their log-softmax and gradients) and sixteen hidden-wide ones per layer (saved activations)."""
    config = model.config
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))
    return 4 * (5 * vocabulary_size(model) + 16 * num_layers(model) * hidden)


def training_passes(model: Any, rows: int, width: int, max_rows: int, budget: int | None = None) -> Iterator[slice]:
    """Chunks of `rows` padded rows of `width` tokens for one training pass each: at most `max_rows`
    rows, fewer where a pass would hold more than `budget` bytes (default `TRAINING_BUDGET`)."""
    budget = TRAINING_BUDGET if budget is None else budget
    return memory_sized_batches([width] * rows, training_bytes_per_position(model), max_rows, budget)


@dataclass(frozen=True)
class AnswerBatch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], -100 outside the answer
    last_prompt_index: torch.Tensor  # [B] position of each prompt's last token

    def rows(self, index: slice) -> "AnswerBatch":
        return AnswerBatch(self.input_ids[index], self.attention_mask[index], self.labels[index], self.last_prompt_index[index])

    def to(self, device: torch.device | str) -> "AnswerBatch":
        return AnswerBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels, self.last_prompt_index)))


def answer_batch(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], add_eos: bool = True) -> AnswerBatch:
    """Right-padded batch with labels on the answer tokens only (labels are *not* shifted).

    Encoded by `infra.encoding.encode_pair`, as the scorer and the serving path encode them.
    """
    rows = [encode_pair(tokenizer, prompt, answer, eos=add_eos) for prompt, answer in zip(prompts, answers, strict=True)]
    input_ids, attention = right_pad([p + a for p, a in rows], pad_id(tokenizer))
    labels, _ = right_pad([[-100] * len(p) + a for p, a in rows], pad_id(tokenizer), fill=-100)
    last_prompt = torch.tensor([len(p) - 1 for p, _ in rows], dtype=torch.long)
    return AnswerBatch(input_ids, attention, labels, last_prompt)


def answer_loss(logits: torch.Tensor, batch: AnswerBatch, objective: str = "target_new") -> torch.Tensor:
    """Mean cross-entropy over answer tokens.

    `target_new`: teacher forcing, token t predicted from position t-1.
    `prompt_last`: every answer token scored against the last prompt position's distribution.
    """
    if objective == "target_new":
        shifted_logits = logits[:, :-1, :]  # [B, T-1, V]
        shifted_labels = batch.labels[:, 1:]  # [B, T-1]
        return torch.nn.functional.cross_entropy(
            shifted_logits.reshape(-1, shifted_logits.size(-1)), shifted_labels.reshape(-1), ignore_index=-100
        )
    log_probs = torch.log_softmax(logits, dim=-1)  # [B, T, V]
    rows = torch.arange(logits.size(0), device=logits.device)
    last = log_probs[rows, batch.last_prompt_index]  # [B, V]
    mask = batch.labels != -100  # [B, T]
    safe_labels = batch.labels.clamp(min=0)
    token_log_probs = torch.gather(last, 1, safe_labels) * mask  # [B, T]
    return -(token_log_probs.sum() / mask.sum())
