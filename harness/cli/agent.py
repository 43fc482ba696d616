"""`fleetrig agent`: the device agent as a file to put on a device."""

from __future__ import annotations

from pathlib import Path

import typer

from agent.bundle import BundleError, build, contents
from harness.cli.options import DRY_RUN, YES
from harness.cli.output import approve, fail

app = typer.Typer(no_args_is_help=True)


@app.command("bundle")
def bundle(
    out: Path = typer.Option(..., "--out", help="The zipapp to write, e.g. fleetrig-agent.pyz."),
    dry_run: bool = DRY_RUN,
    yes: bool = YES,
) -> None:
    """Build a zipapp of the agent and its pure-Python dependencies (Debian's python3 runs it).

    An existing file at --out is replaced only with consent (--yes without a terminal).
    """
    try:
        if out.is_dir():
            fail(f"--out {out} is a directory; name the file to write")
        if dry_run:
            parts = ", ".join(f"{name} {version}" for name, version in contents().items())
            print(f"would write {out}{' (replacing it)' if out.exists() else ''}: the agent with {parts}")
            return
        if out.exists():
            approve(f"replace {out}", yes)
        made = build(out)
    except (BundleError, OSError) as exc:
        fail(f"agent bundle: {exc}")
    parts = ", ".join(f"{name} {version}" for name, version in made.distributions.items())
    print(f"{made.path}: {made.size // 1024} KiB ({parts}); run it with: python3 -I {made.path} --help")
