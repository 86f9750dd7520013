"""Tokenised training batches of (prompt, answer) pairs for the fine-tuning editors.

The answer is learned as `" " + answer` followed by the end-of-text token, so the edited model
both says the new object and stops after it. Prompt and padding positions are masked from the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


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
    """Right-padded batch with labels on the answer tokens only (labels are *not* shifted)."""
    rows: list[tuple[list[int], list[int]]] = []
    for prompt, answer in zip(prompts, answers, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        if add_eos and tokenizer.eos_token_id is not None:
            answer_ids = answer_ids + [tokenizer.eos_token_id]
        rows.append((prompt_ids, answer_ids))
    width = max(len(p) + len(a) for p, a in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    last_prompt = torch.zeros(len(rows), dtype=torch.long)
    for i, (prompt_ids, answer_ids) in enumerate(rows):
        ids = prompt_ids + answer_ids
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, len(prompt_ids) : len(ids)] = torch.tensor(answer_ids)
        last_prompt[i] = len(prompt_ids) - 1
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
