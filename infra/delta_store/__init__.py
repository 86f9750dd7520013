"""Content-addressed storage of deltas: a local directory or an S3 bucket, chosen by URI.

Usage::

    from infra.delta_store import open_delta_store

    store = open_delta_store("s3://models/deltas", s3_endpoint_url="http://127.0.0.1:9000")
    delta_id = store.put({"manifest.json": manifest_bytes, "delta.safetensors": tensor_bytes})
    assert store.get(delta_id)["delta.safetensors"] == tensor_bytes
"""

from infra.delta_store.base import (
    MANIFEST,
    DeltaStore,
    StorageError,
    delta_id_of,
    open_delta_store,
)
from infra.delta_store.local import LocalDeltaStore

__all__ = [
    "MANIFEST",
    "DeltaStore",
    "LocalDeltaStore",
    "S3DeltaStore",
    "StorageError",
    "delta_id_of",
    "open_delta_store",
]


def __getattr__(name: str) -> object:
    # boto3 is imported only when the S3 backend is used.
    if name == "S3DeltaStore":
        from infra.delta_store.s3 import S3DeltaStore

        return S3DeltaStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
