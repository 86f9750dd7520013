"""Exact fingerprints of tensors and model weights (sha256 of the bytes, dtype and shape included).

Every delta records the fingerprint of the base weights it was computed on, and the sha256 of
each parameter it leaves behind; these are the functions that compute both.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's exact bytes (dtype and shape included), for bit-exact checks."""
    digest = hashlib.sha256()
    digest.update(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    data = tensor.detach().contiguous().cpu()
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def weights_fingerprint(model: Any) -> str:
    """sha256 over every parameter and buffer, by name, in a stable order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_sha256(tensor).encode())
    return digest.hexdigest()
