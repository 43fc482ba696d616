"""How fast the agent starts on a device, from its zipapp and from an installed package.

    python bench/agent_start.py [--runs 3]

Builds the bundle (fleetrig agent bundle), starts the platform in a process of its own
(bench/platform_server.py), and prints one figure per line (medians of --runs):

    bundle_kib                       the zipapp's size
    bundle_first_start_s             /usr/bin/python3 -I bundle --help with an empty cache (unpacks)
    bundle_warm_start_s              the same with the bundle unpacked already
    bundle_to_registered_s           a new device, Debian's python3 running the bundle, start to live
    python_m_agent_to_registered_s   the same with this virtualenv's `python -m agent`

The *_to_registered figures include the interpreter start, key generation, both TLS sessions
and the Birth/Ack: what a first boot costs the device after its init system starts the agent.
The bundle figures are skipped (with a note on stderr) where /usr/bin/python3 or its
cryptography is missing. Every process is bounded in time; the platform stops at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from lifecycle import PlatformProcess, note  # noqa: E402

from agent.bundle import build  # noqa: E402
from harness.client import Client  # noqa: E402
from harness.datadir import read_operator_token  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"


def _timed(argv: list[str], env: dict[str, str], timeout: float = 120.0) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=False, cwd="/")
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]} exited {done.returncode}: {done.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def _system_python_ok() -> bool:
    probe = [SYSTEM_PYTHON, "-I", "-c", "import cryptography"]
    return Path(SYSTEM_PYTHON).exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = max(1, args.runs)
    with tempfile.TemporaryDirectory(prefix="fleetrig-bench-agent-") as tmp:
        work = Path(tmp)
        bundle = build(work / "fleetrig-agent.pyz")
        print(f"bundle_kib {bundle.size // 1024}", flush=True)
        system = _system_python_ok()
        if system:
            first, warm = [], []
            for run in range(runs):
                env = {"PATH": "/usr/bin:/bin", "FLEETRIG_AGENT_CACHE": str(work / f"cache-{run}")}
                first.append(_timed([SYSTEM_PYTHON, "-I", str(bundle.path), "--help"], env))
                warm.append(_timed([SYSTEM_PYTHON, "-I", str(bundle.path), "--help"], env))
            print(f"bundle_first_start_s {statistics.median(first):.3f}", flush=True)
            print(f"bundle_warm_start_s {statistics.median(warm):.3f}", flush=True)
        else:
            note(f"{SYSTEM_PYTHON} or its cryptography is missing: bundle figures skipped")
        platform = PlatformProcess(work / "data", work / "platform.log", None)
        try:
            state = platform.start()
            with Client(state["api_url"], read_operator_token(work / "data"), actor="bench") as client:
                client.add_customer("Bench", "bench-1")
                client.add_part("bench-part")
                client.add_model("bench-model", "bench-part")
                kinds = {"python_m_agent": [sys.executable, "-m", "agent"]}
                if system:
                    kinds["bundle"] = [SYSTEM_PYTHON, "-I", str(bundle.path)]
                for kind, command in kinds.items():
                    serials = [f"START-{kind.upper().replace('_', '')}-{i}" for i in range(runs)]
                    report = client.provision(serials, customer="Bench", part="bench-part")
                    seconds = []
                    for result in report["results"]:
                        env_file = work / f"{result['serial']}.env"
                        env_file.write_text(result["agent_env"])
                        env = {**os.environ, "FLEETRIG_AGENT_CACHE": str(work / "cache-0")}
                        if kind == "python_m_agent":
                            env["PYTHONPATH"] = str(BENCH_DIR.parent)
                        seconds.append(_timed([*command, "--env", str(env_file), "--state",
                                               str(work / result["serial"]), "--until", "registered",
                                               "--timeout", "60"], env))
                    print(f"{kind}_to_registered_s {statistics.median(seconds):.3f}", flush=True)
        finally:
            platform.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
