"""A delta store in an S3 (or S3-compatible) bucket: ``<prefix>/<id>/<name>`` and ``<prefix>/blobs/<key>``.

Every object carries our own sha256 as metadata (``x-amz-meta-sha256``): a multipart ETag is not a
file hash. Files go up first and ``manifest.json`` last, so a delta whose upload was interrupted is
never reported by ``exists``/``list``. Nothing is ever deleted (rollback moves a head elsewhere); on a
versioned bucket a rewrite only adds a version.

Usage::

    client = make_s3_client(endpoint_url="http://127.0.0.1:9000", checksums="when_required")
    store = S3DeltaStore("models", "deltas", client)
    store.ensure_bucket()
    delta_id = store.put({"manifest.json": manifest_bytes, "delta.safetensors": tensor_bytes})
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from infra.delta_store.base import (
    BLOBS_DIR,
    DEFAULT_MULTIPART_THRESHOLD,
    MANIFEST,
    S3_CHECKSUM_MODES,
    StorageError,
    check_blob_key,
    check_delta_id,
    is_delta_id,
    sha256_hex,
    verify_for_put,
    verify_manifest_bytes,
    verify_stored_file,
)
from infra.errors import IntegrityMismatch, InvalidInput, NotFound, ServiceError

log = logging.getLogger(__name__)

SHA256_METADATA = "sha256"  # sent as x-amz-meta-sha256
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest non-final part
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def make_s3_client(*, endpoint_url: str | None = None, checksums: str = "when_required") -> Any:
    """A boto3 S3 client; ``checksums`` sets botocore's request and response checksum modes.

    boto3 >= 1.36 computes new default checksums that some S3-compatible servers reject, hence the
    setting. A custom endpoint gets path-style addressing (what MinIO and most others expect).
    """
    if checksums not in S3_CHECKSUM_MODES:
        raise InvalidInput(f"s3 checksums must be one of {S3_CHECKSUM_MODES}, got {checksums!r}")
    config = Config(
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _translate(exc: Exception, what: str) -> ServiceError:
    """A botocore/boto3 error as one of ours: NotFound for a missing key, StorageError otherwise."""
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        if code in _NOT_FOUND_CODES:
            return NotFound(f"{what}: not found ({code})")
        return StorageError(f"{what}: S3 error {code}: {exc}")
    if isinstance(exc, S3UploadFailedError):
        return StorageError(f"{what}: S3 upload failed: {exc}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


class S3DeltaStore:
    """Deltas as objects under ``s3://bucket/prefix``.

    Args:
        bucket: bucket name.
        prefix: key prefix (slashes at either end are ignored); empty for the bucket root.
        client: a boto3 S3 client, e.g. from ``make_s3_client``.
        multipart_threshold: uploads at least this large go multipart.
        multipart_chunksize: part size of a multipart upload (at least 5 MiB, S3's minimum).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any,
        *,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_chunksize: int | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise InvalidInput(f"invalid bucket name: {bucket!r}")
        if multipart_threshold < 1:
            raise InvalidInput(f"multipart_threshold must be positive, got {multipart_threshold}")
        chunksize = multipart_chunksize or max(MIN_PART_SIZE, min(multipart_threshold, 16 * 1024 * 1024))
        if chunksize < MIN_PART_SIZE:
            raise InvalidInput(f"multipart_chunksize must be at least {MIN_PART_SIZE}, got {chunksize}")
        self.bucket = bucket
        self.prefix = (prefix or "").strip("/")
        self.client = client
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=chunksize
        )
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def __repr__(self) -> str:
        return f"S3DeltaStore({self.uri!r})"

    # keys ---------------------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return "/".join(([self.prefix] if self.prefix else []) + list(parts))

    def uri_for(self, delta_id: str) -> str:
        return f"s3://{self.bucket}/{self._key(check_delta_id(delta_id))}"

    # bucket -------------------------------------------------------------------------------------
    def ensure_bucket(self, versioning: bool = True) -> None:
        """Create the bucket if it is missing and (by default) enable versioning on it."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise _translate(exc, f"head bucket {self.bucket}") from exc
            self._create_bucket()
        except BotoCoreError as exc:
            raise _translate(exc, f"head bucket {self.bucket}") from exc
        if versioning:
            try:
                self.client.put_bucket_versioning(
                    Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
                )
            except (ClientError, BotoCoreError) as exc:
                raise _translate(exc, f"enable versioning on {self.bucket}") from exc

    def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
            log.info("created bucket %s", self.bucket)
        except ClientError as exc:
            if _error_code(exc) != "BucketAlreadyOwnedByYou":
                raise _translate(exc, f"create bucket {self.bucket}") from exc
        except BotoCoreError as exc:
            raise _translate(exc, f"create bucket {self.bucket}") from exc

    # objects ------------------------------------------------------------------------------------
    def _upload(self, key: str, data: bytes, content_type: str) -> None:
        extra = {"Metadata": {SHA256_METADATA: sha256_hex(data)}, "ContentType": content_type}
        try:
            self.client.upload_fileobj(
                io.BytesIO(data), self.bucket, key, ExtraArgs=extra, Config=self.transfer_config
            )
        except (ClientError, S3UploadFailedError, BotoCoreError) as exc:
            raise _translate(exc, f"upload s3://{self.bucket}/{key}") from exc

    def _download(self, key: str) -> tuple[bytes, dict[str, str]]:
        """The object's bytes and its user metadata; NotFound if the key is absent."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response.get("Metadata") or {}
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"s3://{self.bucket}/{key}") from exc

    def _head_exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                return False
            raise _translate(exc, f"s3://{self.bucket}/{key}") from exc
        except BotoCoreError as exc:
            raise _translate(exc, f"s3://{self.bucket}/{key}") from exc

    # deltas -------------------------------------------------------------------------------------
    def exists(self, delta_id: str) -> bool:
        return is_delta_id(delta_id) and self._head_exists(self._key(delta_id, MANIFEST))

    def list(self) -> list[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        ids: set[str] = set()
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                for obj in page.get("Contents", []):
                    parts = obj["Key"][len(start):].split("/")
                    if len(parts) == 2 and parts[1] == MANIFEST and is_delta_id(parts[0]):
                        ids.add(parts[0])
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"list {self.uri}") from exc
        return sorted(ids)

    def put(self, files: Mapping[str, bytes]) -> str:
        delta_id, data, _ = verify_for_put(files)
        if self.exists(delta_id):
            return delta_id
        for name in sorted(set(data) - {MANIFEST}):
            self._upload(self._key(delta_id, name), data[name], "application/octet-stream")
        self._upload(self._key(delta_id, MANIFEST), data[MANIFEST], "application/json")
        log.debug("stored delta %s in %s", delta_id, self.uri)
        return delta_id

    def get(self, delta_id: str) -> dict[str, bytes]:
        check_delta_id(delta_id)
        try:
            manifest_bytes, _ = self._download(self._key(delta_id, MANIFEST))
        except NotFound:
            raise NotFound(f"no delta {delta_id} in {self.uri}") from None
        listed = verify_manifest_bytes(delta_id, manifest_bytes)
        out = {MANIFEST: manifest_bytes}
        for name, expected in sorted(listed.items()):
            try:
                content, metadata = self._download(self._key(delta_id, name))
            except NotFound:
                raise IntegrityMismatch(f"{delta_id}/{name}: listed in {MANIFEST} but missing") from None
            verify_stored_file(delta_id, name, content, expected)
            recorded = metadata.get(SHA256_METADATA)
            if recorded is not None and recorded != expected:
                raise IntegrityMismatch(
                    f"{delta_id}/{name}: object metadata sha256 {recorded}, expected {expected}"
                )
            out[name] = content
        return out

    # blobs --------------------------------------------------------------------------------------
    def put_blob(self, key: str, data: bytes) -> str:
        content = bytes(data)
        self._upload(self._key(BLOBS_DIR, check_blob_key(key)), content, "application/octet-stream")
        return sha256_hex(content)

    def get_blob(self, key: str) -> bytes | None:
        object_key = self._key(BLOBS_DIR, check_blob_key(key))
        try:
            content, metadata = self._download(object_key)
        except NotFound:
            return None
        recorded = metadata.get(SHA256_METADATA)
        if recorded is not None and recorded != sha256_hex(content):
            raise IntegrityMismatch(
                f"s3://{self.bucket}/{object_key}: bytes do not match their sha256 metadata"
            )
        return content
