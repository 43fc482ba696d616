"""`fleetrig audit [SERIAL]`: the audit log, one row per change and who made it.

It is where a disposed device's history stays readable after the device left the registry.
"""

from __future__ import annotations

import json

import typer

from harness.cli.options import JSON, LIMIT
from harness.cli.output import emit_json, table

#: Characters of an event's detail shown in the table (--json gives it whole).
DETAIL_WIDTH = 80


def audit(
    ctx: typer.Context,
    serial: str | None = typer.Argument(None, help="Only this device's events (disposed devices too)."),
    limit: int = LIMIT,
    as_json: bool = JSON,
) -> None:
    """The audit log, newest first: provisioning, claims, reissues, jobs, disposals."""
    rows = ctx.obj.client().audit(serial, limit, bulk=True)
    if as_json:
        emit_json(rows)
        return

    def detail(d: object) -> str:
        text = json.dumps(d, sort_keys=True) if d else ""
        return text if len(text) <= DETAIL_WIDTH else text[:DETAIL_WIDTH - 1] + "…"

    table(f"audit log{f' of {serial}' if serial else ''} ({len(rows)} events)",
          ["at", "actor", "action", "serial", "detail"],
          [(e["at"], e["actor"], e["action"], e["serial"], detail(e["detail"])) for e in rows])
