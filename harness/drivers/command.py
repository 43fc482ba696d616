"""Running the lab's external programs (relay tools, uuu, debugfs) with a bound and a clear failure.

The power and flash drivers shell out to programs the lab owns. When one fails the operator
needs three things on one line: which command, its exit code, and the end of what it said on
stderr (the start of a uuu or debugfs log is a banner; the cause is at the end). A hung relay
tool must not hang a test run, so every command has a timeout.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence

#: How much of a failing command's stderr an error message carries (the tail: the cause is last).
STDERR_TAIL_CHARS = 400


class CommandError(Exception):
    """An external command was missing, failed or timed out; the message names it."""


#: How many of a failing command's last lines an error message carries.
TAIL_LINES = 3
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def tail(text: str, limit: int = STDERR_TAIL_CHARS) -> str:
    """The last lines of `text` (terminal colours dropped), on one line, at most `limit` characters."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    flat = " | ".join(lines[-TAIL_LINES:])
    return flat if len(flat) <= limit else "..." + flat[-limit:]


def run(argv: Sequence[str], *, timeout: float, what: str,
        error: type[CommandError] = CommandError, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` (no shell), return its result; raise `error` naming `what`, the command and why."""
    shown = shlex.join(argv)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    if not argv or shutil.which(argv[0]) is None:
        raise error(f"{what}: command not found: {argv[0] if argv else '(empty)'!r} (in `{shown}`)")
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=stdin,
                              stdin=None if stdin is not None else subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired:
        raise error(f"{what}: `{shown}` did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise error(f"{what}: `{shown}` could not start: {exc.strerror or exc}") from None
    if done.returncode != 0:
        said = tail(done.stderr) or tail(done.stdout) or "no output"
        raise error(f"{what}: `{shown}` exited with {done.returncode}: {said}")
    return done
