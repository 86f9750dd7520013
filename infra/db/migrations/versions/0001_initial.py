"""Initial schema: catalogue feed, refresh runs, deltas, heads, approvals, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

``audit_events`` is append-only at the database level: triggers refuse UPDATE and DELETE (and
TRUNCATE on PostgreSQL). Only someone who can drop a trigger can rewrite history, and the hash
chain (``infra.audit.verify_chain``) exposes that.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_STATUSES = (
    "ingested",
    "edited",
    "validated",
    "awaiting_approval",
    "promoted",
    "rejected",
    "rolled_back",
    "failed",
)


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    op.create_table(
        "facts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("relation", sa.String(128), nullable=False),
        sa.Column("object", sa.Text(), nullable=False),
        sa.Column("valid_from", _ts(), nullable=True),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_facts"),
        sa.UniqueConstraint("subject", "relation", name="uq_facts_subject_relation"),
    )
    op.create_table(
        "fact_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("relation", sa.String(128), nullable=False),
        sa.Column("old_object", sa.Text(), nullable=True),
        sa.Column("new_object", sa.Text(), nullable=False),
        sa.Column("changed_at", _ts(), nullable=False),
        sa.Column("changed_by", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fact_changes"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "deltas",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("parent_sha", sa.String(64), nullable=True),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("editor", sa.String(128), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_deltas"),
        sa.ForeignKeyConstraint(["parent_sha"], ["deltas.sha256"], name="fk_deltas_parent_sha_deltas"),
    )
    op.create_index("ix_deltas_model_name", "deltas", ["model_name"])
    op.create_table(
        "refresh_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("editor", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("watermark_from", sa.Integer(), nullable=False),
        sa.Column("watermark_to", sa.Integer(), nullable=False),
        sa.Column("started_by", sa.String(256), nullable=False),
        sa.Column("started_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("delta_sha", sa.String(64), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("validation", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_refresh_runs"),
        sa.ForeignKeyConstraint(["delta_sha"], ["deltas.sha256"], name="fk_refresh_runs_delta_sha_deltas"),
        sa.CheckConstraint(_in("status", RUN_STATUSES), name="ck_refresh_runs_status"),
    )
    op.create_index("ix_refresh_runs_model_name_status", "refresh_runs", ["model_name", "status"])
    op.create_table(
        "change_rejections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("change_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_change_rejections"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["refresh_runs.id"], name="fk_change_rejections_run_id_refresh_runs"
        ),
        sa.ForeignKeyConstraint(
            ["change_id"], ["fact_changes.id"], name="fk_change_rejections_change_id_fact_changes"
        ),
    )
    op.create_index("ix_change_rejections_run_id", "change_rejections", ["run_id"])
    op.create_table(
        "model_heads",
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("delta_sha", sa.String(64), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("model_name", name="pk_model_heads"),
        sa.ForeignKeyConstraint(["delta_sha"], ["deltas.sha256"], name="fk_model_heads_delta_sha_deltas"),
    )
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("reviewer", sa.String(256), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_approvals"),
        sa.ForeignKeyConstraint(["run_id"], ["refresh_runs.id"], name="fk_approvals_run_id_refresh_runs"),
        sa.CheckConstraint(_in("decision", ("approved", "rejected")), name="ck_approvals_decision"),
    )
    op.create_index("ix_approvals_run_id", "approvals", ["run_id"])
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
        sa.UniqueConstraint("hash", name="uq_audit_events_hash"),
    )
    _create_append_only_triggers()


def downgrade() -> None:
    _drop_append_only_triggers()
    for table in (
        "audit_events",
        "approvals",
        "model_heads",
        "change_rejections",
        "refresh_runs",
        "deltas",
        "fact_changes",
        "facts",
    ):
        op.drop_table(table)


def _create_append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(
            """
            CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $body$
            BEGIN
                RAISE EXCEPTION 'audit_events is append-only; % refused', TG_OP;
            END
            $body$
            """
        )
        for op_name in ("update", "delete"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{op_name} BEFORE {op_name.upper()} ON audit_events "
                "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
            )
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
        )
    elif dialect == "sqlite":
        for op_name in ("update", "delete"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{op_name} BEFORE {op_name.upper()} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, 'audit_events is append-only; {op_name.upper()} refused'); END"
            )


def _drop_append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for name in ("update", "delete", "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS audit_events_no_{name} ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    elif dialect == "sqlite":
        for name in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS audit_events_no_{name}")
