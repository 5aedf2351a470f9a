"""The feedback table and the JWT replay table.

Revision ID: 0001
Revises:
Create Date: 2026-05-20

IF NOT EXISTS throughout: a database made before migrations existed (leukodx created these same
tables and indexes itself) is adopted as it is, its rows kept.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "cds_feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(200), nullable=False),
        sa.Column("card", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("outcome_timestamp", sa.String(64), nullable=False),
        sa.Column("accepted_suggestions", sa.Text, nullable=False),
        sa.Column("override_reason", sa.Text, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        if_not_exists=True,
    )
    op.create_index("ix_cds_feedback_card", "cds_feedback", ["card"], if_not_exists=True)
    op.create_table(
        "cds_jti",
        sa.Column("key", sa.String(64), primary_key=True),        # sha256(iss NUL jti), hex
        sa.Column("expires_at", sa.Float, nullable=False),        # POSIX seconds
        if_not_exists=True,
    )
    op.create_index("ix_cds_jti_expires_at", "cds_jti", ["expires_at"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_cds_jti_expires_at", table_name="cds_jti")
    op.drop_table("cds_jti")
    op.drop_index("ix_cds_feedback_card", table_name="cds_feedback")
    op.drop_table("cds_feedback")
