"""`fleetrig serve` as a child process, for the tests of what happens to a data dir across starts,
stops and kills: the real entry point, its exit code and its stderr."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

FLEETRIG = [sys.executable, "-m", "harness.cli.main"]
FREE_PORTS = ("--http-port", "0", "--mqtts-port", "0", "--repo-port", "0")


def serve_refused(*args: str) -> subprocess.CompletedProcess:
    """Run a `fleetrig serve` that is expected to refuse (so it ends by itself)."""
    return subprocess.run([*FLEETRIG, "serve", *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def start_serve(data_dir: Path, *args: str, timeout: float = 60) -> subprocess.Popen:
    """Start `fleetrig serve` and wait until it says it is ready; fail with its output if it does not."""
    proc = subprocess.Popen([*FLEETRIG, "serve", "--data-dir", str(data_dir), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if "operator token" in line:
            return proc
    proc.kill()
    proc.wait(timeout=30)
    raise AssertionError(f"fleetrig serve did not get ready: {''.join(lines)}")


def stop_serve(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)
