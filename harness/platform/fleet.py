"""Fleet Manager: claiming provisioned devices into the operational fleet."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from agent import wire
from harness.errors import Refused
from harness.platform import audit
from harness.platform.context import PlatformContext
from harness.platform.models import CLAIMED, PROVISIONED, REGISTERED, Claim, Device, utcnow
from harness.platform.pms import device_view


def claim(
    ctx: PlatformContext, serials: list[str] | None, *, actor: str, dry_run: bool = False
) -> dict[str, Any]:
    """Claim the given serials, or with `serials=None` every provisioned-but-unclaimed device.

    Bulk claim is the difference between the registry and the fleet: every device that is
    provisioned or registered and has no claim yet. One result per serial:
    "claimed" (or "would-claim" in a dry run), "already-claimed", or "refused" with a reason.
    """
    if serials is not None and not serials:
        raise Refused("no serials given; name serials or use --all")
    results: list[dict[str, Any]] = []
    with ctx.registry.session() as s:
        if serials is None:
            claimed_ids = select(Claim.device_id)
            devices = list(s.scalars(
                select(Device).where(Device.state.in_((PROVISIONED, REGISTERED)), Device.id.not_in(claimed_ids))
                .order_by(Device.serial)
            ))
            targets = [(d.serial, d) for d in devices]
        else:
            found = {}
            wellformed = [x for x in serials if isinstance(x, str) and wire.SERIAL_PATTERN.match(x)]
            for start in range(0, len(wellformed), 5000):
                for d in s.scalars(select(Device).where(Device.serial.in_(wellformed[start:start + 5000]))):
                    found[d.serial] = d
            targets = [(serial, found.get(serial)) for serial in serials]
        now = utcnow()
        claimed = []
        for serial, device in targets:
            if device is None:
                results.append({"serial": serial, "result": "refused", "error": f"unknown serial {serial!r}"})
            elif device.claim is not None or device.state == CLAIMED:
                results.append({"serial": serial, "result": "already-claimed"})
            elif dry_run:
                results.append({"serial": serial, "result": "would-claim"})
            else:
                device.claim = Claim(actor=actor, claimed_at=now)
                device.state = CLAIMED
                device.claimed_at = now
                claimed.append(serial)
                results.append({"serial": serial, "result": "claimed"})
        if claimed:
            audit.record(s, actor, "fleet.claim", None, count=len(claimed), serials=claimed[:1000])
    for serial in claimed:
        ctx.identities.update(serial, state=CLAIMED)
    return {
        "dry_run": dry_run,
        "claimed": sum(1 for r in results if r["result"] in ("claimed", "would-claim")),
        "already_claimed": sum(1 for r in results if r["result"] == "already-claimed"),
        "refused": sum(1 for r in results if r["result"] == "refused"),
        "results": results,
    }


def list_fleet(ctx: PlatformContext) -> list[dict[str, Any]]:
    with ctx.registry.session() as s:
        return [device_view(d) for d in s.scalars(select(Device).join(Claim).order_by(Device.serial))]
