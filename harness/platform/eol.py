"""End of life: dispose of a device for good.

The disposal event is recorded first, in the same transaction that removes the firmware and
CVE tracking records, the device, its init keys, credentials and claim. When it commits, the
broker forgets the identity and drops any live session: its credentials stop working at once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from harness.errors import NotFound, Refused
from harness.platform import audit
from harness.platform.context import PlatformContext
from harness.platform.models import Device, DisposalEvent

MAX_REASON_CHARS = 2000


def dispose(ctx: PlatformContext, serial: str, *, reason: str, actor: str) -> dict[str, Any]:
    reason = (reason or "").strip()
    if not reason:
        raise Refused("a disposal needs a reason (--reason TEXT)")
    if len(reason) > MAX_REASON_CHARS:
        raise Refused(f"the disposal reason is longer than {MAX_REASON_CHARS} characters")
    with ctx.registry.session() as s:
        device = s.scalar(select(Device).where(Device.serial == serial))
        if device is None:
            if s.scalar(select(DisposalEvent).where(DisposalEvent.serial == serial)):
                raise Refused(f"serial {serial!r} was disposed already")
            raise NotFound(f"unknown serial {serial!r}")
        firmware = [f.version for f in device.firmware_records]
        cves = [c.cve_id for c in device.cve_records]
        event = DisposalEvent(
            serial=serial, customer=device.customer.name, reason=reason, actor=actor,
            detail={"state": device.state, "firmware_history": firmware, "cves": cves,
                    "credentials_revoked": len(device.credentials)},
        )
        s.add(event)
        s.flush()
        device.firmware_records.clear()  # delete-orphan: the tracking rows go with this flush
        device.cve_records.clear()
        s.flush()
        s.delete(device)
        audit.record(s, actor, "device.dispose", serial, reason=reason,
                     firmware_records=len(firmware), cve_records=len(cves))
        at = event.at
    ctx.identities.remove(serial)
    ctx.drop_session(serial)
    return {"serial": serial, "disposed_at": at.isoformat(), "reason": reason,
            "firmware_records_removed": len(firmware), "cve_records_removed": len(cves)}


def list_disposals(ctx: PlatformContext) -> list[dict[str, Any]]:
    with ctx.registry.session() as s:
        return [
            {"serial": e.serial, "customer": e.customer, "reason": e.reason, "actor": e.actor,
             "at": e.at.isoformat()}
            for e in s.scalars(select(DisposalEvent).order_by(DisposalEvent.at))
        ]
