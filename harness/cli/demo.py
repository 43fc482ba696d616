"""`fleetrig demo`: the whole lifecycle on a simulated fleet, in one command.

A platform on free ports in a temporary data dir; a customer, part and model; N devices over
the three families provisioned through the bulk endpoint; agent.env files written and "flashed"
into each device's state; devices booted; bulk claim; one device disposed. It goes through the
REST API like any operator would, and ends with a table of counts per state and family.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path

import typer

from harness.cli.output import console, fail, table
from harness.client import Client
from harness.client.files import write_agent_envs
from harness.errors import Refused

PREFIX = {"imx": "IMX", "photon": "PNX", "x86": "X86"}


def demo(
    devices: int = typer.Option(200, "--devices", min=3, max=5000, help="How many simulated devices."),
    keep: bool = typer.Option(False, "--keep", help="Leave platform and devices running until Ctrl-C."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Use this data dir instead of a temporary one."),
) -> None:
    """Provision, boot, claim and dispose on a simulated fleet; print what happened."""
    from harness.broker.tuning import tune_process
    from harness.platform.process import PlatformConfig, PlatformThread

    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    logging.getLogger("transitions").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="fleetrig-demo-") as tmp:
        root = Path(data_dir) if data_dir else Path(tmp)
        thread = PlatformThread(PlatformConfig(data_dir=root / "platform", http_port=0, mqtts_port=0, repo_port=0))
        platform = thread.start()
        console.print(f"platform: API [bold]{platform.api_url}[/]  broker [bold]{platform.broker_url}[/]")
        client = Client(platform.api_url, platform.token, actor="demo")
        try:
            tune_process()  # the platform and 200 agents share this process
            asyncio.run(_demo(client, root, devices, keep))
        finally:
            client.close()
            thread.stop()


async def _demo(client: Client, root: Path, count: int, keep: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from simulators.families import FAMILIES, FAMILY_NAMES
    from simulators.fleet import Fleet

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    client.add_customer("ACME", "acme-0001")
    for fam in FAMILY_NAMES:
        client.add_part(f"{fam}-board")
        client.add_model(f"{fam}-rev-a", f"{fam}-board")
    families = {f"{PREFIX[fam]}-{i:05d}": fam for i in range(count) for fam in [FAMILY_NAMES[i % 3]]}
    out = root / "agent-env"
    results: list[dict] = []
    for fam in FAMILY_NAMES:
        serials = [s for s, f in families.items() if f == fam]
        report = client.provision(serials, customer="ACME", part=f"{fam}-board")
        if report["refused"]:
            fail(f"provisioning refused {report['refused']} serials: {report['results'][0]['error']}")
        results += report["results"]
    write_agent_envs(results, out)
    timings["provision (bulk API)"] = time.monotonic() - t0

    fleet = Fleet()
    for serial, fam in families.items():
        fleet.add(out / serial / "agent.env", root / "devices" / serial, fam)
    t1 = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("first boot: registered and live", total=count)
        fleet.on_change(lambda p: progress.update(task, completed=p.live + p.failed))
        fleet.boot_all()
        not_live = await fleet.wait_live(timeout=max(120.0, count / 5))
        progress.update(task, completed=count - len(not_live))
    if not_live:
        first = not_live[0]
        fail(f"{len(not_live)} devices did not come live; {first.serial}: {first.error or first.agent.last_error}")
    timings["first boot to live"] = time.monotonic() - t1

    t2 = time.monotonic()
    claim = client.claim(all=True)
    timings["bulk claim"] = time.monotonic() - t2
    if claim["claimed"] != count:
        fail(f"bulk claim took {claim['claimed']} of {count} devices")

    victim = next(iter(families))
    t3 = time.monotonic()
    client.dispose(victim, "demo: end of life", confirm=True)
    deadline = time.monotonic() + 30
    while fleet.devices[victim].powered and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    timings["dispose one device"] = time.monotonic() - t3
    victim_error = fleet.devices[victim].error

    listing = client.devices()
    states = Counter((d["family"] or families[d["serial"]], d["state"]) for d in listing)
    online = Counter(families[d["serial"]] for d in listing if d["connectivity"] == "online")
    disposed = Counter(families[d["serial"]] for d in client.disposals())
    rows = []
    for fam in FAMILY_NAMES:
        n = sum(1 for f in families.values() if f == fam)
        rows.append([FAMILIES[fam].title, n, states[(fam, "registered")], states[(fam, "claimed")],
                     online[fam], disposed[fam]])
    rows.append(["total", count, sum(r[2] for r in rows), sum(r[3] for r in rows), sum(r[4] for r in rows),
                 sum(r[5] for r in rows)])
    table(f"fleet after the demo ({claim['claimed']} devices claimed)",
          ["family", "provisioned", "registered (unclaimed)", "claimed", "online", "disposed"], rows)
    table("time per phase", ["phase", "seconds", "per second"],
          [(phase, f"{secs:.2f}", f"{count / secs:.0f}" if "one" not in phase and secs else "")
           for phase, secs in timings.items()])
    console.print(f"disposed {victim}; its agent says: {victim_error or 'still connected?'}")
    if keep:
        console.print(f"platform left running: API {client.api_url}; Ctrl-C to stop")
        try:
            while True:
                await asyncio.sleep(3600)
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass
    await fleet.stop()
    if victim_error == "" and fleet.devices[victim].powered:
        raise Refused(f"disposed device {victim} is still connected")
