"""The metadata table, the sampling manifest and the per-folder listing watermark.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pe_metadata",
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger),
        sa.Column("sha256", sa.String(64)),
        sa.Column("file_type", sa.Text),
        sa.Column("architecture", sa.Text),
        sa.Column("machine", sa.Integer),
        sa.Column("import_count", sa.Integer),
        sa.Column("import_dll_count", sa.Integer),
        sa.Column("export_count", sa.Integer),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.Text),
    )
    op.create_index("ix_pe_metadata_sha256", "pe_metadata", ["sha256"])
    op.create_table(
        "pe_manifest",
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("shard", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger),
        sa.Column("sampled_by", sa.Text, nullable=False),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_pe_manifest_shard", "pe_manifest", ["shard"])
    op.create_index("ix_pe_manifest_sampled_by", "pe_manifest", ["sampled_by"])
    op.create_table(
        "pe_scan_state",
        sa.Column("label_prefix", sa.Text, primary_key=True),
        sa.Column("watermark", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pe_scan_state")
    op.drop_table("pe_manifest")
    op.drop_table("pe_metadata")
