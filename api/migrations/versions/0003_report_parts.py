"""Report links kept with their shared parts once: the steps and sources every report repeats.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

A report's steps and sources (over half of its 13 KB) are the knowledge base's own entries, the same
JSON in every report that has them: ``cds_report_parts`` holds each once, by the digest of its bytes,
and a row of ``cds_report_links`` names them (api/feedback.py ReportStore). A new table rather than a
new layout in ``cds_reports``: a replica of the previous release, running beside this one during a
rolling upgrade, reads only ``cds_reports`` and so never serves a report in the new layout as if it
were whole (a link made by a new replica is "expired or unknown" there until it is replaced).
``cds_reports`` is still read and purged; a later release may drop it.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "cds_report_links",
        sa.Column("key", sa.String(64), primary_key=True),        # sha256(token), hex
        sa.Column("expires_at", sa.Float, nullable=False),        # POSIX seconds
        sa.Column("body", sa.LargeBinary, nullable=False),        # the Assessment, JSON, shared parts by digest
        if_not_exists=True,
    )
    op.create_index("ix_cds_report_links_expires_at", "cds_report_links", ["expires_at"], if_not_exists=True)
    op.create_table(
        "cds_report_parts",
        sa.Column("digest", sa.String(32), primary_key=True),     # sha256(body), first 32 hex digits
        sa.Column("body", sa.LargeBinary, nullable=False),        # a step's or a source's JSON
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("cds_report_parts")
    op.drop_index("ix_cds_report_links_expires_at", table_name="cds_report_links")
    op.drop_table("cds_report_links")
