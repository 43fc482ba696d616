"""Batch OTA benchmark: one command to N live simulated devices, a result from each.

    python bench/batch_ota.py --devices 500

The platform runs in a process of its own (bench/platform_server.py); this process provisions
and boots the fleet, then sends each command as one job to every device (`all=true`) and waits
until every device has answered. It prints one figure per line:

    devices N
    <command>_seconds           from the job's creation to the last device's result
    <command>_devices_per_s     N over that time
    <command>_succeeded         devices that answered 200

for config set, AOTA docker-compose up (a package from the platform's HTTPS repository, fetched
by every device) and SOTA apt download-only. Every wait is bounded; the platform stops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

from lifecycle import FAMILIES, PlatformProcess, figure  # noqa: E402

from agent.env import parse_agent_env  # noqa: E402
from harness.broker.tuning import tune_process  # noqa: E402
from harness.client import Client  # noqa: E402
from harness.datadir import read_operator_token  # noqa: E402
from simulators.fleet import Fleet  # noqa: E402

COMPOSE = b"services:\n  app:\n    image: busybox:latest\n"


def compose_package() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("edge-app/docker-compose.yml")
        info.size = len(COMPOSE)
        tar.addfile(info, io.BytesIO(COMPOSE))
    return buffer.getvalue()


async def run(args: argparse.Namespace, workdir: Path, client: Client) -> None:
    serials = [f"BO-{i:05d}" for i in range(args.devices)]
    client.add_customer("ACME", "acme-bench")
    client.add_part("evk")
    client.add_model("evk-a", "evk")
    report = client.provision(serials, customer="ACME", part="evk")
    fleet = Fleet(connect_concurrency=args.concurrency)
    for i, result in enumerate(report["results"]):
        fleet.add(parse_agent_env(result["agent_env"]), workdir / "devices" / result["serial"], FAMILIES[i % 3])
    fleet.boot_all()
    not_live = await fleet.wait_live(timeout=max(120.0, args.devices / 20))
    if not_live:
        raise SystemExit(f"{len(not_live)} devices did not come live")
    figure("devices", args.devices)
    package = workdir / "edge-app.tar.gz"
    package.write_bytes(compose_package())
    url = (await asyncio.to_thread(client.add_package, package))["url"]
    commands = [
        ("config_set", "triggerconfig", {"cmd": "set", "path": "publishIntervalSeconds:600"}),
        ("aota_compose_up", "triggeraota", {"app": "compose", "cmd": "up", "containerTag": "edge-app",
                                            "fetch": url}),
        ("sota_download_only", "triggersota", {"cmd": "update", "mode": "download-only"}),
    ]
    for name, method, params in commands:
        started = time.monotonic()
        job = await asyncio.to_thread(client.create_job, method, params, all=True, timeout_s=args.timeout)
        done = await asyncio.to_thread(client.wait_job, job["id"], args.timeout + 30, 0.1)
        seconds = time.monotonic() - started
        figure(f"{name}_seconds", seconds)
        figure(f"{name}_devices_per_s", len(done["results"]) / seconds)
        figure(f"{name}_succeeded", done["counts"]["succeeded"])
    await fleet.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=300.0, help="per-command timeout of each job")
    args = parser.parse_args()
    if not 1 <= args.devices <= 10000:
        parser.error("--devices must be between 1 and 10000")
    with tempfile.TemporaryDirectory(prefix="fleetrig-batch-") as tmp:
        workdir = Path(tmp)
        platform = PlatformProcess(workdir / "platform", workdir / "platform.log", None)
        try:
            state = platform.start()
            client = Client(state["api_url"], read_operator_token(workdir / "platform"), actor="bench")
            tune_process()
            asyncio.run(run(args, workdir, client))
        finally:
            platform.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
