"""Running the device's own tools (apt-get, dpkg, docker, mender, fw_printenv, systemctl).

Every command runs with an argument list (no shell), a time limit and a plain C locale, and a
failure becomes a HardwareError whose message names the tool and its last line of error output,
cut to a readable length: the operator sees apt's "E: Unable to locate package x", not a
Python traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from agent.hardware import HardwareError

#: Most of a command's error output that goes into a result message.
MAX_ERROR_CHARS = 300


def which(name: str) -> str | None:
    return shutil.which(name)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "Error", "error"))]
    line = (errors or lines or [""])[-1]
    return line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS] + "..."


def run(argv: Sequence[str], *, what: str, timeout: float = 60.0, status: int = 400,
        env: dict[str, str] | None = None) -> str:
    """Run `argv`; return its standard output, or raise HardwareError(status) naming `what`."""
    environment = {**os.environ, "LC_ALL": "C", "LANG": "C", **(env or {})}
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", timeout=timeout,
                              env=environment, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise HardwareError(status, f"{what}: {argv[0]} is not installed on this device") from None
    except subprocess.TimeoutExpired:
        raise HardwareError(status, f"{what}: {argv[0]} did not finish within {timeout:.0f}s") from None
    except OSError as exc:
        raise HardwareError(status, f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        reason = _last_line(done.stderr) or _last_line(done.stdout) or "no output"
        raise HardwareError(status, f"{what}: {argv[0]} exited with {done.returncode}: {reason}")
    return done.stdout


def output(argv: Sequence[str], timeout: float = 5.0) -> str:
    """A command's output, or "" when it is missing or fails (for facts that may be absent)."""
    try:
        return run(argv, what=argv[0], timeout=timeout)
    except HardwareError:
        return ""
