"""Keyed audit trail: each event carries an HMAC of its hash under a secret kept outside the database.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

A plain ADD COLUMN (no table rebuild), so the append-only triggers of 0001 stay in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("mac", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("mac")
