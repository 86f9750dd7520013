"""The `Delta`: a model change as `delta.safetensors` plus a JSON manifest, content-addressed.

Tensors are named `<parameter>::<part>`:
- `<param>::dense`          ΔW, added to the parameter in float32 and cast back;
- `<param>::u`, `<param>::v` low-rank factors, ΔW = u @ v;
- `state::<name>`           an editor's carried sequential state; never applied to the model.

Applying is deterministic (same base bytes + same delta bytes = same result bytes on any machine
for dense deltas), and the manifest records the sha256 of each edited parameter after the edit,
so `apply` can prove it produced exactly the weights the editor evaluated. `apply` returns an
`AppliedDelta` that keeps the exact prior tensors, so `revert()` is bit for bit::

    delta = Delta.create(tensors, editor="ft", hparams={...}, base_fingerprint=fp, parent=None, facts=[...])
    applied = delta.apply(model)
    applied.revert()                      # weights identical to before, byte for byte
    files = delta.to_files()              # {'manifest.json': ..., 'delta.safetensors': ...}
    same = Delta.from_files(files)        # verifies every sha256
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from editing.model_io import tensor_sha256
from infra.errors import IntegrityMismatch, InvalidInput

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "delta.safetensors"
STATE_PREFIX = "state::"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def hparams_hash(hparams: Mapping[str, Any]) -> str:
    return _sha256(canonical_json(dict(hparams)))


@dataclass(frozen=True)
class Delta:
    """A verified model change: tensors plus the manifest that describes them."""

    tensors: dict[str, torch.Tensor]
    manifest: dict[str, Any]
    _files: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    # ----------------------------------------------------------------- building
    @classmethod
    def create(
        cls,
        tensors: Mapping[str, torch.Tensor],
        *,
        editor: str,
        hparams: Mapping[str, Any],
        base_fingerprint: str,
        parent: str | None,
        facts: list[dict[str, Any]],
        model: nn.Module,
        created_by: str = "unknown",
        extra: Mapping[str, Any] | None = None,
    ) -> "Delta":
        """Build a delta computed on `model` (left unchanged); records each edited parameter's sha256 after apply."""
        clean: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            if "::" not in name:
                raise InvalidInput(f"delta tensor name {name!r} must be '<param>::<part>' or 'state::<name>'")
            if not torch.isfinite(tensor).all():
                raise InvalidInput(f"delta tensor {name!r} has non-finite values; refusing to build it")
            clean[name] = tensor.detach().to("cpu").contiguous()
        params_after = expected_params_after(model, _updates_from(clean))
        tensor_bytes = save_safetensors(clean) if clean else save_safetensors({"state::empty": torch.zeros(0)})
        manifest = {
            "format_version": FORMAT_VERSION,
            "editor": editor,
            "hparams": dict(hparams),
            "hparams_sha256": hparams_hash(hparams),
            "base_fingerprint": base_fingerprint,
            "parent": parent,
            "facts": facts,
            "params_after": dict(sorted(params_after.items())),
            "created_by": created_by,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "files": {TENSORS: _sha256(tensor_bytes)},
            **(dict(extra) if extra else {}),
        }
        manifest_bytes = canonical_json(manifest)
        return cls(tensors=clean, manifest=manifest, _files={MANIFEST: manifest_bytes, TENSORS: tensor_bytes})

    # ---------------------------------------------------------------- identity
    @property
    def id(self) -> str:
        return _sha256(self.to_files()[MANIFEST])

    @property
    def parent(self) -> str | None:
        return self.manifest.get("parent")

    @property
    def editor(self) -> str:
        return str(self.manifest["editor"])

    @property
    def size_bytes(self) -> int:
        return sum(len(b) for b in self.to_files().values())

    def state(self) -> dict[str, torch.Tensor]:
        """The editor's carried sequential state (e.g. accumulated keys), without the prefix."""
        return {k[len(STATE_PREFIX):]: v for k, v in self.tensors.items() if k.startswith(STATE_PREFIX) and k != "state::empty"}

    def edited_params(self) -> list[str]:
        return sorted({k.split("::", 1)[0] for k in self.tensors if not k.startswith(STATE_PREFIX)})

    # ------------------------------------------------------------ serialising
    def to_files(self) -> dict[str, bytes]:
        if not self._files:
            raise InvalidInput("delta has no serialised form")
        return dict(self._files)

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> "Delta":
        """Rebuild a delta from stored bytes, verifying the tensors file against the manifest."""
        if MANIFEST not in files or TENSORS not in files:
            raise InvalidInput(f"a delta needs {MANIFEST} and {TENSORS}; got {sorted(files)}")
        manifest = json.loads(files[MANIFEST])
        expected = manifest.get("files", {}).get(TENSORS)
        actual = _sha256(files[TENSORS])
        if expected != actual:
            raise IntegrityMismatch(f"{TENSORS} sha256 {actual} does not match the manifest's {expected}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise InvalidInput(f"unsupported delta format version {manifest.get('format_version')}")
        tensors = dict(load_safetensors(files[TENSORS]))
        tensors.pop("state::empty", None)
        return cls(tensors=tensors, manifest=manifest, _files={MANIFEST: files[MANIFEST], TENSORS: files[TENSORS]})

    # --------------------------------------------------------------- applying
    def weight_updates(self) -> dict[str, torch.Tensor]:
        """ΔW per edited parameter, in float32 (low-rank factors multiplied out)."""
        return _updates_from(self.tensors)

    def apply(self, model: nn.Module, verify: bool = True) -> "Revertible":
        """Add the delta to the model in place; returns a handle that can revert it exactly.

        Deltas whose manifest names another `apply_kind` (e.g. modules served unmerged, such as
        a router over adapters) are applied by the function registered for that kind.

        With `verify`, every edited parameter must end at the sha256 the manifest recorded
        (a wrong base or a non-deterministic apply is caught here, and the model is restored).
        """
        kind = self.manifest.get("apply_kind", "weights")
        if kind != "weights":
            if kind not in _APPLIERS:
                raise InvalidInput(f"delta {self.id[:12]} needs applier {kind!r}; known: {sorted(_APPLIERS)}")
            return _APPLIERS[kind](self, model)
        params = dict(model.named_parameters())
        updates = self.weight_updates()
        missing = [name for name in updates if name not in params]
        if missing:
            raise InvalidInput(f"the model has no parameters {missing}; is this delta for another architecture?")
        saved = {name: params[name].detach().clone() for name in updates}
        applied = AppliedDelta(model=model, saved=saved)
        with torch.no_grad():
            for name, update in updates.items():
                param = params[name]
                if update.shape != param.shape:
                    applied.revert()
                    raise InvalidInput(f"delta for {name} has shape {tuple(update.shape)}, parameter has {tuple(param.shape)}")
                new_value = (param.detach().float() + update.to(param.device)).to(param.dtype)
                if not torch.isfinite(new_value).all():
                    applied.revert()
                    raise InvalidInput(f"applying the delta to {name} gives non-finite weights; refused")
                param.copy_(new_value)
        if verify:
            expected = self.manifest.get("params_after", {})
            for name in updates:
                if name in expected and tensor_sha256(params[name]) != expected[name]:
                    applied.revert()
                    raise IntegrityMismatch(
                        f"after applying delta {self.id[:12]}, {name} does not match the recorded weights; "
                        "the base model differs from the one the delta was computed on"
                    )
        return applied


class Revertible(Protocol):
    def revert(self) -> None: ...


_APPLIERS: dict[str, Callable[["Delta", nn.Module], Revertible]] = {}


def register_applier(kind: str, applier: Callable[["Delta", nn.Module], Revertible]) -> None:
    """Teach `Delta.apply` a new `apply_kind` (for deltas that are not plain weight additions)."""
    if kind == "weights" or (kind in _APPLIERS and _APPLIERS[kind] is not applier):
        raise InvalidInput(f"applier {kind!r} is already registered")
    _APPLIERS[kind] = applier


@dataclass
class AppliedDelta:
    """The exact tensors a delta replaced, so reverting restores them bit for bit."""

    model: nn.Module
    saved: dict[str, torch.Tensor]
    reverted: bool = False

    def revert(self) -> None:
        if self.reverted:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in self.saved.items():
                params[name].copy_(tensor)
        self.reverted = True


def _updates_from(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    params = sorted({k.split("::", 1)[0] for k in tensors if not k.startswith(STATE_PREFIX)})
    updates: dict[str, torch.Tensor] = {}
    for param in params:
        if f"{param}::dense" in tensors:
            updates[param] = tensors[f"{param}::dense"].float()
        elif f"{param}::u" in tensors and f"{param}::v" in tensors:
            updates[param] = tensors[f"{param}::u"].float() @ tensors[f"{param}::v"].float()
        else:
            raise InvalidInput(f"delta has an incomplete update for {param}")
    return updates


def expected_params_after(model: nn.Module, updates: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """sha256 of each parameter as `Delta.apply` will leave it, computed without touching the model."""
    params = dict(model.named_parameters())
    out = {}
    for name, update in updates.items():
        param = params[name].detach()
        out[name] = tensor_sha256((param.float() + update.to(param.device).float()).to(param.dtype))
    return out
