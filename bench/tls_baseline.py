"""Baseline for the client memory figure: N bare aiomqtt clients connected over TLS.

    python bench/tls_baseline.py SPEC.json

SPEC.json names the broker (host, port), the CA (PEM) and the clients as [serial, token] pairs, or
[serial, token, cert_path, key_path] for devices that log in with their certificate.
Each client connects with the credential its device logs in with, the same
MQTT options as the agent, and one shared SSL context for token clients; nothing else. Prints one figure a line:
the process's RSS growth per connected client, and how many connected. It disconnects every
client and exits by itself; each step is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import ssl
import sys
import time
from pathlib import Path

import aiomqtt

from agent import wire


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def run(spec: dict, concurrency: int, timeout: float) -> None:
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    # aiomqtt connects (TCP + TLS handshake) in the default executor; give it room, as the fleet does.
    executor = ThreadPoolExecutor(max_workers=max(8, min(concurrency, 64)), thread_name_prefix="connect")
    loop.set_default_executor(executor)
    ctx = ssl.create_default_context(cadata=spec["ca_pem"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    gate = asyncio.Semaphore(concurrency)
    stop = asyncio.Event()
    connected = 0
    failed = 0
    all_in = asyncio.Event()
    total = len(spec["clients"])

    async def one(serial: str, token: str, cert: str = "", key: str = "") -> None:
        nonlocal connected, failed
        tls, password = ctx, wire.TOKEN_PASSWORD_PREFIX + token
        if cert:  # a certificate device: its certificate, as the agent presents it
            tls, password = ssl.create_default_context(cadata=spec["ca_pem"]), None
            tls.load_cert_chain(cert, key)
        client = aiomqtt.Client(
            spec["host"], spec["port"], identifier=serial, username=serial,
            password=password, tls_context=tls,
            protocol=aiomqtt.ProtocolVersion.V311, clean_session=True, keepalive=60, timeout=15,
        )
        try:
            async with gate:
                await client.__aenter__()
        except aiomqtt.MqttError:
            failed += 1
            if connected + failed == total:
                all_in.set()
            return
        connected += 1
        if connected + failed == total:
            all_in.set()
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), 10)

    gc.collect()
    before = rss_bytes()
    started = time.monotonic()
    tasks = [asyncio.create_task(one(*client)) for client in spec["clients"]]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), timeout)
    elapsed = time.monotonic() - started
    gc.collect()
    after = rss_bytes()
    stop.set()
    _, pending = await asyncio.wait(tasks, timeout=60)
    for task in pending:
        task.cancel()
    print(f"baseline_clients_connected {connected}")
    print(f"baseline_connects_per_s {connected / elapsed:.1f}")
    print(f"baseline_aiomqtt_tls_memory_per_client_kib {(after - before) / max(connected, 1) / 1024:.1f}")
    executor.shutdown(wait=False, cancel_futures=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    asyncio.run(run(spec, args.concurrency, args.timeout))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
