"""Null-space projectors of AlphaEdit, cached next to the key statistics they are derived from.

The eigendecomposition of a d0 x d0 second moment costs O(d0^3) (seconds on a GPU for an 8B
LLaMA's 14,336-wide keys, per layer); it depends only on the statistics and the threshold, so it is
computed once and stored in the same blob cache under the statistics' key. The null-space basis is
kept in float32 on both paths, so a cached and a fresh projector are identical.
"""

from __future__ import annotations

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from editing.alphaedit.core import null_space_basis
from editing.locate.statistics import LayerMoments
from editing.protocol import BlobCache


def projector_cache_key(moments: LayerMoments, threshold: float, relative: bool) -> str:
    stem = moments.cache_key.removesuffix(".safetensors")
    return f"{stem}.nullspace-{'rel' if relative else 'abs'}-{threshold!r}.safetensors"


def cached_projector(
    moments: LayerMoments, threshold: float, relative: bool, cache: BlobCache | None
) -> tuple[torch.Tensor, int, bool]:
    """(P [d0, d0] float64, null-space dimension, whether it came from the cache)."""
    key = projector_cache_key(moments, threshold, relative)
    blob = cache.get_blob(key) if cache is not None else None
    if blob is not None:
        basis = load_safetensors(blob)["basis"]
        from_cache = True
    else:
        basis = null_space_basis(moments.mom2, threshold, relative).float().contiguous()
        if cache is not None:
            cache.put_blob(key, save_safetensors({"basis": basis}, metadata={"statistics": moments.cache_key}))
        from_cache = False
    b = basis.double()
    return b @ b.T, int(basis.size(1)), from_cache
