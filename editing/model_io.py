"""Loading a causal LM from a local directory, offline, and fingerprinting its weights.

The fingerprint ties every delta to the exact base weights it was computed on::

    model, tokenizer = load_model(Path("var/models/demo"))
    fingerprint = weights_fingerprint(model)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from infra.errors import NotFound
from infra.fingerprint import tensor_sha256, weights_fingerprint

__all__ = ["load_model", "tensor_sha256", "weights_fingerprint"]


def load_model(path: Path, device: str = "cpu", dtype: torch.dtype | None = None):  # noqa: ANN201
    """Load model and tokenizer from a local directory; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise NotFound(f"no model at {path} (expected a transformers model directory with config.json)")
    if not ((path / "model.safetensors").is_file() or any(path.glob("model-*-of-*.safetensors"))):
        raise NotFound(
            f"no safetensors weights in {path} (model.safetensors or model-*-of-*.safetensors); pickle weights "
            "such as pytorch_model.bin are never loaded (they can run code): convert them with "
            "transformers' save_pretrained(..., safe_serialization=True)"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"local_files_only": True, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar on every load buries the service's progress
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.to(device)
    model.eval()
    return model, tokenizer
