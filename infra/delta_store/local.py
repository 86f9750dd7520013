"""A delta store in a local directory: ``root/<id>/<name>`` and ``root/blobs/<key>``.

A delta is written into a temporary directory under ``root`` (same filesystem), every file fsynced,
then renamed into place with ``os.replace``: the delta appears whole or not at all. A directory
without ``manifest.json`` (left by a foreign or interrupted writer) is never reported as a delta.

Usage::

    store = LocalDeltaStore(Path("/var/lib/kus/deltas"))
    delta_id = store.put({"manifest.json": manifest_bytes, "delta.safetensors": tensor_bytes})
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from infra.delta_store.base import (
    BLOBS_DIR,
    MANIFEST,
    check_blob_key,
    check_delta_id,
    is_delta_id,
    sha256_hex,
    verify_for_put,
    verify_manifest_bytes,
    verify_stored_file,
)
from infra.errors import IntegrityMismatch, NotFound

log = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalDeltaStore:
    """Deltas as directories under ``root`` (created if missing)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalDeltaStore({str(self.root)!r})"

    def uri_for(self, delta_id: str) -> str:
        return (self.root / check_delta_id(delta_id)).as_uri()

    def exists(self, delta_id: str) -> bool:
        return is_delta_id(delta_id) and (self.root / delta_id / MANIFEST).is_file()

    def list(self) -> list[str]:
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if is_delta_id(entry.name) and (entry / MANIFEST).is_file()
        )

    def put(self, files: Mapping[str, bytes]) -> str:
        delta_id, data, _ = verify_for_put(files)
        if self.exists(delta_id):
            return delta_id
        target = self.root / delta_id
        tmp = self.root / f"{_TMP_PREFIX}{delta_id[:12]}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for name in sorted(set(data) - {MANIFEST}):
                _write_synced(tmp / name, data[name])
            _write_synced(tmp / MANIFEST, data[MANIFEST])
            _fsync_dir(tmp)
            if target.exists() and not self.exists(delta_id):
                self._set_aside(target)  # an incomplete leftover; os.replace cannot overwrite a full dir
            try:
                os.replace(tmp, target)
            except OSError:
                if self.exists(delta_id):  # a concurrent put of the same delta won the rename
                    return delta_id
                raise
            _fsync_dir(self.root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log.debug("stored delta %s in %s", delta_id, self.root)
        return delta_id

    def _set_aside(self, incomplete: Path) -> None:
        aside = self.root / f"{_TMP_PREFIX}incomplete-{uuid.uuid4().hex}"
        try:
            os.replace(incomplete, aside)
        except FileNotFoundError:
            return
        log.warning("removed incomplete delta directory %s", incomplete)
        shutil.rmtree(aside, ignore_errors=True)

    def get(self, delta_id: str) -> dict[str, bytes]:
        directory = self.root / check_delta_id(delta_id)
        try:
            manifest_bytes = (directory / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no delta {delta_id} in {self.uri}") from None
        listed = verify_manifest_bytes(delta_id, manifest_bytes)
        out = {MANIFEST: manifest_bytes}
        for name, expected in sorted(listed.items()):
            try:
                content = (directory / name).read_bytes()
            except FileNotFoundError:
                raise IntegrityMismatch(f"{delta_id}/{name}: listed in {MANIFEST} but missing") from None
            verify_stored_file(delta_id, name, content, expected)
            out[name] = content
        return out

    def put_blob(self, key: str, data: bytes) -> str:
        path = self.root / BLOBS_DIR / check_blob_key(key)
        content = bytes(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{uuid.uuid4().hex}")
        try:
            _write_synced(tmp, content)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        _fsync_dir(path.parent)
        return sha256_hex(content)

    def get_blob(self, key: str) -> bytes | None:
        path = self.root / BLOBS_DIR / check_blob_key(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
