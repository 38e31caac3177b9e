"""A regional aggregator's members' wrap keys per enrollment (CKKS through a region whose
study key holder is elsewhere: the secret is wrapped for each member, never for the region).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite rebuilds the table, PostgreSQL alters it in place.
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("member_wrap_keys_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("member_wrap_keys_json")
