"""`fleetrig fleet ...`: claim devices into the fleet, list it."""

from __future__ import annotations

import sys

import typer

from harness.cli.options import DRY_RUN, JSON, YES, group
from harness.cli.output import approve, emit_json, fail, table

app = group("Fleet Manager: claim devices, list the fleet.")


@app.command("claim")
def claim(
    ctx: typer.Context,
    serials: list[str] = typer.Argument(None, help="Serials to claim."),
    all_: bool = typer.Option(False, "--all", help="Claim every provisioned but unclaimed device."),
    dry_run: bool = DRY_RUN,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Claim devices into the Fleet Manager (bulk with --all: registry minus fleet).

    Claiming destroys nothing, so scripts run it without --yes; at a terminal a bulk claim asks.
    """
    if bool(serials) == all_:
        fail("name serials or use --all (not both)", 2)
    client = ctx.obj.client()
    if all_ and not dry_run and not yes and sys.stdin.isatty():
        preview = client.claim(all=True, dry_run=True)
        approve(f"claim {preview['claimed']} device(s)", yes, required=False)
    report = client.claim(None if all_ else list(serials), all=all_, dry_run=dry_run)
    if as_json:
        emit_json(report)
    else:
        results = report["results"]
        if len(results) <= 50:
            table(None, ["serial", "result"], [(r["serial"], r.get("error") or r["result"]) for r in results])
        verb = "would claim" if dry_run else "claimed"
        print(f"{verb} {report['claimed']}, already claimed {report['already_claimed']}, "
              f"refused {report['refused']}")
    if report["refused"]:
        first = next(r for r in report["results"] if r["result"] == "refused")
        fail(f"{report['refused']} serial(s) refused; {first['serial']}: {first['error']}")


@app.command("list")
def fleet_list(ctx: typer.Context, as_json: bool = JSON) -> None:
    """List the devices in the fleet with firmware, connectivity and last-seen time."""
    devices = ctx.obj.client().fleet()
    if as_json:
        emit_json(devices)
        return
    table(f"fleet: {len(devices)} devices", ["serial", "customer", "model", "firmware", "connectivity", "last seen"],
          [(d["serial"], d["customer"], d["model"], d["firmware_version"], d["connectivity"], d["last_seen"])
           for d in devices])
