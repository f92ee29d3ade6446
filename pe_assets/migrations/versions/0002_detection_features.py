"""Header features for detection models (issue 3).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("pe_format", sa.Text),
    ("subsystem", sa.Integer),
    ("timestamp", sa.BigInteger),
    ("section_count", sa.Integer),
    ("entry_point", sa.BigInteger),
    ("has_signature", sa.Boolean),
    ("is_dotnet", sa.Boolean),
    ("overlay_size", sa.BigInteger),
    ("entropy", sa.Float),
    ("imphash", sa.String(32)),
)


def upgrade() -> None:
    for name, kind in _COLUMNS:
        op.add_column("pe_metadata", sa.Column(name, kind))


def downgrade() -> None:
    for name, _kind in reversed(_COLUMNS):
        op.drop_column("pe_metadata", name)
