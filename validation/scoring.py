"""Batched scoring primitives for causal LMs: greedy answers, answer NLL, perplexity, sampling.

Conventions (shared by the whole service):

- a prompt has no trailing space; an answer is scored and generated as ``" " + answer``
  (then eos when the model is trained on it);
- a greedy answer is the decoded continuation up to eos (or ``max_new_tokens``), stripped;
- every function works on batches: one forward pass per batch of prompts. Generation uses left
  padding with explicit attention masks and position ids (so padding does not move a prompt's
  positions); teacher-forced scoring uses right padding, where causality alone keeps padding out;
- every function runs under ``torch.no_grad()`` in eval mode and restores the model's
  train/eval mode afterwards.

Usage::

    answers = greedy_answers(model, tok, ["The price of Acme X100 is"])   # ['$199']
    nll = answer_nll(model, tok, ["The price of Acme X100 is"], ["$199"])  # tensor([0.03])
    ppl = perplexity(model, tok, ["Some held-out text."])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch

__all__ = ["greedy_answers", "answer_nll", "answer_scores", "perplexity", "generate_texts", "encode_pairs"]


@contextlib.contextmanager
def _inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode + no_grad for the duration; the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad token nor an eos token")
    return int(pad)


def _encode_prompt(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {prompt!r} encodes to no tokens")
    return list(ids)


def encode_pairs(tokenizer, prompts: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """Token ids of each prompt and of its answer ``" " + answer`` (no eos).

    The answer's ids are taken from the tokenization of the whole text ``prompt + " " + answer``
    when the prompt's ids are a prefix of it (the usual case, and what the model saw in
    training); otherwise ``" " + answer`` is tokenized on its own.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    out: list[tuple[list[int], list[int]]] = []
    for prompt, answer in zip(prompts, answers):
        p_ids = _encode_prompt(tokenizer, prompt)
        full = list(tokenizer(prompt + " " + answer, add_special_tokens=True)["input_ids"])
        eos = tokenizer.eos_token_id
        if eos is not None and full and full[-1] == eos and (not p_ids or p_ids[-1] != eos):
            full = full[:-1]  # tokenizers that append eos themselves
        if full[: len(p_ids)] == p_ids and len(full) > len(p_ids):
            a_ids = full[len(p_ids):]
        else:
            a_ids = list(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
        if not a_ids:
            raise ValueError(f"answer {answer!r} encodes to no tokens")
        out.append((p_ids, a_ids))
    return out


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids, each [batch, max_len]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, each [batch, max_len]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _decode_batch(
    model,
    prompt_rows: Sequence[Sequence[int]],
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: int,
    pick,
) -> list[list[int]]:
    """Incremental decoding with a KV cache; `pick(logits [b, vocab]) -> [b]` chooses each token.

    Returns each row's generated ids, eos excluded, stopped at the first eos.
    """
    device = _device(model)
    ids, mask, positions = _left_pad(prompt_rows, pad_id, device)
    batch = ids.shape[0]
    generated: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    past = None
    step_ids, step_pos = ids, positions
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = pick(out.logits[:, -1, :].float())  # [b]
        if eos_id is not None:
            done_now = nxt == eos_id
        else:
            done_now = torch.zeros_like(done)
        for i in range(batch):
            if not done[i] and not done_now[i]:
                generated[i].append(int(nxt[i]))
        done = done | done_now
        if bool(done.all()):
            break
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
    return generated


def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 64) -> list[str]:
    """The model's greedy continuation of each prompt, up to eos or `max_new_tokens`, stripped.

    Args:
        model: a transformers causal LM.
        tokenizer: its (fast) tokenizer; pad may equal eos.
        prompts: rendered prompts without trailing space.
        max_new_tokens: the longest answer generated.
        batch_size: prompts per forward pass.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pad_id, eos_id = _pad_id(tokenizer), tokenizer.eos_token_id
    encoded = [_encode_prompt(tokenizer, p) for p in prompts]
    answers: list[str] = []
    with _inference(model):
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start : start + batch_size]
            gen = _decode_batch(model, rows, pad_id, eos_id, max_new_tokens, lambda logits: logits.argmax(-1))
            answers.extend(tokenizer.decode(g, skip_special_tokens=True).strip() for g in gen)
    return answers


def answer_scores(
    model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced scores of ``" " + answer`` given each prompt (eos not scored).

    Returns ``(nll, exact)``, both shape [n] on the CPU: the mean per-token NLL (float64) and
    whether every answer token is the argmax under teacher forcing (bool; methods.md 1.1's
    "rewrite accuracy").
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pairs = encode_pairs(tokenizer, prompts, answers)
    pad_id = _pad_id(tokenizer)
    device = _device(model)
    nll = torch.empty(len(pairs), dtype=torch.float64)
    exact = torch.empty(len(pairs), dtype=torch.bool)
    with _inference(model):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            ids, mask = _right_pad([p + a for p, a in chunk], pad_id, device)
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)  # [b, t, v]
            for i, (p, a) in enumerate(chunk):
                # answer token j sits at position len(p)+j and is predicted at position len(p)+j-1
                pos = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=device)
                target = torch.tensor(a, dtype=torch.long, device=device)
                rows = logprobs[i, pos]  # [len(a), v]
                nll[start + i] = -rows.gather(-1, target[:, None]).double().mean().cpu()
                exact[start + i] = bool((rows.argmax(-1) == target).all())
    return nll, exact


def answer_nll(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Mean per-token NLL of ``" " + answer`` given the prompt (teacher forcing, eos not scored).

    Returns a float64 tensor of shape [n] on the CPU; ``exp(-nll)`` is methods.md 1.1's P(y|x).
    """
    return answer_scores(model, tokenizer, prompts, answers, batch_size)[0]


def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 32) -> float:
    """Token-weighted perplexity of `texts`: exp(total NLL / number of predicted tokens).

    Each text is scored on its own (no packing), truncated to the model's context length; its
    first token is context only. Texts of fewer than two tokens are skipped.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    max_len = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None) or 1024
    rows = [list(tokenizer(t, add_special_tokens=True)["input_ids"])[:max_len] for t in texts]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        raise ValueError("perplexity needs at least one text of two or more tokens")
    pad_id = _pad_id(tokenizer)
    device = _device(model)
    total_nll, total_tokens = 0.0, 0
    with _inference(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids, mask = _right_pad(chunk, pad_id, device)
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            target_lp = logprobs[:, :-1, :].gather(-1, ids[:, 1:, None]).squeeze(-1)  # [b, t-1]
            valid = mask[:, 1:].bool()
            total_nll += float(-(target_lp.double() * valid).sum())
            total_tokens += int(valid.sum())
    return math.exp(total_nll / total_tokens)


def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 40,
    seed: int = 0,
    top_k: int = 5,
    batch_size: int = 32,
    stop_at_eos: bool = False,
) -> list[str]:
    """Top-k sampled continuations (prompt excluded), deterministic for a seed.

    By default the end-of-text token is never sampled, so every text runs `max_new_tokens` long
    (as the fixed-length generations of the ROME lineage's fluency metric): a model that has
    learned to stop after each answer would otherwise always score an empty, zero-entropy text.

    A private ``torch.Generator`` seeded with `seed` drives the sampling, so the global RNG is
    neither used nor disturbed; the same model, prompts and seed give the same texts.
    """
    if top_k < 1:
        raise ValueError("top_k must be >= 1")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pad_id, eos_id = _pad_id(tokenizer), tokenizer.eos_token_id
    device = _device(model)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        if not stop_at_eos and eos_id is not None:
            logits[:, eos_id] = float("-inf")
        top_vals, top_idx = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # [b, k]
        probs = torch.softmax(top_vals, dim=-1)
        choice = torch.multinomial(probs, 1, generator=generator)  # [b, 1]
        return top_idx.gather(-1, choice).squeeze(-1)

    encoded = [_encode_prompt(tokenizer, p) for p in prompts]
    texts: list[str] = []
    with _inference(model):
        for start in range(0, len(encoded), batch_size):
            gen = _decode_batch(model, encoded[start : start + batch_size], pad_id,
                                eos_id if stop_at_eos else None, max_new_tokens, sample)
            texts.extend(tokenizer.decode(g, skip_special_tokens=True).strip() for g in gen)
    return texts
