"""Short-lived full assessments behind the CDS card's report link.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The key is the SHA-256 of the link's token, so the database never holds a working link; the row
is deleted once it expires (LEUKODX_REPORT_LINK_MINUTES).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "cds_reports",
        sa.Column("key", sa.String(64), primary_key=True),        # sha256(token), hex
        sa.Column("expires_at", sa.Float, nullable=False),        # POSIX seconds
        sa.Column("body", sa.Text, nullable=False),               # the Assessment, JSON
        if_not_exists=True,
    )
    op.create_index("ix_cds_reports_expires_at", "cds_reports", ["expires_at"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_cds_reports_expires_at", table_name="cds_reports")
    op.drop_table("cds_reports")
