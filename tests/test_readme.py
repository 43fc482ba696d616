"""The README's tour runs as written: its commands, in order, against a fresh platform.

The indented shell lines of the README sections in TOUR_SECTIONS (a line ending in a backslash
continues on the next) form one bash script, run under `set -e` in an empty directory with the
project's `fleetrig` first on PATH. The substitutions, the ones the README announces:

- `fleetrig serve ...` gets `--http-port 0 --mqtts-port 0 --repo-port 0` (free ports);
- it and `fleetrig sim fleet ...` (the two commands the README runs "in another shell") run in
  the background, and the script waits for their ready lines;
- the Python blocks that are not pytest examples run after the shell lines, against the same
  platform.

Everything else runs unchanged; the first failing line fails the test, naming the line.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TOUR_SECTIONS = ("A tour", "Managing live devices", "End of life")
FREE_PORTS = "--http-port 0 --mqtts-port 0 --repo-port 0"
#: Foreground commands run in the background, each with the line that says it is ready.
BACKGROUND = {"fleetrig serve": "fleetrig platform ready", "fleetrig sim fleet": "fleet ready"}
#: Seconds the whole tour may take (it stops by itself well before on a quiet machine).
TOUR_TIMEOUT = 600


def tour_commands(text: str) -> tuple[list[tuple[int, str]], list[str]]:
    """(README line number, shell command) of each indented line of the tour sections, and the
    Python blocks there that are not pytest examples."""
    commands: list[tuple[int, str]] = []
    blocks: list[str] = []
    section, fence, pending, start = "", None, "", 0
    block: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if fence is not None:
            if line.startswith("```"):
                if fence == "python" and section in TOUR_SECTIONS and "def test_" not in "".join(block):
                    blocks.append("\n".join(block))
                fence, block = None, []
            else:
                block.append(line)
            continue
        if line.startswith("```"):
            fence = line[3:].strip()
            continue
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if section not in TOUR_SECTIONS or not line.startswith("    "):
            continue
        if not pending:
            start = number
        pending += line[4:] if not pending else "\n" + line
        if not line.endswith("\\"):
            commands.append((start, pending))
            pending = ""
    return commands, blocks


def tour_script(commands: list[tuple[int, str]], blocks: list[str]) -> str:
    lines = [
        "set -euo pipefail",
        "trap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT",
        "ready() { for _ in $(seq 1200); do grep -q \"$2\" \"$1\" && return 0; sleep 0.1; done; "
        "echo \"not ready: $1\" >&2; cat \"$1\" >&2; return 1; }",
    ]
    for number, command in commands:
        lines.append(f"echo {shlex.quote(f'README.md:{number}: {command}')} >&2")
        background = next((k for k in BACKGROUND if command.startswith(k)), None)
        if background is None:
            lines.append(command)
            continue
        bare = re.sub(r"\s+#.*$", "", command)
        if background == "fleetrig serve":
            bare += " " + FREE_PORTS
        log = f".{background.split()[-1]}.log"
        lines += [f"{bare} > {log} 2>&1 &", f"ready {log} {shlex.quote(BACKGROUND[background])}"]
    for i, block in enumerate(blocks):
        lines += [f"echo 'README.md python block {i + 1}' >&2", f"python - <<'PYTHON'\n{block}\nPYTHON"]
    return "\n".join(lines) + "\n"


def test_the_readme_has_a_tour():
    commands, blocks = tour_commands(README.read_text())
    text = "\n".join(c for _, c in commands)
    for needed in ("fleetrig serve", "fleetrig pms provisioning provision", "fleetrig sim fleet",
                   "fleetrig fleet claim", "fleetrig ota aota", "fleetrig eol dispose", "fleetrig audit"):
        assert needed in text, needed
    assert blocks and "Client.from_data_dir" in blocks[0]


@pytest.mark.skipif(not all(shutil.which(tool) for tool in ("bash", "openssl", "tar")),
                    reason="the tour uses bash, openssl and tar")
def test_the_readme_tour_runs_as_written(tmp_path):
    commands, blocks = tour_commands(README.read_text())
    script = tour_script(commands, blocks)
    (tmp_path / "tour.sh").write_text(script)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT)}
    for name in ("FLEETRIG_API", "FLEETRIG_TOKEN", "FLEETRIG_DATA_DIR"):
        env.pop(name, None)
    proc = subprocess.Popen(["bash", "tour.sh"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TOUR_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the tour did not finish in {TOUR_TIMEOUT}s; last lines:\n{err[-3000:]}")
    steps = [line for line in err.splitlines() if line.startswith("README.md")]
    assert proc.returncode == 0, f"README step failed: {steps[-1] if steps else '?'}\n{err[-3000:]}"
    assert len(steps) == len(commands) + len(blocks)
    # What the tour claims happened, happened.
    assert "disposed SN-0002" in out
    results = [json.loads(line) for line in out.splitlines() if line.startswith('{"serial"')]
    # SN-0005 checks signatures (provisioned with --signature-cert): the SHA-256 one passed.
    assert any(r["serial"] == "SN-0005" and r["status"] == 200 and "firmware 2.0" in r["message"] for r in results)
    assert (tmp_path / "out" / "SN-0005" / "agent.env").exists()
    fleet_log = (tmp_path / ".fleet.log").read_text()
    assert "fleet ready: 5 of 5 devices live" in fleet_log and "fleet stopped" in fleet_log
    # What the tour leaves in the working directory is ignored by git and removed by `make clean`.
    written = {p.name for p in tmp_path.iterdir()} - {"tour.sh", ".serve.log", ".fleet.log"}
    ignored = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    clean = " ".join(line for line in (ROOT / "Makefile").read_text().splitlines()
                     if line.startswith(("TOUR_FILES", "\trm -rf")))
    for name in written:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in ignored), f"{name} is not in .gitignore"
        assert re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", clean), f"make clean leaves {name}"
