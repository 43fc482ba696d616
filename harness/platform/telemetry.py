"""Telemetry and the event log on the platform side: storing, reading, retention.

Dynamic telemetry arrives as messages of samples; each sample becomes one row. A message is
identified by (device, boot, seq), so a message the device resends after a reconnect (it had
not seen the acknowledgement) is stored once. Rows older than the retention period are pruned.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from agent import wire
from harness.errors import NotFound
from harness.platform.context import PlatformContext
from harness.platform.models import Device, DeviceEventRecord, TelemetryRecord, utcnow

DEFAULT_RETENTION_DAYS = 30


def store(s: Session, device: Device, message: wire.TelemetryMessage, now: dt.datetime) -> int:
    """Store a telemetry message's samples; 0 if this (boot, seq) was stored before."""
    boot = device.boot_id
    exists = s.scalar(select(TelemetryRecord.id).where(
        TelemetryRecord.device_id == device.id, TelemetryRecord.boot_id == boot, TelemetryRecord.seq == message.seq
    ).limit(1))
    if exists is not None:
        return 0
    for sample in message.samples:
        ts = sample.get("ts")
        at = dt.datetime.fromtimestamp(ts, dt.UTC) if isinstance(ts, int | float) else now
        s.add(TelemetryRecord(device_id=device.id, at=at, received_at=now, boot_id=boot, seq=message.seq,
                              values={k: v for k, v in sample.items() if k != "ts"}))
    if message.dropped:
        s.add(DeviceEventRecord(device_id=device.id, at=now, kind="telemetry.dropped",
                                message=f"the device dropped {message.dropped} telemetry message(s) from its cache"))
    device.last_seen = now
    return len(message.samples)


def event(s: Session, device: Device, ev: wire.DeviceEvent, now: dt.datetime) -> None:
    s.add(DeviceEventRecord(device_id=device.id, at=now, kind=ev.kind, message=ev.message, detail=ev.detail or None))


def _device(s: Session, serial: str) -> Device:
    device = s.scalar(select(Device).where(Device.serial == serial))
    if device is None:
        raise NotFound(f"unknown serial {serial!r}")
    return device


def read_telemetry(ctx: PlatformContext, serial: str, limit: int = 100) -> dict[str, Any]:
    with ctx.registry.session() as s:
        device = _device(s, serial)
        rows = s.scalars(select(TelemetryRecord).where(TelemetryRecord.device_id == device.id)
                         .order_by(TelemetryRecord.at.desc(), TelemetryRecord.id.desc()).limit(limit)).all()
        return {
            "serial": serial,
            "static": device.facts or {},
            "dynamic": [{"at": r.at.isoformat(), "seq": r.seq, "boot_id": r.boot_id, **(r.values or {})}
                        for r in reversed(rows)],
        }


def read_events(ctx: PlatformContext, serial: str, limit: int = 200) -> list[dict[str, Any]]:
    with ctx.registry.session() as s:
        device = _device(s, serial)
        rows = s.scalars(select(DeviceEventRecord).where(DeviceEventRecord.device_id == device.id)
                         .order_by(DeviceEventRecord.id.desc()).limit(limit)).all()
        return [{"at": r.at.isoformat(), "kind": r.kind, "message": r.message, "detail": r.detail}
                for r in reversed(rows)]


def prune(ctx: PlatformContext, retention_days: int = DEFAULT_RETENTION_DAYS) -> int:
    cutoff = utcnow() - dt.timedelta(days=retention_days)
    with ctx.registry.session() as s:
        result = s.execute(delete(TelemetryRecord).where(TelemetryRecord.at < cutoff))
        s.execute(delete(DeviceEventRecord).where(DeviceEventRecord.at < cutoff))
        return int(result.rowcount or 0)
