"""credentials.first_used_at: when a device first connected with a credential, its init key dies.

Until then the init key stays valid, so a power cut between the platform's answer to a
registration and the device storing it does not strand the device. Credentials issued before
this revision were issued under the older rule (the key died at registration), so they count as
used since their issue: otherwise the upgrade would bring every spent init key back to life.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("first_used_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE credentials SET first_used_at = issued_at")


def downgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("first_used_at")
