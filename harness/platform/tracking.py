"""CVE tracking records: which known vulnerabilities concern which device.

Firmware tracking records are written by the device gateway as devices report versions;
both kinds are removed at end of life.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from harness.errors import NotFound, Refused
from harness.platform import audit
from harness.platform.context import PlatformContext
from harness.platform.models import CveRecord, Device

CVE_RULE = r"CVE-\d{4}-\d{4,7}"
_CVE = re.compile(CVE_RULE + r"\Z")  # \Z: `$` would accept a final newline
CVE_STATES = ("open", "mitigated", "fixed", "not-affected")


def track_cve(ctx: PlatformContext, serial: str, cve_id: str, status: str, actor: str, *,
              dry_run: bool = False) -> dict[str, Any]:
    if not isinstance(cve_id, str) or not _CVE.match(cve_id):
        raise Refused(f"{cve_id!r} is not a CVE id (CVE-YYYY-NNNN)")
    if status not in CVE_STATES:
        raise Refused(f"CVE status must be one of {', '.join(CVE_STATES)}, got {status!r}")
    with ctx.registry.session() as s:
        device = s.scalar(select(Device).where(Device.serial == serial))
        if device is None:
            raise NotFound(f"unknown serial {serial!r}")
        if dry_run:
            return {"serial": serial, "cve_id": cve_id, "status": status, "dry_run": True}
        s.add(CveRecord(device_id=device.id, cve_id=cve_id, status=status))
        audit.record(s, actor, "device.cve", serial, cve_id=cve_id, status=status)
    return {"serial": serial, "cve_id": cve_id, "status": status}


def list_cves(ctx: PlatformContext, *, serial: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """CVE tracking records of devices in the registry (a disposal removes a device's records)."""
    with ctx.registry.session() as s:
        query = select(CveRecord, Device.serial).join(Device).order_by(Device.serial, CveRecord.id)
        if serial:
            query = query.where(Device.serial == serial)
        if status:
            query = query.where(CveRecord.status == status)
        return [{"serial": sn, "cve_id": c.cve_id, "status": c.status, "created_at": c.created_at.isoformat()}
                for c, sn in s.execute(query)]
