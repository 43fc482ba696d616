"""Whole-lifecycle benchmark: provision N devices, first-boot them all, claim them.

    python bench/lifecycle.py --devices 1000 [--auth x509|token] [--concurrency 128]

The platform runs in a process of its own (bench/platform_server.py, free ports, a temporary
data dir); this process provisions over the REST API, boots the simulated fleet (one event
loop, simulators.fleet.Fleet), waits until every device is live (Birth acknowledged), and
claims them all. It prints one figure per line:

    devices N
    auth x509|token
    provisioning_serials_per_s     REST bulk provisioning (one request)
    first_boot_devices_per_s       power-on to live: init-key TLS session, CSR, certificate,
                                   second TLS session with the device's credentials, Birth, Ack
    claim_devices_per_s            REST bulk claim (all=true)
    whole_lifecycle_devices_per_s  N over the wall time of the three steps together
    client_memory_per_device_kib   RSS growth of this process from before the fleet to all live, / N
    baseline_aiomqtt_tls_memory_per_client_kib
                                   the same figure for bare aiomqtt TLS clients (bench/tls_baseline.py)
    first_boot_platform_cpu_pct    CPU of the platform process during the first boot (100 = one core)
    first_boot_fleet_cpu_pct       CPU of this process during the first boot
    first_boot_*_cpu_ms_per_device the same, as CPU milliseconds per device
    platform_rss_mib               the platform process's RSS with the fleet live

The first boot is timed from before the fleet is built (Fleet, one Agent per agent.env) to the
last device live. The devices' state dirs go to a temporary dir on /dev/shm when there is one
(--state-root to choose): their four small files per device cost 1-4 ms of kernel time each on
this kind of VM disk, which would measure the host's file system, not the platform. The
baseline runs after the fleet is off, in a process of its own, with the devices' serials and
tokens. Every wait is bounded; the platform process is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from agent.env import parse_agent_env  # noqa: E402
from harness.broker.tuning import tune_process  # noqa: E402
from harness.client import Client  # noqa: E402
from harness.datadir import read_operator_token, read_state  # noqa: E402
from simulators.fleet import Fleet  # noqa: E402

FAMILIES = ("imx", "photon", "x86")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size from /proc (includes what OpenSSL and other C code hold)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process, every thread included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def figure(name: str, value: float | int | str) -> None:
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

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
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
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def run_baseline(broker_url: str, clients: list[tuple[str, ...]], ca_pem: str, workdir: Path,
                 concurrency: int) -> dict[str, str]:
    """bench/tls_baseline.py in a process of its own; its figures by name."""
    url = urlsplit(broker_url)
    spec_path = workdir / "baseline.json"
    spec_path.write_text(json.dumps({"host": url.hostname, "port": url.port, "ca_pem": ca_pem, "clients": clients}))
    timeout = max(120.0, len(clients) / 10)
    try:
        out = subprocess.run(
            [sys.executable, str(BENCH_DIR / "tls_baseline.py"), str(spec_path),
             "--concurrency", str(concurrency), "--timeout", str(timeout)],
            capture_output=True, text=True, timeout=timeout + 120, cwd=str(BENCH_DIR.parent),
        )
    except subprocess.TimeoutExpired:
        note("the baseline did not finish in time")
        return {}
    if out.returncode != 0:
        note(f"baseline failed: {out.stderr[-2000:]}")
        return {}
    figures = {}
    for line in out.stdout.splitlines():
        name, _, value = line.partition(" ")
        figures[name] = value
    return figures


async def fleet_phase(envs: list[str], args: argparse.Namespace, workdir: Path, client: Client,
                      platform: PlatformProcess, broker_url: str, ca_pem: str) -> dict[str, Any]:
    """Boot the fleet until all live, claim, then (fleet off) run the baseline."""
    n = len(envs)
    result: dict[str, Any] = {}
    gc.collect()
    rss_before = rss_bytes()
    cpu_platform, cpu_self = cpu_seconds(platform.pid), cpu_seconds()
    started = time.monotonic()
    fleet = Fleet(connect_concurrency=args.concurrency)
    for i, text in enumerate(envs):
        env = parse_agent_env(text)
        fleet.add(env, args.state_root / env.serial, FAMILIES[i % len(FAMILIES)])
    envs.clear()
    try:
        fleet.boot_all()
        not_live = await fleet.wait_live(args.timeout or max(60.0, n / 20))
        result["boot_elapsed"] = time.monotonic() - started
        result["platform_cpu"] = cpu_seconds(platform.pid) - cpu_platform
        result["fleet_cpu"] = cpu_seconds() - cpu_self
        gc.collect()
        result["rss_growth"] = rss_bytes() - rss_before
        result["not_live"] = [(d.serial, d.error or d.agent.last_error) for d in not_live]

        claim_started = time.monotonic()
        # The REST client blocks: off the loop, so the fleet keeps answering keepalives.
        claimed = await asyncio.to_thread(client.claim, all=True)
        result["claimed_at"] = time.monotonic()
        result["claim_elapsed"] = result["claimed_at"] - claim_started
        result["claimed"] = int(claimed.get("claimed", 0))
        result["platform_rss"] = rss_bytes(platform.pid)
    finally:
        tokens = []
        for device in fleet.devices.values():
            creds = device.agent.state.credentials()
            if creds is not None:
                # A device logs in only with the credential kind it was provisioned for.
                cert = [str(creds.cert_path), str(creds.key_path)] if args.auth == "x509" else []
                tokens.append((device.serial, creds.token, *cert))
        try:
            await asyncio.wait_for(fleet.stop(), 120)
        except TimeoutError:
            note("the fleet did not stop within 120 s")
    if not args.no_baseline and tokens:
        # The same serials and tokens, with the fleet off: each client takes a device's place.
        result["baseline"] = await asyncio.to_thread(
            run_baseline, broker_url, tokens, ca_pem, workdir, args.concurrency)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="Provision, first-boot and claim N simulated devices.")
    parser.add_argument("--devices", type=int, default=1000, help="fleet size N (default 1000)")
    parser.add_argument("--auth", choices=("x509", "token"), default="x509",
                        help="how devices authenticate after registration (default x509)")
    parser.add_argument("--concurrency", type=int, default=128,
                        help="devices between power-on and live at once (default 128)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for the fleet to go live (default max(60, N/20))")
    parser.add_argument("--state-root", type=Path, default=None,
                        help="parent of the simulated devices' state dirs (default: a temporary dir on "
                        "/dev/shm if there is one, else in the data dir's temporary dir)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare aiomqtt TLS baseline")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    parser.add_argument("--profile-platform", metavar="FILE", help="cProfile the platform process into FILE")
    parser.add_argument("--profile-fleet", metavar="FILE", help="cProfile this process's fleet phase into FILE")
    args = parser.parse_args()
    n = args.devices
    if not 1 <= n <= 19_000:
        parser.error("--devices must be between 1 and 19000 (one process holds at most ~19,500 sockets)")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="fleetrig-bench-"))
    data_dir = workdir / "data"
    scratch: Path | None = None
    if args.state_root is None:
        # Four small files per device: on this kind of VM disk (ext4, online discard) writing them
        # costs ~1-4 ms of kernel time per device, a benchmark of the host's file system rather
        # than of the platform or the simulator. tmpfs when there is one.
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            scratch = Path(tempfile.mkdtemp(prefix="fleetrig-bench-devices-", dir=shm))
        args.state_root = scratch or workdir / "devices"
    platform = PlatformProcess(data_dir, workdir / "platform.log", args.profile_platform)
    try:
        state = platform.start()
        with Client(state["api_url"], read_operator_token(data_dir), actor="bench",
                    timeout=max(120.0, n / 50)) as client:
            client.add_customer("Bench", "bench-1")
            client.add_part("bench-part")
            client.add_model("bench-model", "bench-part")
            serials = [f"BENCH{i:06d}" for i in range(n)]

            started = time.monotonic()
            report = client.provision(serials, customer="Bench", part="bench-part", auth=args.auth)
            provision_elapsed = time.monotonic() - started
            envs = [r["agent_env"] for r in report["results"] if r["ok"]]
            del report
            if len(envs) != n:
                note(f"only {len(envs)} of {n} serials provisioned")
            ca_pem = parse_agent_env(envs[0]).ca_cert_pem

            profiler = None
            if args.profile_fleet:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            tune_process()
            result = asyncio.run(fleet_phase(envs, args, workdir, client, platform, state["broker_url"], ca_pem))
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile_fleet)

        live = n - len(result["not_live"])
        boot = result["boot_elapsed"]
        figure("devices", n)
        figure("auth", args.auth)
        figure("provisioning_serials_per_s", n / provision_elapsed)
        figure("first_boot_devices_per_s", live / boot)
        figure("claim_devices_per_s", result["claimed"] / result["claim_elapsed"])
        figure("whole_lifecycle_devices_per_s", live / (result["claimed_at"] - started))
        figure("client_memory_per_device_kib", result["rss_growth"] / n / 1024)
        for name, value in result.get("baseline", {}).items():
            figure(name, value)
        figure("devices_live", live)
        figure("first_boot_platform_cpu_pct", 100 * result["platform_cpu"] / boot)
        figure("first_boot_fleet_cpu_pct", 100 * result["fleet_cpu"] / boot)
        figure("first_boot_platform_cpu_ms_per_device", 1000 * result["platform_cpu"] / max(live, 1))
        figure("first_boot_fleet_cpu_ms_per_device", 1000 * result["fleet_cpu"] / max(live, 1))
        figure("platform_rss_mib", result["platform_rss"] / 1024 / 1024)
        for serial, error in result["not_live"][:5]:
            note(f"not live: {serial}: {error}")
        return 1 if result["not_live"] else 0
    finally:
        platform.stop()
        if args.keep:
            note(f"kept {workdir}" + (f" and {scratch}" if scratch else ""))
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
