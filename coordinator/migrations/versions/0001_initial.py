"""Initial schema: the tables of coordinator/store.py as of the foundation.

Byte and sample counts are BIGINT (PostgreSQL's INTEGER is 32-bit); timestamps are
FLOAT (double precision on PostgreSQL).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("enrollments",
    sa.Column("study_id", sa.String(length=64), nullable=False),
    sa.Column("silo", sa.String(length=200), nullable=False),
    sa.Column("accepted", sa.Boolean(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("train_samples", sa.BigInteger(), nullable=False),
    sa.Column("test_samples", sa.BigInteger(), nullable=False),
    sa.Column("wrapped_key_sha", sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint("study_id", "silo")
    )
    op.create_table("metrics",
    sa.Column("study_id", sa.String(length=64), nullable=False),
    sa.Column("model_version", sa.Integer(), nullable=False),
    sa.Column("silo", sa.String(length=200), nullable=False),
    sa.Column("metrics_json", sa.Text(), nullable=False),
    sa.Column("samples", sa.BigInteger(), nullable=False),
    sa.Column("model_sha", sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint("study_id", "model_version", "silo")
    )
    op.create_table("model_versions",
    sa.Column("study_id", sa.String(length=64), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("blob_sha", sa.String(length=64), nullable=False),
    sa.Column("encoding", sa.String(length=40), nullable=False),
    sa.Column("base_version", sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint("study_id", "version")
    )
    op.create_table("rounds",
    sa.Column("study_id", sa.String(length=64), nullable=False),
    sa.Column("number", sa.Integer(), nullable=False),
    sa.Column("state", sa.String(length=20), nullable=False),
    sa.Column("nonce", sa.String(length=64), nullable=False),
    sa.Column("seed", sa.BigInteger(), nullable=False),
    sa.Column("participants_json", sa.Text(), nullable=False),
    sa.Column("opened_at", sa.Float(), nullable=False),
    sa.Column("deadline", sa.Float(), nullable=False),
    sa.Column("closed_at", sa.Float(), nullable=True),
    sa.Column("outcome_json", sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint("study_id", "number")
    )
    op.create_table("silos",
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("modalities_json", sa.Text(), nullable=False),
    sa.Column("wrap_public_key", sa.LargeBinary(), nullable=False),
    sa.Column("last_seen", sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint("name")
    )
    op.create_table("skips",
    sa.Column("study_id", sa.String(length=64), nullable=False),
    sa.Column("round", sa.Integer(), nullable=False),
    sa.Column("silo", sa.String(length=200), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("study_id", "round", "silo")
    )
    op.create_table("studies",
    sa.Column("id", sa.String(length=64), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("spec_json", sa.Text(), nullable=False),
    sa.Column("spec_sha256", sa.String(length=64), nullable=False),
    sa.Column("state", sa.String(length=20), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("current_round", sa.Integer(), nullable=False),
    sa.Column("key_holder", sa.String(length=200), nullable=True),
    sa.Column("public_context_sha", sa.String(length=64), nullable=True),
    sa.Column("final_model_sha", sa.String(length=64), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("server_state_json", sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_table("traffic",
    sa.Column("study_id", sa.String(length=64), nullable=False),
    sa.Column("round", sa.Integer(), nullable=False),
    sa.Column("silo", sa.String(length=200), nullable=False),
    sa.Column("bytes_up", sa.BigInteger(), nullable=False),
    sa.Column("bytes_down", sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint("study_id", "round", "silo")
    )
    op.create_table("updates",
    sa.Column("study_id", sa.String(length=64), nullable=False),
    sa.Column("round", sa.Integer(), nullable=False),
    sa.Column("silo", sa.String(length=200), nullable=False),
    sa.Column("blob_sha", sa.String(length=64), nullable=False),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("weight", sa.Float(), nullable=False),
    sa.Column("encoding", sa.String(length=40), nullable=False),
    sa.Column("metadata_json", sa.Text(), nullable=False),
    sa.Column("received_at", sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint("study_id", "round", "silo")
    )


def downgrade() -> None:
    op.drop_table("updates")
    op.drop_table("traffic")
    op.drop_table("studies")
    op.drop_table("skips")
    op.drop_table("silos")
    op.drop_table("rounds")
    op.drop_table("model_versions")
    op.drop_table("metrics")
    op.drop_table("enrollments")
