"""Write-once anchor storage: one contract for the local directory and for S3 Object Lock (moto's
server), then the S3-only guarantees, then `kus audit anchor` / `kus audit verify` end to end."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from infra.anchor_store import AnchorStore, S3AnchorStore, open_anchor_store
from infra.errors import IntegrityMismatch, InvalidState


def _bucket() -> str:
    return f"kus-anchors-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["local", "s3"])
def anchor_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnchorStore]:
    if request.param == "local":
        yield open_anchor_store((tmp_path / "anchors").as_uri())
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        yield open_anchor_store(f"s3://{_bucket()}/audit", retention_days=1, endpoint_url=endpoint)


def test_anchors_are_written_once_and_read_back_verified(anchor_store: AnchorStore) -> None:
    assert anchor_store.latest() is None and anchor_store.names() == []
    first = json.dumps({"seq": 3, "hash": "a" * 64}).encode()
    second = json.dumps({"seq": 12, "hash": "b" * 64}).encode()
    receipt = anchor_store.write("000000000003-aaaa.json", first)
    anchor_store.write("000000000012-bbbb.json", second)
    assert receipt.sha256 and receipt.uri.endswith("000000000003-aaaa.json")
    assert anchor_store.read("000000000003-aaaa.json") == first
    assert anchor_store.latest() == ("000000000012-bbbb.json", second)
    with pytest.raises(InvalidState, match="never replaced"):
        anchor_store.write("000000000003-aaaa.json", b"{}")
    assert anchor_store.read("000000000003-aaaa.json") == first


def test_s3_anchors_are_object_locked_and_survive_a_rewrite(moto_endpoint: str) -> None:
    store = open_anchor_store(f"s3://{_bucket()}/audit", retention_days=3, endpoint_url=moto_endpoint)
    assert isinstance(store, S3AnchorStore)
    data = b'{"seq": 7}'
    receipt = store.write("000000000007-cafe.json", data)
    assert receipt.mode == "COMPLIANCE" and receipt.locked_until > datetime.now(timezone.utc)
    client, key = store.client, "audit/000000000007-cafe.json"
    head = client.head_object(Bucket=store.bucket, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="AccessDenied"):  # the locked version cannot be deleted
        client.delete_object(Bucket=store.bucket, Key=key, VersionId=receipt.version_id)
    # whoever holds the bucket's keys can upload over it: that adds a version, the anchor stays
    client.put_object(Bucket=store.bucket, Key=key, Body=b'{"seq": 7, "forged": true}')
    assert store.read("000000000007-cafe.json") == data
    # an unlocked anchor that was slipped in is refused
    client.put_object(Bucket=store.bucket, Key="audit/000000000099-beef.json", Body=b'{"seq": 99}')
    with pytest.raises(IntegrityMismatch, match="no Object Lock"):
        store.latest()


def test_a_bucket_without_object_lock_is_refused(moto_endpoint: str) -> None:
    from infra.delta_store.s3 import make_s3_client

    bucket = _bucket()
    make_s3_client(endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    with pytest.raises(InvalidState, match="no Object Lock"):
        open_anchor_store(f"s3://{bucket}", endpoint_url=moto_endpoint)


def test_kus_audit_anchor_writes_a_locked_copy_that_verify_uses(tmp_path: Path, moto_endpoint: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The anchor goes to the Object-Locked bucket; `kus audit verify` then checks the trail against
    the newest one there without being told, and catches deleted newest rows."""
    import sqlalchemy as sa

    from flows.cli import main
    from infra.audit import append_event
    from infra.db import Database

    env = {"KUS_HOME": str(tmp_path), "KUS_ANCHOR_STORE": f"s3://{_bucket()}/anchors", "KUS_S3_ENDPOINT_URL": moto_endpoint,
           "KUS_ANCHOR_RETENTION_DAYS": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert main(["--quiet", "audit", "keygen"]) == 0
        from infra.settings import Settings

        settings = Settings.load()
        db = Database(settings.database_url, audit_key=settings.audit_key())
        db.upgrade()
        with db.session() as s:
            for i in range(4):
                append_event(s, "tester", "event", f"thing:{i}", {"i": i})
        assert main(["--quiet", "audit", "anchor"]) == 0
        assert main(["--quiet", "audit", "anchor"]) == 0  # nothing new: not written twice
        store = open_anchor_store(env["KUS_ANCHOR_STORE"], endpoint_url=moto_endpoint)
        assert len(store.names()) == 1 and json.loads(store.latest()[1])["seq"] == 4
        capsys.readouterr()
        assert main(["--quiet", "audit", "verify"]) == 0
        assert "matches the anchor at seq 4 from s3://" in " ".join(capsys.readouterr().out.split())
        with db.engine.begin() as conn:  # the database admin removes the newest rows (and the trigger)
            conn.execute(sa.text("DROP TRIGGER audit_events_no_delete"))
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq >= 3"))
        assert main(["--quiet", "audit", "verify"]) == 3
        assert "truncated" in capsys.readouterr().out
        db.dispose()
