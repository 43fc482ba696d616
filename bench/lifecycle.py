"""Whole-lifecycle benchmark: provision N devices, first-boot them all, claim them.

    python bench/lifecycle.py --devices 1000 [--auth x509|token] [--concurrency 128]

The platform runs in a process of its own (bench/platform_server.py, free ports, a temporary
data dir); this process provisions over the REST API, boots the simulated fleet (one event
loop, simulators.fleet.Fleet), waits until every device is live (Birth acknowledged), and
claims them all. It prints one figure per line:

    devices N
    provisioning_serials_per_s     REST bulk provisioning (one request)
    first_boot_devices_per_s       power-on to live: init-key TLS session, CSR, certificate,
                                   second TLS session with the device's credentials, Birth, Ack
    claim_devices_per_s            REST bulk claim (all=true)
    whole_lifecycle_devices_per_s  N over the wall time of the three steps together
    client_memory_per_device_kib   RSS growth of this process from before the fleet to all live, / N
    baseline_aiomqtt_tls_memory_per_client_kib
                                   the same figure for bare aiomqtt TLS clients (bench/tls_baseline.py)

Every wait is bounded; the platform process is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from agent.env import parse_agent_env  # noqa: E402
from harness.client import Client  # noqa: E402
from harness.platform import read_state  # noqa: E402
from simulators.fleet import Fleet  # noqa: E402

FAMILIES = ("imx", "photon", "x86")


def rss_bytes(pid: int | str = "self") -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def figure(name: str, value: float | int) -> None:
    print(f"{name} {value:.1f}" if isinstance(value, float) else f"{name} {value}", flush=True)


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


class PlatformProcess:
    """bench/platform_server.py in a child process; stopped by closing its stdin."""

    def __init__(self, data_dir: Path, log_path: Path, profile: str | None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> dict:
        cmd = [sys.executable, str(BENCH_DIR / "platform_server.py"), str(self.data_dir), "--max-seconds", "3600"]
        if self.profile:
            cmd += ["--profile", self.profile]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=str(BENCH_DIR.parent))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = read_state(self.data_dir)
            if state.get("pid") == self.proc.pid and state.get("api_url") and state.get("broker_url"):
                return state
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the platform did not start; its log:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 40.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


async def boot_fleet(envs: list[str], state_root: Path, concurrency: int, timeout: float) -> dict:
    """Build the fleet, boot it, wait until all live; return timings, memory and the fleet."""
    gc.collect()
    rss_before = rss_bytes()
    started = time.monotonic()
    fleet = Fleet(connect_concurrency=concurrency)
    for i, text in enumerate(envs):
        env = parse_agent_env(text)
        fleet.add(env, state_root / env.serial, FAMILIES[i % len(FAMILIES)])
    envs.clear()
    fleet.boot_all()
    not_live = await fleet.wait_live(timeout)
    elapsed = time.monotonic() - started
    gc.collect()
    rss_live = rss_bytes()
    return {"fleet": fleet, "elapsed": elapsed, "not_live": not_live,
            "rss_growth": rss_live - rss_before}


async def stop_fleet(fleet: Fleet, timeout: float = 120.0) -> None:
    try:
        await asyncio.wait_for(fleet.stop(), timeout)
    except TimeoutError:
        note(f"the fleet did not stop within {timeout:.0f} s")


def run_baseline(state: dict, serials_tokens: list[tuple[str, str]], ca_pem: str, workdir: Path,
                 concurrency: int) -> dict[str, str]:
    url = urlsplit(state["broker_url"])
    spec = {"host": url.hostname, "port": url.port, "ca_pem": ca_pem, "clients": serials_tokens}
    spec_path = workdir / "baseline.json"
    spec_path.write_text(json.dumps(spec))
    timeout = max(120.0, len(serials_tokens) / 10)
    out = subprocess.run(
        [sys.executable, str(BENCH_DIR / "tls_baseline.py"), str(spec_path), "--concurrency", str(concurrency),
         "--timeout", str(timeout)],
        capture_output=True, text=True, timeout=timeout + 120, cwd=str(BENCH_DIR.parent),
    )
    if out.returncode != 0:
        note(f"baseline failed: {out.stderr[-2000:]}")
        return {}
    figures = {}
    for line in out.stdout.splitlines():
        name, _, value = line.partition(" ")
        figures[name] = value
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description="Provision, first-boot and claim N simulated devices.")
    parser.add_argument("--devices", type=int, default=1000, help="fleet size N (default 1000)")
    parser.add_argument("--auth", choices=("x509", "token"), default="x509",
                        help="how devices authenticate after registration (default x509)")
    parser.add_argument("--concurrency", type=int, default=128,
                        help="devices between power-on and live at once (default 128)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for the fleet to go live (default max(60, N/20))")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare aiomqtt TLS baseline")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    parser.add_argument("--profile-platform", metavar="FILE", help="cProfile the platform process into FILE")
    parser.add_argument("--profile-fleet", metavar="FILE", help="cProfile the first boot in this process into FILE")
    args = parser.parse_args()
    n = args.devices
    if not 1 <= n <= 19_000:
        parser.error("--devices must be between 1 and 19000 (one process holds at most ~19,500 sockets)")
    timeout = args.timeout or max(60.0, n / 20)

    workdir = Path(tempfile.mkdtemp(prefix="fleetrig-bench-"))
    data_dir = workdir / "data"
    platform = PlatformProcess(data_dir, workdir / "platform.log", args.profile_platform)
    failed = 0
    try:
        state = platform.start()
        client = Client(state["api_url"], (data_dir / "operator.token").read_text().strip(),
                        actor="bench", timeout=max(120.0, n / 50))
        with client:
            client.add_customer("Bench", "bench-1")
            client.add_part("bench-part")
            client.add_model("bench-model", "bench-part")
            serials = [f"BENCH{i:06d}" for i in range(n)]

            t_start = time.monotonic()
            report = client.provision(serials, customer="Bench", part="bench-part", auth=args.auth)
            t_provisioned = time.monotonic()
            envs = [r["agent_env"] for r in report["results"] if r["ok"]]
            if len(envs) != n:
                note(f"only {len(envs)} of {n} serials provisioned")
            del report
            ca_pem = parse_agent_env(envs[0]).ca_cert_pem

            profiler = None
            if args.profile_fleet:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            booted = asyncio.run(_lifecycle(envs, workdir / "devices", args.concurrency,
                                            timeout, client, args, ca_pem, state, workdir))
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile_fleet)
        t_boot = booted["elapsed"]
        t_claim = booted["claim_elapsed"]
        live = n - len(booted["not_live"])
        failed = len(booted["not_live"])
        whole = booted["t_claimed"] - t_start

        figure("devices", n)
        print(f"auth {args.auth}", flush=True)
        figure("provisioning_serials_per_s", n / (t_provisioned - t_start))
        figure("first_boot_devices_per_s", live / t_boot)
        figure("claim_devices_per_s", booted["claimed"] / t_claim if t_claim > 0 else 0.0)
        figure("whole_lifecycle_devices_per_s", live / whole)
        figure("client_memory_per_device_kib", booted["rss_growth"] / n / 1024)
        for name, value in booted.get("baseline", {}).items():
            print(f"{name} {value}", flush=True)
        figure("devices_live", live)
        figure("platform_rss_mib", booted["platform_rss"] / 1024 / 1024)
        if failed:
            for device in booted["not_live"][:5]:
                note(f"not live: {device.serial}: {device.error or device.agent.last_error}")
    finally:
        platform.stop()
        if args.keep:
            note(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


async def _lifecycle(envs: list[str], state_root: Path, concurrency: int, timeout: float, client: Client,
                     args: argparse.Namespace, ca_pem: str, state: dict, workdir: Path) -> dict:
    booted = await boot_fleet(envs, state_root, concurrency, timeout)
    fleet: Fleet = booted.pop("fleet")
    try:
        t0 = time.monotonic()
        # The REST client blocks; run it off the loop so the fleet keeps answering keepalives.
        result = await asyncio.to_thread(client.claim, all=True)
        booted["t_claimed"] = time.monotonic()
        booted["claim_elapsed"] = booted["t_claimed"] - t0
        booted["claimed"] = int(result.get("claimed", 0))
        booted["platform_rss"] = rss_bytes(read_state(Path(state_root.parent / "data")).get("pid", 0))
    finally:
        creds = []
        for device in fleet.devices.values():
            c = device.agent.state.credentials()
            if c is not None:
                creds.append((device.serial, c.token))
        await stop_fleet(fleet)
    if not args.no_baseline and creds:
        # Same serials and tokens, after the fleet is off: each client takes a device's place.
        booted["baseline"] = await asyncio.to_thread(
            run_baseline, state, creds, ca_pem, workdir, concurrency)
    return booted


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
