"""`fleetrig eol ...`: end of life. Disposal is permanent."""

from __future__ import annotations

import typer

from harness.cli.output import confirm, emit_json, fail

app = typer.Typer(no_args_is_help=True)


@app.command("dispose")
def dispose(
    ctx: typer.Context,
    serial: str,
    reason: str = typer.Option(..., "--reason", help="Why the device leaves service (recorded for good)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Confirm: disposal cannot be undone."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Record a disposal event, remove tracking records, delete the device and its identity."""
    if not confirm(f"Dispose of {serial} for good? Its credentials stop working at once.", yes):
        fail(f"disposal of {serial} is permanent: confirm with --yes")
    result = ctx.obj.client().dispose(serial, reason, confirm=True)
    if as_json:
        emit_json(result)
    else:
        print(f"disposed {serial}: removed {result['firmware_records_removed']} firmware and "
              f"{result['cve_records_removed']} CVE records; its credentials no longer work")
