"""Context prefixes: short texts sampled from the unedited model, put before edit prompts.

ROME/MEMIT average keys and fit target vectors over the prompt with several random prefixes, so
the edit does not depend on the prompt starting the text. `spec` lists (length in tokens, count);
the first prefix is always the empty one::

    prefixes = context_prefixes(model, tokenizer, ((5, 2),), seed=0)   # ('', 'The new ... . ', ...)
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from infra.encoding import encode_prompt, left_pad, pad_id

SEED_WORDS = ("The", "Therefore", "Because", "I", "You")


@torch.no_grad()
def context_prefixes(model: nn.Module, tokenizer: Any, spec: Sequence[Sequence[int]], seed: int = 0, top_k: int = 5) -> tuple[str, ...]:
    """("",) followed by `count` sampled prefixes of `length` tokens for each (length, count)."""
    prefixes = [""]
    if not spec:
        return tuple(prefixes)
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for length, count in spec:
        seeds = [SEED_WORDS[i % len(SEED_WORDS)] for i in range(int(count))]
        rows = [encode_prompt(tokenizer, s) for s in seeds]
        # left-pad the seeds so every row generates at the same position
        width = max(len(r) for r in rows)
        ids, mask, _ = left_pad(rows, pad_id(tokenizer))
        for _ in range(int(length)):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)).logits[:, -1].float().cpu()
            top = torch.topk(logits, k=min(top_k, logits.size(-1)), dim=-1)
            probs = torch.softmax(top.values, dim=-1)
            choice = torch.multinomial(probs, 1, generator=generator)
            nxt = top.indices.gather(1, choice)
            ids = torch.cat([ids, nxt], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        for i, r in enumerate(rows):
            new = ids[i, width - len(r):].tolist()
            text = tokenizer.decode(new, skip_special_tokens=True)
            text = text.replace("{", " ").replace("}", " ").strip()
            prefixes.append(f"{text}. ")
    return tuple(prefixes)
