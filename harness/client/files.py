"""The files an operator's machine gets from provisioning: OUTPUT_DIR/SERIAL/agent.env.

They live on the client side because the CLI writes them from the REST answer; the platform
never writes into an operator's directory. Mode 0600 from the first byte (the file holds a
one-time init key), written to a temporary name and renamed, so a crash leaves no half file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.env import write_agent_env
from harness.errors import Refused


def write_agent_envs(results: Iterable[Mapping[str, Any]], output_dir: Path) -> list[Path]:
    """Write OUTPUT_DIR/SERIAL/agent.env (mode 0600) for every accepted result ({serial, ok, agent_env})."""
    written = []
    for r in results:
        if not r.get("ok") or not r.get("agent_env"):
            continue
        folder = Path(output_dir) / r["serial"]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "agent.env"
        write_agent_env(path, r["agent_env"])
        written.append(path)
    return written


def check_output_dir(output_dir: Path, *, create: bool = True) -> None:
    """Refuse an output dir that cannot be created or written, before anything is provisioned.

    With create=False (a dry run) nothing is made: the nearest existing ancestor is checked.
    """
    output_dir = Path(output_dir)
    if not create:
        probe = output_dir
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise Refused(f"output dir {output_dir}: {probe} is not a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise Refused(f"output dir {output_dir}: {probe} is not writable")
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Refused(f"output dir {output_dir}: cannot create it ({exc.strerror})") from None
    if not output_dir.is_dir():
        raise Refused(f"output dir {output_dir}: exists and is not a directory")
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise Refused(f"output dir {output_dir}: not writable")
