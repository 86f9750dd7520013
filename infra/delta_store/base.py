"""The delta store contract, shared validation, and the URI-based factory.

A stored delta is a small set of named files: always ``manifest.json`` plus others (e.g.
``delta.safetensors``). The manifest is a JSON object whose ``"files"`` key maps every other file's
name to its sha256 hex. The delta's id is the sha256 hex of the exact ``manifest.json`` bytes, so the
id pins the manifest and the manifest pins every file. The store understands nothing else: it only
moves verified bytes.

Usage::

    from infra.delta_store import open_delta_store

    store = open_delta_store("file:///var/lib/kus/deltas")
    delta_id = store.put({"manifest.json": manifest_bytes, "delta.safetensors": tensor_bytes})
    files = store.get(delta_id)          # re-verified against every sha256
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from infra.errors import IntegrityMismatch, InvalidInput, StorageError  # noqa: F401 - StorageError re-exported

MANIFEST = "manifest.json"
BLOBS_DIR = "blobs"
DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
S3_CHECKSUM_MODES = ("when_required", "when_supported")

_ID_RE = re.compile(r"[0-9a-f]{64}")
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_BLOB_KEY_RE = re.compile(r"[A-Za-z0-9._/-]+")


@runtime_checkable
class DeltaStore(Protocol):
    """Content-addressed storage of deltas (and a small blob cache) behind one URI."""

    uri: str

    def put(self, files: Mapping[str, bytes]) -> str:
        """Verify ``files`` against their manifest, store them (manifest last) and return the delta id."""
        ...

    def get(self, delta_id: str) -> dict[str, bytes]:
        """Return every file of the delta, re-verified; NotFound if absent, IntegrityMismatch if altered."""
        ...

    def exists(self, delta_id: str) -> bool:
        """Whether a complete delta (its manifest written) is stored under this id."""
        ...

    def list(self) -> list[str]:
        """Ids of the complete deltas, sorted."""
        ...

    def uri_for(self, delta_id: str) -> str:
        """The URI of one delta inside this store."""
        ...

    def put_blob(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``blobs/<key>`` (overwriting) and return its sha256 hex."""
        ...

    def get_blob(self, key: str) -> bytes | None:
        """The bytes stored under ``blobs/<key>``, or None."""
        ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def delta_id_of(manifest_bytes: bytes) -> str:
    """The id of a delta: the sha256 hex of its exact ``manifest.json`` bytes."""
    return sha256_hex(manifest_bytes)


def is_delta_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_delta_id(delta_id: object) -> str:
    """Return ``delta_id`` if it is a 64-character lowercase sha256 hex; InvalidInput otherwise."""
    if not is_delta_id(delta_id):
        raise InvalidInput(f"not a delta id (64 lowercase hex characters): {delta_id!r}")
    return delta_id  # type: ignore[return-value]


def check_blob_key(key: object) -> str:
    """Return ``key`` if it is a safe relative path of ``[A-Za-z0-9._/-]``; InvalidInput otherwise."""
    if not isinstance(key, str) or _BLOB_KEY_RE.fullmatch(key) is None:
        raise InvalidInput(f"blob key must be a relative path of [A-Za-z0-9._/-]: {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidInput(f"blob key has an empty, '.' or '..' path segment: {key!r}")
    return key


def parse_manifest(manifest_bytes: bytes) -> dict[str, str]:
    """The ``"files"`` map of a manifest (name -> sha256 hex); InvalidInput if malformed."""
    try:
        manifest: Any = json.loads(manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{MANIFEST} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise InvalidInput(f"{MANIFEST} must be a JSON object")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise InvalidInput(f'{MANIFEST} must have a "files" object mapping file names to sha256 hex')
    for name, digest in listed.items():
        if name == MANIFEST or _FILE_NAME_RE.fullmatch(name) is None:
            raise InvalidInput(f"{MANIFEST} lists an invalid file name: {name!r}")
        if not is_delta_id(digest):
            raise InvalidInput(
                f"{MANIFEST} lists {name!r} with a sha256 that is not 64 lowercase hex: {digest!r}"
            )
    return dict(listed)


def verify_for_put(files: Mapping[str, bytes]) -> tuple[str, dict[str, bytes], dict[str, str]]:
    """Check a delta before anything is written.

    Returns:
        ``(delta_id, files as bytes, {name: sha256} of the non-manifest files)``.

    Raises:
        InvalidInput: manifest missing or malformed, a listed file not given, a given file not listed.
        IntegrityMismatch: a given file's sha256 disagrees with the manifest.
    """
    if not isinstance(files, Mapping):
        raise InvalidInput("files must be a mapping of file name to bytes")
    data: dict[str, bytes] = {}
    for name, content in files.items():
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"file {name!r} must be bytes, not {type(content).__name__}")
        data[name] = bytes(content)
    if MANIFEST not in data:
        raise InvalidInput(f"a delta needs a {MANIFEST}")
    listed = parse_manifest(data[MANIFEST])
    given = set(data) - {MANIFEST}
    if missing := sorted(set(listed) - given):
        raise InvalidInput(f"{MANIFEST} lists files that were not given: {missing}")
    if unlisted := sorted(given - set(listed)):
        raise InvalidInput(f"files given but not listed in {MANIFEST}: {unlisted}")
    for name in sorted(given):
        actual = sha256_hex(data[name])
        if actual != listed[name]:
            raise IntegrityMismatch(f"{name}: sha256 {actual} but {MANIFEST} says {listed[name]}")
    return delta_id_of(data[MANIFEST]), data, listed


def verify_manifest_bytes(delta_id: str, manifest_bytes: bytes) -> dict[str, str]:
    """Check stored manifest bytes against the id they are stored under; return its ``"files"`` map."""
    actual = delta_id_of(manifest_bytes)
    if actual != delta_id:
        raise IntegrityMismatch(f"{delta_id}/{MANIFEST}: stored bytes hash to {actual}")
    try:
        return parse_manifest(manifest_bytes)
    except InvalidInput as exc:  # the bytes match the id, so it was stored malformed: still corrupt
        raise IntegrityMismatch(f"{delta_id}/{MANIFEST}: {exc}") from exc


def verify_stored_file(delta_id: str, name: str, content: bytes, expected: str) -> None:
    actual = sha256_hex(content)
    if actual != expected:
        raise IntegrityMismatch(
            f"{delta_id}/{name}: stored bytes hash to {actual}, {MANIFEST} says {expected}"
        )


def open_delta_store(
    uri: str,
    *,
    s3_endpoint_url: str | None = None,
    s3_checksums: str = "when_required",
    s3_multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
) -> DeltaStore:
    """Open the store a URI names: ``file:///abs/dir`` or ``s3://bucket[/prefix]``.

    Args:
        uri: where the store lives.
        s3_endpoint_url: an S3-compatible server (MinIO, moto, ...); None means AWS.
        s3_checksums: botocore's ``request_checksum_calculation`` / ``response_checksum_validation``,
            ``"when_required"`` (works with most S3-compatible servers) or ``"when_supported"``.
        s3_multipart_threshold: uploads at least this large go multipart.

    Raises:
        InvalidInput: an unknown scheme or a malformed URI.
    """
    if not isinstance(uri, str):
        raise InvalidInput(f"delta store URI must be a string: {uri!r}")
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path or parsed.query or parsed.fragment:
            raise InvalidInput(f"expected file:///absolute/path, got {uri!r}")
        from infra.delta_store.local import LocalDeltaStore

        return LocalDeltaStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc or parsed.query or parsed.fragment:
            raise InvalidInput(f"expected s3://bucket[/prefix], got {uri!r}")
        if s3_checksums not in S3_CHECKSUM_MODES:
            raise InvalidInput(f"s3_checksums must be one of {S3_CHECKSUM_MODES}, got {s3_checksums!r}")
        from infra.delta_store.s3 import S3DeltaStore, make_s3_client

        client = make_s3_client(endpoint_url=s3_endpoint_url, checksums=s3_checksums)
        return S3DeltaStore(
            parsed.netloc, unquote(parsed.path), client, multipart_threshold=s3_multipart_threshold
        )
    raise InvalidInput(f"unsupported delta store URI (expected file:// or s3://): {uri!r}")
