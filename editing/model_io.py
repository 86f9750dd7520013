"""Loading a causal LM from a local directory, offline, and fingerprinting its weights.

The fingerprint ties every delta to the exact base weights it was computed on::

    model, tokenizer = load_model(Path("var/models/demo"))
    fingerprint = weights_fingerprint(model)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from infra.errors import NotFound


def load_model(path: Path, device: str = "cpu", dtype: torch.dtype | None = None):  # noqa: ANN201
    """Load model and tokenizer from a local directory; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise NotFound(f"no model at {path} (expected a transformers model directory with config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    model.to(device)
    model.eval()
    return model, tokenizer


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's exact bytes (dtype and shape included), for bit-exact checks."""
    digest = hashlib.sha256()
    digest.update(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    data = tensor.detach().contiguous().cpu()
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter and buffer, by name, in a stable order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_sha256(tensor).encode())
    return digest.hexdigest()
