"""jobs.fhir_url: the FHIR server a job's results go to, fixed when the node accepts the job.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-15

A generation worker on another host has no say in where results go: the node records the destination and the FHIR
server with the job. Jobs made before this revision have none, and deliver to their DICOM destination only.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("fhir_url", sa.String(500), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "fhir_url")
