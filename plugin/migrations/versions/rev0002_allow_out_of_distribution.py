"""jobs.allow_out_of_distribution: a research request may let an input through that the input gate would refuse.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The server default gives every existing job False, the gate's behaviour when they were made.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("allow_out_of_distribution", sa.Boolean(), nullable=False,
                                    server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("jobs", "allow_out_of_distribution")
