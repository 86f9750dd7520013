"""Loading a causal LM from a local directory, offline, and fingerprinting its weights.

The fingerprint ties every delta to the exact base weights it was computed on::

    model, tokenizer = load_model(Path("var/models/demo"))
    fingerprint = weights_fingerprint(model)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from infra.errors import InvalidInput, NotFound
from infra.fingerprint import tensor_sha256, weights_fingerprint

__all__ = ["load_model", "tensor_sha256", "weights_fingerprint"]


#: placements whose weights live off any device that computes (accelerate's offloading)
OFFLOADED = ("disk", "meta")


def _offload_refused(device_map: str, offloaded: list[str], path: Path) -> InvalidInput:
    return InvalidInput(f"device_map {device_map!r} offloads {', '.join(offloaded)} of {path} off any device that "
                        "computes; editing needs every weight in GPU or CPU memory (give more devices, or a "
                        "smaller dtype with KUS_TORCH_DTYPE)")


def load_model(path: Path, device: str = "cpu", dtype: torch.dtype | str | None = None,  # noqa: ANN201
               device_map: str | None = None):
    """Load model and tokenizer from a local directory; never touches the network.

    `device_map` (a transformers/accelerate strategy such as "auto", one device, or a JSON object of
    module -> device) places the weights instead of `device`: a model larger than one GPU is sharded
    over all of them. Every weight must land on a device that computes: the editors change weights in
    place, which offloaded ("disk"/"meta") weights cannot be, so such a placement is refused.
    """
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
    kwargs: dict = {"local_files_only": True, "use_safetensors": True}
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype) if dtype else None
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map:
        placement = json.loads(device_map) if device_map.lstrip().startswith("{") else device_map
        offloaded = sorted(k for k, v in placement.items() if str(v) in OFFLOADED) if isinstance(placement, dict) else []
        if offloaded:
            raise _offload_refused(device_map, offloaded, path)
        kwargs["device_map"] = placement
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar on every load buries the service's progress
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except ValueError as exc:
        if not device_map:
            raise
        raise InvalidInput(f"could not place {path} with device_map {device_map!r}: {exc}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    placement = getattr(model, "hf_device_map", None) if device_map else None
    if placement is not None:
        offloaded = sorted(name for name, where in placement.items() if str(where) in OFFLOADED)
        if offloaded or any(p.device.type == "meta" for p in model.parameters()):
            raise _offload_refused(device_map, offloaded or ["weights"], path)
    else:
        model.to(device)
    model.eval()
    return model, tokenizer
