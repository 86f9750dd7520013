"""One contract suite for every delta store backend: a local directory and S3 (moto's server)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from infra.delta_store import LocalDeltaStore, delta_id_of, open_delta_store
from infra.delta_store.base import DeltaStore
from infra.errors import IntegrityMismatch, InvalidInput, NotFound

MiB = 1024 * 1024


def make_delta(payload: bytes = b"tensor bytes", **extra: Any) -> dict[str, bytes]:
    files = {"delta.safetensors": payload, "notes.txt": b"edited 3 facts\n"}
    manifest = {
        "editor": "memit",
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        **extra,
    }
    return {"manifest.json": json.dumps(manifest, sort_keys=True).encode(), **files}


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> DeltaStore:
    if request.param == "local":
        return open_delta_store((tmp_path / "deltas").as_uri())
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = f"kus-test-{uuid.uuid4().hex[:12]}"
    s3 = open_delta_store(f"s3://{bucket}/deltas", s3_endpoint_url=endpoint, s3_multipart_threshold=5 * MiB)
    s3.ensure_bucket()  # type: ignore[attr-defined]
    return s3


# backend-specific access to the stored bytes, to simulate corruption and crashes --------------------
def _is_local(store: DeltaStore) -> bool:
    return isinstance(store, LocalDeltaStore)


def overwrite_stored(store: DeltaStore, delta_id: str, name: str, data: bytes) -> None:
    if _is_local(store):
        (store.root / delta_id / name).write_bytes(data)  # type: ignore[attr-defined]
    else:
        key = store._key(delta_id, name)  # type: ignore[attr-defined]
        store.client.put_object(Bucket=store.bucket, Key=key, Body=data)  # type: ignore[attr-defined]


def remove_stored(store: DeltaStore, delta_id: str, name: str) -> None:
    if _is_local(store):
        (store.root / delta_id / name).unlink()  # type: ignore[attr-defined]
    else:
        key = store._key(delta_id, name)  # type: ignore[attr-defined]
        store.client.delete_object(Bucket=store.bucket, Key=key)  # type: ignore[attr-defined]


def stored_names(store: DeltaStore) -> list[str]:
    """Every stored file/object, relative to the store root."""
    if _is_local(store):
        root: Path = store.root  # type: ignore[attr-defined]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    response = store.client.list_objects_v2(Bucket=store.bucket)  # type: ignore[attr-defined]
    return sorted(obj["Key"] for obj in response.get("Contents", []))


# the contract --------------------------------------------------------------------------------------
def test_put_get_round_trip(store: DeltaStore) -> None:
    files = make_delta()
    delta_id = store.put(files)
    assert store.get(delta_id) == files


def test_id_is_sha256_of_manifest_bytes(store: DeltaStore) -> None:
    files = make_delta()
    delta_id = store.put(files)
    manifest = files["manifest.json"]
    assert delta_id == hashlib.sha256(manifest).hexdigest() == delta_id_of(manifest)
    assert store.uri_for(delta_id).startswith(store.uri)
    assert store.uri_for(delta_id).endswith(delta_id)


def test_put_is_idempotent(store: DeltaStore) -> None:
    files = make_delta()
    first = store.put(files)
    assert store.put(dict(files)) == first
    assert store.list() == [first]
    assert store.get(first) == files


def test_exists_and_list(store: DeltaStore) -> None:
    assert store.list() == []
    ids = [store.put(make_delta(f"payload {i}".encode())) for i in range(3)]
    assert store.list() == sorted(ids)
    assert all(store.exists(i) for i in ids)
    assert not store.exists(hashlib.sha256(b"never stored").hexdigest())
    assert not store.exists("not-an-id")


def test_put_refuses_a_file_whose_hash_disagrees_and_writes_nothing(store: DeltaStore) -> None:
    files = make_delta()
    files["delta.safetensors"] = b"tampered after the manifest was written"
    with pytest.raises(IntegrityMismatch, match="delta.safetensors"):
        store.put(files)
    assert store.list() == []
    assert not store.exists(delta_id_of(files["manifest.json"]))
    assert stored_names(store) == []


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda f: {k: v for k, v in f.items() if k != "manifest.json"}, id="no-manifest"),
        pytest.param(lambda f: {**f, "manifest.json": b"{not json"}, id="manifest-not-json"),
        pytest.param(lambda f: {**f, "manifest.json": b'{"editor": "memit"}'}, id="no-files-key"),
        pytest.param(lambda f: {k: v for k, v in f.items() if k != "notes.txt"}, id="listed-file-missing"),
        pytest.param(lambda f: {**f, "extra.bin": b"x"}, id="file-not-listed"),
    ],
)
def test_put_rejects_malformed_deltas(store: DeltaStore, broken: Any) -> None:
    with pytest.raises(InvalidInput):
        store.put(broken(make_delta()))
    assert stored_names(store) == []


@pytest.mark.parametrize("name", ["delta.safetensors", "manifest.json"])
def test_get_detects_a_corrupted_stored_file(store: DeltaStore, name: str) -> None:
    files = make_delta()
    delta_id = store.put(files)
    overwrite_stored(store, delta_id, name, files[name] + b"!")
    with pytest.raises(IntegrityMismatch):
        store.get(delta_id)


def test_get_detects_a_missing_stored_file(store: DeltaStore) -> None:
    delta_id = store.put(make_delta())
    remove_stored(store, delta_id, "notes.txt")
    with pytest.raises(IntegrityMismatch, match="notes.txt"):
        store.get(delta_id)


def test_get_of_a_missing_id_is_not_found(store: DeltaStore) -> None:
    with pytest.raises(NotFound):
        store.get(hashlib.sha256(b"never stored").hexdigest())
    with pytest.raises(InvalidInput):
        store.get("../../etc/passwd")


def test_large_delta_round_trip(store: DeltaStore) -> None:
    """6 MiB: above the S3 fixture's 5 MiB threshold, so the S3 backend goes multipart."""
    payload = os.urandom(6 * MiB)
    files = make_delta(payload)
    delta_id = store.put(files)
    assert store.get(delta_id) == files
    if not _is_local(store):
        head = store.client.head_object(  # type: ignore[attr-defined]
            Bucket=store.bucket, Key=store._key(delta_id, "delta.safetensors")  # type: ignore[attr-defined]
        )
        assert head["ETag"].strip('"').endswith("-2")  # a multipart ETag: 5 MiB + 1 MiB parts
        assert head["Metadata"]["sha256"] == hashlib.sha256(payload).hexdigest()


def test_blobs_round_trip(store: DeltaStore) -> None:
    data = os.urandom(1000)
    key = "cov/gpt2-abc123/layer.4/wikitext.npz"
    assert store.get_blob(key) is None
    assert store.put_blob(key, data) == hashlib.sha256(data).hexdigest()
    assert store.get_blob(key) == data
    assert store.put_blob(key, b"newer") == hashlib.sha256(b"newer").hexdigest()
    assert store.get_blob(key) == b"newer"
    assert store.list() == []  # blobs are not deltas
    for bad in ["../escape", "/abs", "a//b", "sp ace", "a/./b"]:
        with pytest.raises(InvalidInput):
            store.put_blob(bad, data)


def test_partially_written_delta_is_invisible_until_completed(store: DeltaStore) -> None:
    files = make_delta()
    delta_id = delta_id_of(files["manifest.json"])
    for name in ["delta.safetensors", "notes.txt"]:  # a crash before the manifest
        if _is_local(store):
            (store.root / delta_id).mkdir(exist_ok=True)  # type: ignore[attr-defined]
        overwrite_stored(store, delta_id, name, files[name])
    assert not store.exists(delta_id)
    assert store.list() == []
    with pytest.raises(NotFound):
        store.get(delta_id)
    assert store.put(files) == delta_id  # a retry completes it
    assert store.exists(delta_id)
    assert store.get(delta_id) == files


# the factory ---------------------------------------------------------------------------------------
def test_open_delta_store_by_scheme(tmp_path: Path) -> None:
    local = open_delta_store((tmp_path / "a b").as_uri())
    assert isinstance(local, LocalDeltaStore)
    assert local.root == (tmp_path / "a b").resolve()
    assert open_delta_store(local.uri).uri == local.uri
    s3 = open_delta_store("s3://bucket/some/prefix/", s3_endpoint_url="http://127.0.0.1:1")
    assert s3.uri == "s3://bucket/some/prefix"
    assert s3.uri_for("0" * 64) == f"s3://bucket/some/prefix/{'0' * 64}"
    for bad in ["/plain/path", "http://x/y", "s3:///no-bucket", "file://host/path", "gs://b/p"]:
        with pytest.raises(InvalidInput):
            open_delta_store(bad)
    with pytest.raises(InvalidInput):
        open_delta_store("s3://bucket", s3_checksums="always")
