"""The first schema: customers, parts, models, devices, init keys, credentials, claims, tracking, audit.

The registry as the project's first release created it (harness/models.py at commit 4e3bd73).

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


def _at(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _device_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        _at("at"),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_serial_at", "audit_events", ["serial", "at"])
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        _at("created_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("tenant_id"),
    )
    op.create_table(
        "disposal_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("customer", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        _at("at"),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_disposal_events_serial", "disposal_events", ["serial"])
    op.create_table(
        "parts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        _at("created_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("part_id", sa.Integer(), nullable=False),
        _at("created_at"),
        sa.ForeignKeyConstraint(["part_id"], ["parts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("part_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("auth_mode", sa.String(length=8), nullable=False),
        sa.Column("firmware_version", sa.String(length=128), nullable=True),
        sa.Column("connectivity", sa.String(length=8), nullable=False),
        _at("last_seen", nullable=True),
        sa.Column("facts", sa.JSON(), nullable=True),
        sa.Column("boot_id", sa.String(length=64), nullable=True),
        sa.Column("signature_cert", sa.Text(), nullable=True),
        _at("created_at"),
        _at("registered_at", nullable=True),
        _at("claimed_at", nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"]),
        sa.ForeignKeyConstraint(["part_id"], ["parts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("serial"),
    )
    op.create_table(
        "claims",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        _at("claimed_at"),
        sa.Column("actor", sa.String(length=128), nullable=False),
        _device_fk(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id"),
    )
    op.create_table(
        "credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("cert_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("cert_serial", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        _at("issued_at"),
        _at("not_after"),
        _at("revoked_at", nullable=True),
        _device_fk(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cert_fingerprint"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_credentials_device_id", "credentials", ["device_id"])
    op.create_table(
        "cve_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("cve_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        _at("created_at"),
        _device_fk(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_cve_records_device_id", "cve_records", ["device_id"])
    op.create_table(
        "firmware_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        _at("first_seen"),
        _device_fk(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_firmware_records_device_id", "firmware_records", ["device_id"])
    op.create_table(
        "init_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        _at("created_at"),
        _at("used_at", nullable=True),
        _at("revoked_at", nullable=True),
        _device_fk(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index("ix_init_keys_device_id", "init_keys", ["device_id"])


def downgrade() -> None:
    for table in ("init_keys", "firmware_records", "cve_records", "credentials", "claims", "devices", "models",
                  "parts", "disposal_events", "customers", "audit_events"):
        op.drop_table(table)
