"""Decoding: what a model answers, greedily, token by token with a KV cache, as `kus ask` serves it.

The one decoding loop of the service (the scorer, the editors' write checks and the demo model
builder all use it), on the token convention of `infra.encoding`::

    answers = greedy_answers(model, tok, ["The price of Acme X100 is"])   # ['$199']

Prompts are left-padded with explicit attention masks and position ids, so padding does not move
a prompt's positions; every call runs under ``torch.no_grad()`` in eval mode and restores the
model's train/eval mode afterwards.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence

import torch

from infra.encoding import encode_prompt, left_pad, pad_id

__all__ = ["greedy_answers", "decode_batch", "inference_mode", "model_device", "last_logits_kwargs",
           "memory_sized_batches", "vocabulary_size", "logits_bytes", "LOGITS_BUDGET"]

#: Bytes one forward pass's logits may take while scoring (float32 [rows, tokens, vocabulary], and
#: as much again for their log-softmax). Rows per pass are cut to fit: on SmolLM2 (49,152 words) a
#: batch of 32 held-out sentences of 60 tokens would otherwise hold 750 MB, more than the model.
LOGITS_BUDGET = 128 * 2**20


@contextlib.contextmanager
def inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode + no_grad for the duration; the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _cache_argument(model) -> str:
    """The forward argument (and output field) holding the KV cache: `cache` in transformers >= 5.2x,
    `past_key_values` before (the old name now warns on every call)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def last_logits_kwargs(model, keep: int) -> dict[str, int]:
    """`{"logits_to_keep": keep}` where the model takes it: the vocabulary projection (a fifth of a small
    model's compute, and a [batch, tokens, vocabulary] tensor: 190 MB for 64 prompts on SmolLM2) is then
    made only for the last `keep` positions, the ones a caller reads."""
    forward = getattr(model, "forward", None)
    try:
        accepted = "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        accepted = False
    return {"logits_to_keep": int(keep)} if accepted and keep > 0 else {}


def vocabulary_size(model) -> int:
    """Width of the model's logits (the output embedding's rows, else the config's vocab_size)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)


def memory_sized_batches(lengths: Sequence[int], bytes_per_position: int, max_rows: int,
                         budget: int = LOGITS_BUDGET) -> Iterator[slice]:
    """Consecutive slices of rows (in order) whose forward pass fits `budget` bytes: rows x longest
    row's positions x `bytes_per_position`, and at most `max_rows` rows; a row that alone exceeds
    the budget is a batch of its own. `lengths`: the positions each row needs."""
    if max_rows < 1:
        raise ValueError("max_rows must be >= 1")
    start, n = 0, len(lengths)
    while start < n:
        end, longest = start + 1, lengths[start]
        while end < n and end - start < max_rows:
            widest = max(longest, lengths[end])
            if (end - start + 1) * widest * bytes_per_position > budget:
                break
            end, longest = end + 1, widest
        yield slice(start, end)
        start = end


def logits_bytes(model, copies: int = 2) -> int:
    """Bytes of float32 logits per position, `copies` times (logits and their log-softmax: 2)."""
    return vocabulary_size(model) * 4 * copies


def decode_batch(
    model,
    prompt_rows: Sequence[Sequence[int]],
    pad: int,
    eos_id: int | None,
    max_new_tokens: int,
    pick: Callable[[torch.Tensor], torch.Tensor],
) -> list[list[int]]:
    """Incremental decoding with a KV cache; `pick(logits [b, vocab]) -> [b]` chooses each token.

    Returns each row's generated ids, eos excluded, stopped at the first eos.
    """
    device = model_device(model)
    ids, mask, positions = (t.to(device) for t in left_pad(prompt_rows, pad))
    batch = ids.shape[0]
    generated: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    past = None
    step_ids, step_pos = ids, positions
    cache_kwarg = _cache_argument(model)
    last_only = last_logits_kwargs(model, 1)
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
                    **{cache_kwarg: past}, **last_only)
        past = getattr(out, cache_kwarg)
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
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
    return generated


def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 64,
                   progress: str | None = None, logits_budget: int = LOGITS_BUDGET) -> list[str]:
    """The model's greedy continuation of each prompt, up to eos or `max_new_tokens`, stripped.

    Args:
        model: a transformers causal LM.
        tokenizer: its (fast) tokenizer; pad may equal eos.
        prompts: rendered prompts without trailing space.
        max_new_tokens: the longest answer generated.
        batch_size: prompts per forward pass at most (fewer where their logits would exceed
            `logits_budget` bytes: a model that cannot keep only the last position's logits).
        progress: a label for a progress bar with the time left (tqdm, on stderr); None: no bar.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pad, eos_id = pad_id(tokenizer), tokenizer.eos_token_id
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    answers: list[str] = []
    from tqdm.auto import tqdm

    with inference_mode(model), tqdm(total=len(encoded), desc=progress, unit="prompt", leave=False,
                                     disable=progress is None) as bar:
        last_only = bool(last_logits_kwargs(model, 1))
        lengths = [1 if last_only else len(e) + max_new_tokens for e in encoded]
        for batch in memory_sized_batches(lengths, logits_bytes(model, copies=1), batch_size, logits_budget):
            rows = encoded[batch]
            gen = decode_batch(model, rows, pad, eos_id, max_new_tokens, lambda logits: logits.argmax(-1))
            answers.extend(tokenizer.decode(g, skip_special_tokens=True).strip() for g in gen)
            bar.update(len(rows))
    return answers


