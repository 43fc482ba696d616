"""`fleetrig agent`: the device agent as a file to put on a device."""

from __future__ import annotations

from pathlib import Path

import typer

from agent.bundle import BundleError, build
from harness.cli.output import fail

app = typer.Typer(no_args_is_help=True)


@app.command("bundle")
def bundle(out: Path = typer.Option(..., "--out", help="The zipapp to write, e.g. fleetrig-agent.pyz.")) -> None:
    """Build a zipapp of the agent and its pure-Python dependencies (Debian's python3 runs it)."""
    try:
        made = build(out)
    except (BundleError, OSError) as exc:
        fail(f"agent bundle: {exc}")
    parts = ", ".join(f"{name} {version}" for name, version in made.distributions.items())
    print(f"{made.path}: {made.size // 1024} KiB ({parts}); run it with: python3 -I {made.path} --help")
