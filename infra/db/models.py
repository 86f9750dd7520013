"""SQLAlchemy 2.0 typed models of the service's tables.

The schema itself is owned by the Alembic migrations in ``infra/db/migrations``; these models
mirror it (a test compares the two) and are used only inside ``infra/``. Every other layer gets
frozen dataclasses from :mod:`infra.repository` and :mod:`infra.audit`, never these rows.

Timestamps are timezone-aware UTC with microseconds on every backend (:class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Constraint names are deterministic so migrations can refer to them on every backend.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_STATUS_VALUES = (
    "ingested",
    "edited",
    "validated",
    "awaiting_approval",
    "promoted",
    "rejected",
    "rolled_back",
    "failed",
)
DECISION_VALUES = ("approved", "rejected")


def utc(value: datetime) -> datetime:
    """Return `value` as an aware UTC datetime; a naive value is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as an aware UTC datetime.

    PostgreSQL keeps it in ``timestamptz``; SQLite keeps the naive UTC wall time as text with
    microseconds. Either way the value read back compares (and serialises) equal to the one written.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = utc(value)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return utc(value)


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: _json()}


class FactRow(Base):
    """The catalogue as the source system holds it: one object per (subject, relation)."""

    __tablename__ = "facts"
    __table_args__ = (sa.UniqueConstraint("subject", "relation"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(sa.String(512))
    relation: Mapped[str] = mapped_column(sa.String(128))
    object: Mapped[str] = mapped_column(sa.Text)
    valid_from: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(sa.String(256))
    updated_at: Mapped[datetime]


class FactChangeRow(Base):
    """The change feed; `id` is the feed position (never reused, hence SQLite AUTOINCREMENT)."""

    __tablename__ = "fact_changes"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(sa.String(512))
    relation: Mapped[str] = mapped_column(sa.String(128))
    old_object: Mapped[str | None] = mapped_column(sa.Text)
    new_object: Mapped[str] = mapped_column(sa.Text)
    changed_at: Mapped[datetime]
    changed_by: Mapped[str] = mapped_column(sa.String(256))


class DeltaRow(Base):
    __tablename__ = "deltas"

    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    parent_sha: Mapped[str | None] = mapped_column(sa.String(64), sa.ForeignKey("deltas.sha256"))
    model_name: Mapped[str] = mapped_column(sa.String(256), index=True)
    editor: Mapped[str] = mapped_column(sa.String(128))
    uri: Mapped[str] = mapped_column(sa.Text)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column(_json())
    created_at: Mapped[datetime]


class RefreshRunRow(Base):
    __tablename__ = "refresh_runs"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in RUN_STATUS_VALUES) + ")", name="status"
        ),
        sa.Index("ix_refresh_runs_model_name_status", "model_name", "status"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(sa.String(256))
    editor: Mapped[str] = mapped_column(sa.String(128))
    status: Mapped[str] = mapped_column(sa.String(32))
    watermark_from: Mapped[int] = mapped_column(sa.Integer)
    watermark_to: Mapped[int] = mapped_column(sa.Integer)
    started_by: Mapped[str] = mapped_column(sa.String(256))
    started_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    delta_sha: Mapped[str | None] = mapped_column(sa.String(64), sa.ForeignKey("deltas.sha256"))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(_json())
    validation: Mapped[dict[str, Any] | None] = mapped_column(_json())
    error: Mapped[str | None] = mapped_column(sa.Text)
    flow_run_id: Mapped[str | None] = mapped_column(sa.String(64))


class RunArtifactRow(Base):
    """The sha256 of every file a run keeps in the store (sets, scores, tables): checked on every read."""

    __tablename__ = "run_artifacts"

    run_id: Mapped[int] = mapped_column(sa.ForeignKey("refresh_runs.id"), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    sha256: Mapped[str] = mapped_column(sa.String(64))


class ChangeRejectionRow(Base):
    __tablename__ = "change_rejections"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    #: the run whose input checks refused the row; None when an operator dropped it (`kus drop`)
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("refresh_runs.id"), index=True, nullable=True)
    change_id: Mapped[int] = mapped_column(sa.ForeignKey("fact_changes.id"))
    reason: Mapped[str] = mapped_column(sa.Text)
    at: Mapped[datetime]


class RefreshLeaseRow(Base):
    """One refresh per model at a time: the lease a working refresh holds, renewed at every step."""

    __tablename__ = "refresh_leases"

    model_name: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    run_id: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    holder: Mapped[str] = mapped_column(sa.String(256))
    expires_at: Mapped[datetime]


class ModelHeadRow(Base):
    """Which delta chain is live for a model; changed only by compare-and-set."""

    __tablename__ = "model_heads"

    model_name: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    delta_sha: Mapped[str | None] = mapped_column(sa.String(64), sa.ForeignKey("deltas.sha256"))
    updated_at: Mapped[datetime]
    version: Mapped[int] = mapped_column(sa.Integer)


class ApprovalRow(Base):
    __tablename__ = "approvals"
    __table_args__ = (
        sa.CheckConstraint(
            "decision IN (" + ", ".join(f"'{d}'" for d in DECISION_VALUES) + ")", name="decision"
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("refresh_runs.id"), index=True)
    reviewer: Mapped[str] = mapped_column(sa.String(256))
    decision: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.Text)
    at: Mapped[datetime]
    #: the bytes the reviewer signed (infra.signing.approval_payload) and the Ed25519 signature
    signed_payload: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    signature: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class AuditEventRow(Base):
    """Append-only, hash-chained; triggers in migration 0001 refuse UPDATE and DELETE."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(sa.String(256))
    action: Mapped[str] = mapped_column(sa.String(128))
    subject: Mapped[str] = mapped_column(sa.String(512))
    payload: Mapped[dict[str, Any]] = mapped_column(_json())
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: HMAC-SHA256 of `hash` under the audit key (None when the trail is not keyed)
    mac: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
