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

import math
from collections.abc import Sequence

import torch

from infra.decoding import (LOGITS_BUDGET, decode_batch, greedy_answers, inference_mode, last_logits_kwargs, logits_bytes,
                            memory_sized_batches, model_device)
from infra.encoding import encode_pair, encode_prompt, encode_text, pad_id, right_pad

__all__ = ["greedy_answers", "answer_nll", "answer_scores", "perplexity", "generate_texts", "encode_pairs"]


def encode_pairs(tokenizer, prompts: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """Token ids of each prompt and of its answer ``" " + answer`` (no eos), as `infra.encoding` encodes them."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    return [encode_pair(tokenizer, prompt, answer) for prompt, answer in zip(prompts, answers)]


def answer_scores(
    model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 64,
    logits_budget: int = LOGITS_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced scores of ``" " + answer`` given each prompt (eos not scored).

    At most `batch_size` pairs per forward pass, fewer where their logits would exceed
    `logits_budget` bytes. Returns ``(nll, exact)``, both shape [n] on the CPU: the mean per-token NLL (float64) and
    whether every answer token is the argmax under teacher forcing (bool; methods.md 1.1's
    "rewrite accuracy").
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pairs = encode_pairs(tokenizer, prompts, answers)
    pad = pad_id(tokenizer)
    device = model_device(model)
    nll = torch.empty(len(pairs), dtype=torch.float64)
    exact = torch.empty(len(pairs), dtype=torch.bool)
    lengths = [len(p) + len(a) for p, a in pairs]  # an upper bound of the logit positions a row needs
    with inference_mode(model):
        for batch in memory_sized_batches(lengths, logits_bytes(model), batch_size, logits_budget):
            start, chunk = batch.start, pairs[batch]
            ids, mask = (t.to(device) for t in right_pad([p + a for p, a in chunk], pad))
            # only the answer positions are read: logits from the first of them on (not over the prompts)
            first = min(len(p) for p, _ in chunk) - 1
            keep = last_logits_kwargs(model, ids.shape[1] - first)
            logits = model(input_ids=ids, attention_mask=mask, **keep).logits  # [b, t - first (or t), v]
            offset = first if keep else 0
            for i, (p, a) in enumerate(chunk):
                # answer token j sits at position len(p)+j and is predicted at position len(p)+j-1
                pos = torch.arange(len(p) - 1 - offset, len(p) + len(a) - 1 - offset, device=device)
                target = torch.tensor(a, dtype=torch.long, device=device)
                rows = torch.log_softmax(logits[i, pos].float(), dim=-1)  # [len(a), v]
                nll[start + i] = -rows.gather(-1, target[:, None]).double().mean().cpu()
                exact[start + i] = bool((rows.argmax(-1) == target).all())
    return nll, exact


def answer_nll(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Mean per-token NLL of ``" " + answer`` given the prompt (teacher forcing, eos not scored).

    Returns a float64 tensor of shape [n] on the CPU; ``exp(-nll)`` is methods.md 1.1's P(y|x).
    """
    return answer_scores(model, tokenizer, prompts, answers, batch_size)[0]


def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 32,
               logits_budget: int = LOGITS_BUDGET) -> float:
    """Token-weighted perplexity of `texts`: exp(total NLL / number of predicted tokens).

    Each text is scored on its own (no packing), truncated to the model's context length; its
    first token is context only. Texts of fewer than two tokens are skipped. At most `batch_size`
    texts per forward pass, fewer where their logits would exceed `logits_budget` bytes.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    max_len = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None) or 1024
    rows = [encode_text(tokenizer, t, max_length=max_len) for t in texts]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        raise ValueError("perplexity needs at least one text of two or more tokens")
    pad = pad_id(tokenizer)
    device = model_device(model)
    total_nll, total_tokens = 0.0, 0
    with inference_mode(model):
        for batch in memory_sized_batches([len(r) for r in rows], logits_bytes(model), batch_size, logits_budget):
            ids, mask = (t.to(device) for t in right_pad(rows[batch], pad))
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
    pad, eos_id = pad_id(tokenizer), tokenizer.eos_token_id
    device = model_device(model)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        if not stop_at_eos and eos_id is not None:
            logits[:, eos_id] = float("-inf")
        top_vals, top_idx = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # [b, k]
        probs = torch.softmax(top_vals, dim=-1)
        choice = torch.multinomial(probs, 1, generator=generator)  # [b, 1]
        return top_idx.gather(-1, choice).squeeze(-1)

    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    texts: list[str] = []
    with inference_mode(model):
        for start in range(0, len(encoded), batch_size):
            gen = decode_batch(model, encoded[start : start + batch_size], pad,
                                eos_id if stop_at_eos else None, max_new_tokens, sample)
            texts.extend(tokenizer.decode(g, skip_special_tokens=True).strip() for g in gen)
    return texts
