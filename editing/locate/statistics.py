"""Second-moment statistics C = E[k k^T] of the keys of edited layers, cached content-addressed.

The keys are the inputs of an MLP output projection at every non-padding token of a generic text
corpus. One forward pass serves every requested layer (hooks on all of them). Each layer's result is
stored in the cache (the delta store's blob area) under a key derived from its content's inputs:
base-model fingerprint, module name, sha256 of the corpus texts used, sample count and format
version; so it is computed once per base model, layer and corpus, and reused by every run::

    moments = second_moments(model, tokenizer, [1, 2], corpus, n_samples=500, cache=store, fingerprint=fp)
    C1 = moments[1].mom2          # [d0, d0] float32, mean of k k^T over all tokens
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from editing.architecture import layout_of
from editing.locate.hooks import capture, stopping_after
from editing.protocol import BlobCache
from infra.encoding import encode_text, pad_id, right_pad
from infra.errors import InvalidInput

log = logging.getLogger(__name__)

STATS_FORMAT = 1
CACHE_PREFIX = "locate-stats"


@dataclass(frozen=True)
class LayerMoments:
    """mom2: [d0, d0] mean of k k^T (float32); tokens: how many key vectors were averaged."""

    mom2: torch.Tensor
    tokens: int
    cache_key: str
    from_cache: bool


def corpus_sample(corpus: Sequence[str], n_samples: int) -> list[str]:
    """The texts used: the first `n_samples` non-empty texts of the corpus (deterministic)."""
    texts = [t for t in corpus if t and t.strip()]
    return texts[:n_samples]


def corpus_sha256(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


def stats_cache_key(fingerprint: str, module: str, texts_sha: str, n_texts: int, max_length: int) -> str:
    return f"{CACHE_PREFIX}/v{STATS_FORMAT}/{fingerprint}/{module}/{texts_sha[:32]}-n{n_texts}-t{max_length}.safetensors"


def _max_length(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return min(value, 1024)
    return 512


@torch.no_grad()
def _accumulate(model: nn.Module, tokenizer: Any, modules: Sequence[str], texts: Sequence[str], max_length: int, batch_size: int) -> tuple[dict[str, torch.Tensor], int]:
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    tokens = 0
    pad = pad_id(tokenizer)
    encoded = [encode_text(tokenizer, t, max_length=max_length) for t in texts]
    encoded = [e for e in encoded if e]
    module_order = [name for name, _ in model.named_modules()]
    last = max(modules, key=module_order.index)  # the highest key read: each pass ends there
    # sort by length so batches carry little padding
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        ids, mask = right_pad([encoded[i] for i in order[start : start + batch_size]], pad)
        ids, mask = ids.to(device), mask.to(device)
        with capture(model, modules, kind="input") as seen, stopping_after(model, last, kind="input"):
            model(input_ids=ids, attention_mask=mask)  # ends at the last key read: the blocks above never run
        keep = mask.bool()
        for name in modules:
            keys = seen[name][keep].double()  # [N, d0]
            sums[name] = sums.get(name, 0) + keys.T @ keys
        tokens += int(keep.sum())
    return sums, tokens


def second_moments(
    model: nn.Module,
    tokenizer: Any,
    layers: Sequence[int],
    corpus: Sequence[str],
    n_samples: int,
    cache: BlobCache | None = None,
    fingerprint: str = "",
    batch_size: int = 64,
    scope: Callable[[], AbstractContextManager[None]] | None = None,
) -> dict[int, LayerMoments]:
    """C = mean of k k^T over every token of the first `n_samples` corpus texts, per layer.

    Args:
        model, tokenizer: the model whose edited projections' inputs are the keys.
        layers: block indices; the key module is the family's MLP output projection.
        corpus: generic text; an empty corpus is an error.
        n_samples: how many texts to use (fewer if the corpus is shorter).
        cache: where to get and put the statistics; None computes them in memory.
        fingerprint: the base model's sha256 (part of the cache key); required with a cache.
        scope: entered around the forward passes when something must be computed (the service
            passes one that puts the base weights in place, so what is cached under the base's
            fingerprint is the base's, whatever head the model holds).
    """
    texts = corpus_sample(corpus, n_samples)
    if not texts:
        raise InvalidInput("key statistics need a non-empty text corpus (EditContext.corpus)")
    if cache is not None and not fingerprint:
        raise InvalidInput("key statistics with a cache need the base model's fingerprint")
    layout = layout_of(model)
    max_length = _max_length(model)
    texts_sha = corpus_sha256(texts)
    out: dict[int, LayerMoments] = {}
    missing: dict[int, str] = {}
    for layer in layers:
        module = layout.mlp_out_module(layer)
        key = stats_cache_key(fingerprint or "uncached", module, texts_sha, len(texts), max_length)
        blob = cache.get_blob(key) if cache is not None else None
        if blob is not None:
            data = load_safetensors(blob)
            out[layer] = LayerMoments(data["mom2"], int(data["tokens"].item()), key, True)
        else:
            missing[layer] = key
    if missing:
        modules = [layout.mlp_out_module(layer) for layer in missing]
        with (scope or nullcontext)():
            sums, tokens = _accumulate(model, tokenizer, modules, texts, max_length, batch_size)
        for (layer, key), module in zip(missing.items(), modules):
            mom2 = (sums[module] / max(tokens, 1)).float().cpu().contiguous()
            if cache is not None:
                meta = {"module": module, "texts_sha256": texts_sha, "n_texts": str(len(texts)), "fingerprint": fingerprint}
                cache.put_blob(key, save_safetensors({"mom2": mom2, "tokens": torch.tensor([tokens])}, metadata=meta))
            out[layer] = LayerMoments(mom2, tokens, key, False)
        log.info("key statistics: %d layers from %d texts (%d tokens)", len(missing), len(texts), tokens)
    return out


def describe(moments: dict[int, LayerMoments]) -> dict[str, Any]:
    """JSON-friendly summary for EditResult.stats."""
    return {str(layer): {"tokens": m.tokens, "cached": m.from_cache, "key": m.cache_key} for layer, m in moments.items()}


def moments_for(model: nn.Module, tokenizer: Any, layers: Sequence[int], n_samples: int, context: Any) -> dict[int, LayerMoments]:
    """`second_moments` with the corpus, cache and fingerprint of an `EditContext`.

    Without a fingerprint in the context the model's own weights are fingerprinted (so a cached
    statistic always belongs to the weights it was computed on); with one, the statistics are
    computed under the context's `base_weights`, so they are the base's.
    """
    from editing.model_io import weights_fingerprint

    cache = getattr(context, "cache", None)
    fingerprint = getattr(context, "model_fingerprint", "") or ""
    if cache is not None and not fingerprint:
        fingerprint = weights_fingerprint(model)
    corpus = tuple(getattr(context, "corpus", ()) or ())
    return second_moments(model, tokenizer, layers, corpus, n_samples, cache=cache, fingerprint=fingerprint,
                          scope=getattr(context, "base_weights", None))
