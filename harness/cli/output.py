"""How the CLI speaks: JSON when asked, rich tables otherwise, and one-line refusals."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit: 1 for a refusal, 2 for a usage error."""
    print(f"fleetrig: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    console.print(t)


def approve(action: str, yes: bool, *, required: bool = True, warning: str = "") -> None:
    """Go ahead only with consent: --yes, or a person at a terminal who says yes.

    Without a terminal (a script), a `required` confirmation refuses with one line naming
    --yes (exit 1); one that is not required (plain provisioning or claiming, which a
    manufacturing line script runs in a loop) goes ahead, as the seed's loop expects.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        if required:
            fail(f"{action}: not at a terminal, so confirm with --yes")
        return
    if not typer.confirm(f"{action}{f' ({warning})' if warning else ''}: go ahead?", default=False):
        fail("cancelled: nothing changed")
