"""`fleetrig eol ...` and `fleetrig cve ...`: end of life, and the CVE tracking records.

A disposed device leaves the registry, so `pms device list` no longer shows it: `eol list`
shows the disposal records (who, when, why), and `fleetrig audit SERIAL` its whole history.
"""

from __future__ import annotations

import typer

from harness.cli.choices import CveStatus
from harness.cli.options import DRY_RUN, JSON, YES, group
from harness.cli.output import approve, emit_json, table

app = group("End of life: dispose of devices (permanent), list disposals.")
cve_app = group("CVE tracking records of devices.")


@app.command("dispose")
def dispose(
    ctx: typer.Context,
    serial: str = typer.Argument(..., help="The device to dispose of."),
    reason: str = typer.Option(..., "--reason", help="Why the device leaves service (recorded for good)."),
    dry_run: bool = DRY_RUN,
    yes: bool = typer.Option(False, "--yes", "-y", help="Confirm: disposal cannot be undone."),
    as_json: bool = JSON,
) -> None:
    """Record a disposal event, remove tracking records, delete the device and its identity."""
    client = ctx.obj.client()
    if dry_run:
        device = client.device(serial)
        preview = {"serial": serial, "dry_run": True, "reason": reason,
                   "firmware_records_removed": len(device.get("firmware_history", [])),
                   "cve_records_removed": len(device.get("cves", []))}
        if as_json:
            emit_json(preview)
        else:
            print(f"would dispose of {serial} ({device['state']}): remove {preview['firmware_records_removed']} "
                  f"firmware and {preview['cve_records_removed']} CVE records; its credentials would stop working")
        return
    approve(f"dispose of {serial}", yes, warning="permanent: its credentials stop working at once")
    result = client.dispose(serial, reason, confirm=True)
    if as_json:
        emit_json(result)
    else:
        print(f"disposed {serial}: removed {result['firmware_records_removed']} firmware and "
              f"{result['cve_records_removed']} CVE records; its credentials no longer work")


@app.command("list")
def disposals(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Disposed devices: serial, customer, reason, who and when (they are gone from the registry)."""
    rows = ctx.obj.client().disposals()
    if as_json:
        emit_json(rows)
    else:
        table(f"{len(rows)} disposed devices", ["serial", "customer", "reason", "by", "at"],
              [(d["serial"], d["customer"], d["reason"], d["actor"], d["at"]) for d in rows])


@cve_app.command("add")
def cve_add(
    ctx: typer.Context,
    serial: str = typer.Argument(..., help="The device the CVE concerns."),
    cve_id: str = typer.Argument(..., help="The CVE id, CVE-YYYY-NNNN."),
    status: CveStatus = typer.Option("open", "--status", help="How far its handling is."),
    dry_run: bool = DRY_RUN,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Record that a known vulnerability concerns a device (removed when it is disposed of)."""
    result = ctx.obj.client().track_cve(serial, cve_id, status, dry_run=dry_run)
    if as_json:
        emit_json(result)
    else:
        print(f"{'would record' if dry_run else 'recorded'} {cve_id} ({status}) for {serial}")


@cve_app.command("list")
def cve_list(
    ctx: typer.Context,
    serial: str | None = typer.Argument(None, help="Only this device's records."),
    status: CveStatus | None = typer.Option(None, "--status", help="Only records in this state."),
    as_json: bool = JSON,
) -> None:
    """CVE tracking records of the devices in the registry."""
    rows = ctx.obj.client().cves(serial, status)
    if as_json:
        emit_json(rows)
    else:
        table(f"{len(rows)} CVE records", ["serial", "cve", "status", "since"],
              [(r["serial"], r["cve_id"], r["status"], r["created_at"]) for r in rows])
