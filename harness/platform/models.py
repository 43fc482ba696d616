"""The registry's tables (SQLAlchemy 2 declarative models).

Lifecycle of a device row: provisioned -> registered (first boot done) -> claimed (in the
fleet). End of life deletes the row and everything that identifies the device; what remains
is its disposal event and its audit trail, which keep the serial as plain text.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Double, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

PROVISIONED = "provisioned"
REGISTERED = "registered"
CLAIMED = "claimed"
DISPOSED = "disposed"

ONLINE = "online"
OFFLINE = "offline"
UNKNOWN = "unknown"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Part(Base):
    __tablename__ = "parts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    models: Mapped[list[DeviceModel]] = relationship(back_populates="part")


class DeviceModel(Base):
    """A model, assigned to a part, used to target firmware."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    part_id: Mapped[int] = mapped_column(ForeignKey("parts.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    part: Mapped[Part] = relationship(back_populates="models")


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    part_id: Mapped[int] = mapped_column(ForeignKey("parts.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    state: Mapped[str] = mapped_column(String(16), default=PROVISIONED)
    auth_mode: Mapped[str] = mapped_column(String(8), default="x509")
    firmware_version: Mapped[str | None] = mapped_column(String(128))
    connectivity: Mapped[str] = mapped_column(String(8), default=UNKNOWN)
    last_seen: Mapped[dt.datetime | None]
    facts: Mapped[dict[str, Any] | None]
    boot_id: Mapped[str | None] = mapped_column(String(64))
    signature_cert: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    registered_at: Mapped[dt.datetime | None]
    claimed_at: Mapped[dt.datetime | None]

    customer: Mapped[Customer] = relationship()
    part: Mapped[Part] = relationship()
    model: Mapped[DeviceModel] = relationship()
    init_keys: Mapped[list[InitKey]] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    credentials: Mapped[list[Credential]] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    claim: Mapped[Claim | None] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    firmware_records: Mapped[list[FirmwareRecord]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    cve_records: Mapped[list[CveRecord]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class InitKey(Base):
    """A one-time key for first boot. Only its SHA-256 is stored; the key itself is in agent.env."""

    __tablename__ = "init_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class Credential(Base):
    """A device's client certificate and token, issued at registration."""

    __tablename__ = "credentials"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    cert_fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    cert_serial: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    issued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    not_after: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    #: When the device first connected with this credential: from then on its init key is dead.
    first_used_at: Mapped[dt.datetime | None]


class Claim(Base):
    """Membership of a device in the operational fleet (Fleet Manager)."""

    __tablename__ = "claims"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), unique=True)
    claimed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))


class FirmwareRecord(Base):
    """Firmware tracking: each version a device has reported running."""

    __tablename__ = "firmware_records"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(128))
    first_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CveRecord(Base):
    """CVE tracking: a known vulnerability that concerns one device and its state of handling."""

    __tablename__ = "cve_records"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    cve_id: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DisposalEvent(Base):
    """End of life: recorded before the device is deleted, and kept for good."""

    __tablename__ = "disposal_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), index=True)
    customer: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    detail: Mapped[dict[str, Any] | None]


class AuditEvent(Base):
    """Every change to the registry: what, to which serial, by whom, when."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    serial: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None]

    __table_args__ = (Index("ix_audit_serial_at", "serial", "at"),)


# -- device management: jobs, telemetry, event log ------------------------------------------------

PENDING = "pending"
SENT = "sent"
SUCCEEDED = "succeeded"
FAILED = "failed"
TARGET_STATES = (PENDING, SENT, SUCCEEDED, FAILED)
DECOMMISSIONED = "decommissioned"
#: The states a device can be listed by (a disposed device is gone from the registry).
DEVICE_STATES = (PROVISIONED, REGISTERED, CLAIMED, DECOMMISSIONED)


class Job(Base):
    """One command (an RPC method and its parameters) sent to one or many devices."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any] | None]
    timeout_s: Mapped[float] = mapped_column(Double)
    targets: Mapped[list[JobTarget]] = relationship(back_populates="job", cascade="all, delete-orphan",
                                                    order_by="JobTarget.id")


class JobTarget(Base):
    """A job's command to one device, and that device's result."""

    __tablename__ = "job_targets"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    serial: Mapped[str] = mapped_column(String(64), index=True)
    request_id: Mapped[str] = mapped_column(String(40), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    status: Mapped[int | None]
    message: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]
    sent_at: Mapped[dt.datetime | None]
    deadline: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    job: Mapped[Job] = relationship(back_populates="targets")


class TelemetryRecord(Base):
    """One sample of dynamic telemetry, kept for the retention period."""

    __tablename__ = "telemetry"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime]
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    boot_id: Mapped[str | None] = mapped_column(String(64))
    seq: Mapped[int]
    values: Mapped[dict[str, Any] | None]

    __table_args__ = (Index("ix_telemetry_device_at", "device_id", "at"),)


class DeviceEventRecord(Base):
    """A device's event log: what it reported and what happened to it."""

    __tablename__ = "device_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None]

    __table_args__ = (Index("ix_device_events_device_at", "device_id", "at"),)
