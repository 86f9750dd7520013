"""Write-once storage for audit anchors: an S3 bucket with Object Lock, or a local directory.

An anchor ({"seq", "hash", "mac", "at"} of the newest audit event) is only worth something where
whoever could rewrite the database cannot rewrite it too. On S3 each anchor is written with an
Object Lock retention (COMPLIANCE by default: nobody, root included, can delete or shorten it
before the date); a later upload under the same key only adds a version, so reading takes the
**first** version of a key and checks that it is still locked. The local backend writes files
read-only and never overwrites one: as write-once as the file system's owner lets it be (tests and
a single machine; copy its files to WORM storage yourself).

Usage::

    store = open_anchor_store("s3://audit-anchors/prod", retention_days=2555, endpoint_url=None)
    receipt = store.write("000000000042-3f2a.json", anchor_bytes)   # refuses an existing name
    name, data = store.latest()                                        # the highest name, verified
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from infra.errors import IntegrityMismatch, InvalidInput, InvalidState, NotFound, StorageError

LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")
#: Seven years, a common retention for financial records.
DEFAULT_RETENTION_DAYS = 2555
_SHA256_METADATA = "sha256"


@dataclass(frozen=True)
class AnchorReceipt:
    """Where an anchor went and until when it cannot be removed (None: no lock, the local backend)."""

    uri: str
    sha256: str
    locked_until: datetime | None
    mode: str | None
    version_id: str | None = None


class AnchorStore(Protocol):
    uri: str

    def write(self, name: str, data: bytes) -> AnchorReceipt:
        """Store `data` under `name` for good; InvalidState if `name` is already written."""
        ...

    def read(self, name: str) -> bytes:
        """The bytes first written under `name`, verified; NotFound if absent, IntegrityMismatch if
        they no longer match or lost their lock."""
        ...

    def names(self) -> list[str]:
        """Every written name, sorted."""
        ...

    def latest(self) -> tuple[str, bytes] | None:
        """The highest name and its verified bytes, or None when nothing was written."""
        ...


def _check_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or not all(c.isalnum() or c in "._-" for c in name):
        raise InvalidInput(f"invalid anchor name {name!r}: letters, digits, '.', '_' and '-' only")
    return name


class LocalAnchorStore:
    """Anchors as read-only files in one directory; never overwritten."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = self.root.resolve().as_uri()

    def write(self, name: str, data: bytes) -> AnchorReceipt:
        path = self.root / _check_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileExistsError:
            raise InvalidState(f"anchor {name} is already written in {self.uri}; anchors are never replaced") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return AnchorReceipt(path.as_uri(), hashlib.sha256(data).hexdigest(), None, None)

    def read(self, name: str) -> bytes:
        path = self.root / _check_name(name)
        if not path.is_file():
            raise NotFound(f"no anchor {name} in {self.uri}")
        return path.read_bytes()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_file() and not p.name.startswith("."))

    def latest(self) -> tuple[str, bytes] | None:
        names = self.names()
        return (names[-1], self.read(names[-1])) if names else None


class S3AnchorStore:
    """Anchors as Object-Locked objects under ``s3://bucket/prefix``; the bucket must have Object Lock."""

    def __init__(self, bucket: str, prefix: str, client: Any, *, retention_days: int = DEFAULT_RETENTION_DAYS,
                 mode: str = "COMPLIANCE") -> None:
        if mode not in LOCK_MODES:
            raise InvalidInput(f"anchor lock mode must be one of {LOCK_MODES}, got {mode!r}")
        if retention_days < 1:
            raise InvalidInput(f"anchor retention must be at least 1 day, got {retention_days}")
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client
        self.retention_days, self.mode = retention_days, mode
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{_check_name(name)}" if self.prefix else _check_name(name)

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            if code in ("NoSuchKey", "404", "NotFound", "NoSuchVersion"):
                raise NotFound(f"{what}: not found") from None
            raise StorageError(f"{what}: S3 error {code}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def ensure_bucket(self) -> None:
        """Create the bucket with Object Lock if it is missing; refuse a bucket without it."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "ObjectLockEnabledForBucket": True}
            region = self.client.meta.region_name
            if region and region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            self._call(f"create bucket {self.bucket}", "create_bucket", **kwargs)
        try:
            config = self._call(f"Object Lock of {self.bucket}", "get_object_lock_configuration", Bucket=self.bucket)
        except StorageError:
            config = {}
        if config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise InvalidState(f"bucket {self.bucket} has no Object Lock: anchors there could be deleted or "
                               "replaced; use a bucket created with Object Lock enabled")

    def write(self, name: str, data: bytes) -> AnchorReceipt:
        key = self._key(name)
        if self._versions(key):
            raise InvalidState(f"anchor {name} is already written in {self.uri}; anchors are never replaced")
        until = (datetime.now(timezone.utc) + timedelta(days=self.retention_days)).replace(microsecond=0)
        digest = hashlib.sha256(data).hexdigest()
        response = self._call(
            f"write anchor s3://{self.bucket}/{key}", "put_object", Bucket=self.bucket, Key=key, Body=data,
            ContentType="application/json", Metadata={_SHA256_METADATA: digest},
            ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode(),  # Object Lock requires it
            ObjectLockMode=self.mode, ObjectLockRetainUntilDate=until,
        )
        return AnchorReceipt(f"s3://{self.bucket}/{key}", digest, until, self.mode, response.get("VersionId"))

    def _versions(self, key: str) -> list[dict[str, Any]]:
        """The key's versions, oldest first (delete markers left out)."""
        pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key)
        found: list[dict[str, Any]] = []
        try:
            for page in pages:
                found += [v for v in page.get("Versions", []) if v["Key"] == key]
        except Exception as exc:  # botocore errors from the paginator
            raise StorageError(f"list versions of s3://{self.bucket}/{key}: {exc}") from exc
        # S3 lists a key's versions newest first; timestamps have whole seconds, so keep that order on ties
        return sorted(reversed(found), key=lambda v: v["LastModified"])

    def read(self, name: str) -> bytes:
        key = self._key(name)
        versions = self._versions(key)
        if not versions:
            raise NotFound(f"no anchor {name} in {self.uri}")
        first = versions[0]["VersionId"]
        what = f"anchor s3://{self.bucket}/{key} (version {first})"
        response = self._call(what, "get_object", Bucket=self.bucket, Key=key, VersionId=first)
        data = response["Body"].read()
        if response.get("ObjectLockMode") not in LOCK_MODES:
            raise IntegrityMismatch(f"{what} carries no Object Lock: it could have been replaced")
        until = response.get("ObjectLockRetainUntilDate")
        if until is not None and until <= datetime.now(timezone.utc):
            raise IntegrityMismatch(f"{what}: its lock expired on {until:%Y-%m-%d}; it is no longer write-once")
        recorded = (response.get("Metadata") or {}).get(_SHA256_METADATA)
        if recorded != hashlib.sha256(data).hexdigest():
            raise IntegrityMismatch(f"{what}: bytes do not match the sha256 written with them")
        return data

    def names(self) -> list[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        names: set[str] = set()
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                names.update(obj["Key"][len(start):] for obj in page.get("Contents", []))
        except Exception as exc:
            raise StorageError(f"list {self.uri}: {exc}") from exc
        return sorted(n for n in names if n and "/" not in n)

    def latest(self) -> tuple[str, bytes] | None:
        names = self.names()
        return (names[-1], self.read(names[-1])) if names else None


def open_anchor_store(uri: str, *, retention_days: int = DEFAULT_RETENTION_DAYS, mode: str = "COMPLIANCE",
                      endpoint_url: str | None = None, checksums: str = "when_required") -> AnchorStore:
    """The anchor store a URI names: ``file:///abs/dir`` or ``s3://bucket[/prefix]`` (checked for Object Lock)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.path and parsed.netloc in ("", "localhost"):
        return LocalAnchorStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3" and parsed.netloc and not parsed.query:
        from infra.delta_store.s3 import make_s3_client

        store = S3AnchorStore(parsed.netloc, unquote(parsed.path), make_s3_client(endpoint_url=endpoint_url,
                              checksums=checksums), retention_days=retention_days, mode=mode)
        store.ensure_bucket()
        return store
    raise InvalidInput(f"unsupported anchor store URI (expected file:///dir or s3://bucket[/prefix]): {uri!r}")
