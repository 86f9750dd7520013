"""Signed approvals: a reviewer's decision is signed with the reviewer's own Ed25519 key.

The reviewer's name alone proves nothing (anyone can set KUS_USER); the signature does: it is
made with a private key only the reviewer holds (`KUS_SIGNING_KEY`, a PEM file) and checked
against the public key registered for that name (`KUS_REVIEWER_KEYS`, a JSON file
``{"alice": "<base64 public key>"}`` that an administrator maintains). It covers the run, the
delta's sha256, the decision, the reason, the reviewer and the time, so a row changed in the
database afterwards no longer verifies, and promotion checks it again before the head moves::

    private_pem, public = generate_key()
    payload = approval_payload(run_id=5, delta_sha="ab..", reviewer="alice", decision="approved",
                               reason="checked", at="2026-11-28T10:00:00+00:00")
    signature = sign(load_private_key(private_pem), payload)
    verify(public, payload, signature)  # True
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from infra.errors import InvalidInput, NotFound

__all__ = ["generate_key", "load_private_key", "public_key_of", "approval_payload", "sign", "verify",
           "read_reviewer_keys", "register_reviewer_key"]


def generate_key() -> tuple[bytes, str]:
    """A new key pair: (private key as unencrypted PKCS#8 PEM, public key as base64 of its 32 raw bytes)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem, public_key_of(private)


def load_private_key(pem_or_path: bytes | str | Path) -> Ed25519PrivateKey:
    """A reviewer's private key from PEM bytes or a PEM file."""
    data = pem_or_path if isinstance(pem_or_path, bytes) else Path(pem_or_path).read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput("the signing key must be an Ed25519 key")
    return key


def public_key_of(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def approval_payload(*, run_id: int, delta_sha: str | None, reviewer: str, decision: str, reason: str, at: str) -> bytes:
    """The bytes a decision's signature covers: canonical JSON of every field that matters."""
    fields: dict[str, Any] = {"kind": "kus-approval/v1", "run_id": int(run_id), "delta_sha256": delta_sha,
                              "reviewer": reviewer, "decision": decision, "reason": reason, "at": at}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def rollback_payload(*, model: str, from_sha: str, to_sha: str | None, reviewer: str, reason: str, at: str) -> bytes:
    """The bytes a rollback's signature covers."""
    fields: dict[str, Any] = {"kind": "kus-rollback/v1", "model": model, "from_sha256": from_sha, "to_sha256": to_sha,
                              "reviewer": reviewer, "reason": reason, "at": at}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign(private: Ed25519PrivateKey, payload: bytes) -> str:
    return base64.b64encode(private.sign(payload)).decode()


def verify(public_b64: str, payload: bytes, signature_b64: str) -> bool:
    """True only for a signature made by the private half of `public_b64` over exactly `payload`."""
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64, validate=True))
        public.verify(base64.b64decode(signature_b64, validate=True), payload)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def read_reviewer_keys(path: Path | None) -> dict[str, str]:
    """The registered reviewers' public keys ({} when no file is configured or it does not exist yet)."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise InvalidInput(f"reviewer keys file {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InvalidInput(f"reviewer keys file {path} must map reviewer names to base64 public keys")
    return data


def register_reviewer_key(path: Path, reviewer: str, public_b64: str) -> None:
    """Add or replace one reviewer's public key (an administrator's step; the file is the registry)."""
    if not reviewer.strip():
        raise InvalidInput("a reviewer needs a name")
    try:
        if len(base64.b64decode(public_b64, validate=True)) != 32:
            raise ValueError("wrong length")
    except ValueError:
        raise InvalidInput("not a base64 Ed25519 public key (32 bytes)") from None
    keys = read_reviewer_keys(path)
    keys[reviewer] = public_b64
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(keys, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_private_key(path: Path, pem: bytes) -> None:
    """Write a private key readable by its owner only."""
    path = Path(path)
    if path.exists():
        raise InvalidInput(f"{path} exists; refusing to overwrite a private key")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def require_key_file(path: Path | None) -> Path:
    if path is None:
        raise NotFound("no signing key: set KUS_SIGNING_KEY to your private key file (kus keys generate makes one)")
    if not Path(path).is_file():
        raise NotFound(f"signing key {path} does not exist")
    return Path(path)
