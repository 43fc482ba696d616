"""Options shared by many commands, so each reads and helps the same everywhere.

The conventions (seed 000, "Automating provisioning"): every command that changes something
takes --dry-run (validate and print what would change; nothing changes) and --yes (no prompt).
Commands that destroy or reach many devices ask at a terminal and, without one, need --yes.
"""

from __future__ import annotations

import typer

DRY_RUN = typer.Option(False, "--dry-run", help="Validate and print what would change; change nothing.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (needed without a terminal).")
JSON = typer.Option(False, "--json", help="Print JSON.")
SERIALS = typer.Argument(None, help="Target serials.")
ALL = typer.Option(False, "--all", help="Every registered device.")
CUSTOMER = typer.Option(None, "--customer", help="Every registered device of this customer.")
WAIT = typer.Option(False, "--wait", help="Wait for every device's result and print it.")
TIMEOUT = typer.Option(None, "--timeout", help="Seconds a device has to answer (default per command).")
QUIET = typer.Option(False, "--quiet", "-q", help="Print only the job id (for scripts: JOB=$(...)).")
LIMIT = typer.Option(200, "--limit", min=1, max=10000, help="At most this many rows.")


def group(help_text: str) -> typer.Typer:
    """A command group with the project's help style: plain click help, where a flag reads as a
    flag (typer's rich help labels every flag `<bool>`)."""
    return typer.Typer(no_args_is_help=True, help=help_text, rich_markup_mode=None, add_completion=False)
