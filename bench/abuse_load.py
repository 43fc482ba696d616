"""Honest telemetry while one device attacks the broker, against the same run without it.

    python bench/abuse_load.py --devices 1000 [--seconds 30] [--interval 2]

The platform runs in a process of its own (bench/platform_server.py). N honest devices and one
attacker are provisioned (token credentials) and first-booted with the simulated fleet, which
is then switched off; the honest devices reconnect as plain aiomqtt clients, each sending one
telemetry message every --interval seconds and timing it until the platform's end-to-end
acknowledgement (stored in the registry, ack back on the device's topic). Two phases of
--seconds each, in one run: without the attacker, then with it. The attacker is a process of
its own (this script with --attack) that cycles, on four lanes at once, through: a PUBLISH
announcing 10 MiB (header only), an oversized CONNECT header, garbage after a CONNECT, a last
will on another device's RPC topic (retained), floods of 200 KiB retained messages on its own
topics, and connections that never send a CONNECT.

Prints one figure per line:

    devices N
    honest_msgs_per_s_without_attacker / _with_attacker        acknowledged telemetry per second
    honest_p99_ms_without_attacker / _with_attacker            publish-to-ack latency, 99th percentile
    honest_p50_ms_without_attacker / _with_attacker
    honest_unacked_without_attacker / _with_attacker           sent in the phase, not acknowledged by its end
    honest_disconnects_with_attacker                           honest clients that lost their connection
    platform_rss_mib_before_attack / _after_attack
    attacker_<attack>_attempts                                 what the attacker sent
    broker_<counter>                                           what the broker refused (BrokerStats)
    sweep_ms_per_10k_sessions                                  one keepalive sweep over 10,000 stamps

Everything is bounded: phases by --seconds, connects and boots by timeouts; the platform and
the attacker processes are stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

import aiomqtt  # noqa: E402
from lifecycle import FAMILIES, PlatformProcess, figure, note, rss_bytes  # noqa: E402

from agent import wire  # noqa: E402
from agent.env import parse_agent_env  # noqa: E402
from harness.broker.tuning import tune_process  # noqa: E402
from harness.client import Client  # noqa: E402
from harness.datadir import read_operator_token  # noqa: E402
from simulators.fleet import Fleet  # noqa: E402


@dataclass
class Phase:
    sent: int = 0
    acked: int = 0
    latencies: list[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# -- the honest devices ---------------------------------------------------------------------------


class Honest:
    """N aiomqtt clients sending telemetry and timing each message to its acknowledgement."""

    def __init__(self, host: str, port: int, ca_pem: str, interval: float) -> None:
        self.host, self.port, self.interval = host, port, interval
        self.ctx = ssl.create_default_context(cadata=ca_pem)
        self.phase = Phase()
        self.stop = asyncio.Event()
        self.connected = 0
        self.disconnects = 0

    async def run(self, serial: str, token: str, gate: asyncio.Semaphore) -> None:
        client = aiomqtt.Client(self.host, self.port, identifier=serial, username=serial,
                                password=wire.TOKEN_PASSWORD_PREFIX + token, tls_context=self.ctx,
                                protocol=aiomqtt.ProtocolVersion.V311, keepalive=60, timeout=30)
        async with gate:
            await client.__aenter__()
        self.connected += 1
        sent: dict[str, tuple[float, Phase]] = {}

        async def acks() -> None:
            async for message in client.messages:
                ref = json.loads(message.payload).get("ref", "")
                entry = sent.pop(ref, None)
                if entry is not None:
                    entry[1].acked += 1
                    entry[1].latencies.append(time.monotonic() - entry[0])

        reader = asyncio.create_task(acks())
        try:
            await client.subscribe(wire.topic(serial, wire.ACK), qos=1)
            topic = wire.topic(serial, wire.TELEMETRY)
            await asyncio.sleep(random.uniform(0, self.interval))
            seq = 0
            while not self.stop.is_set():
                seq += 1
                payload = wire.encode({"v": 1, "seq": seq, "samples": [{"t": time.time(), "cpu": 0.5}]})
                phase = self.phase
                sent[f"telemetry-{seq}"] = (time.monotonic(), phase)
                phase.sent += 1
                await client.publish(topic, payload, qos=1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.interval)
        except aiomqtt.MqttError:
            self.disconnects += 1
        finally:
            reader.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), 10)


async def load(args: argparse.Namespace, spec: dict[str, Any], creds: list[tuple[str, str]],
               platform: PlatformProcess, client: Client) -> dict[str, Any]:
    honest = Honest(spec["host"], spec["port"], spec["ca_pem"], args.interval)
    gate = asyncio.Semaphore(64)
    tasks = [asyncio.create_task(honest.run(serial, token, gate)) for serial, token in creds]
    result: dict[str, Any] = {}
    deadline = time.monotonic() + max(60.0, len(creds) / 10)
    while honest.connected < len(creds) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    if honest.connected < len(creds):
        note(f"only {honest.connected} of {len(creds)} honest clients connected")
    await asyncio.sleep(args.interval + 1)  # every client is sending

    honest.phase = quiet = Phase()
    await asyncio.sleep(args.seconds)
    result["quiet"] = quiet
    result["rss_before"] = rss_bytes(platform.pid)

    spec_path = Path(args.workdir) / "attack.json"
    spec_path.write_text(json.dumps(spec))
    disconnects_before = honest.disconnects
    attacker = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--attack", str(spec_path),
                                 "--seconds", str(args.seconds)], stdout=subprocess.PIPE, text=True)
    honest.phase = attacked = Phase()
    try:
        await asyncio.sleep(args.seconds)
        honest.phase = Phase()  # what is sent from now on counts in neither phase
        result["attacked"] = attacked
        out, _ = await asyncio.to_thread(attacker.communicate, timeout=args.seconds + 60)
        result["attacker"] = out
    finally:
        if attacker.poll() is None:
            attacker.kill()
    result["disconnects"] = honest.disconnects - disconnects_before
    result["rss_after"] = rss_bytes(platform.pid)
    result["broker"] = (await asyncio.to_thread(client.stats)).get("broker", {})
    honest.stop.set()
    _, pending = await asyncio.wait(tasks, timeout=60)
    for task in pending:
        task.cancel()
    return result


# -- the attacker ---------------------------------------------------------------------------------


async def attack(spec: dict[str, Any], seconds: float) -> dict[str, int]:
    from amqtt.mqtt.connect import ConnectPacket, ConnectPayload, ConnectVariableHeader
    from amqtt.mqtt.packet import PUBLISH, MQTTFixedHeader

    host, port, serial, token = spec["host"], spec["port"], spec["attacker"], spec["attacker_token"]
    ctx = ssl.create_default_context(cadata=spec["ca_pem"])
    counts = {"oversized_publish": 0, "oversized_connect": 0, "garbage": 0, "foreign_will": 0,
              "retained_flood": 0, "no_connect": 0}
    end = time.monotonic() + seconds

    def connect_bytes() -> bytes:
        header = ConnectVariableHeader(keep_alive=60)
        header.username_flag = header.password_flag = header.clean_session_flag = True
        payload = ConnectPayload(client_id=serial, username=serial, password=wire.TOKEN_PASSWORD_PREFIX + token)
        return ConnectPacket(variable_header=header, payload=payload).to_bytes()

    async def raw(first: bytes, then: bytes = b"") -> None:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        try:
            writer.write(first)
            if then:
                await writer.drain()
                await reader.readexactly(4)  # CONNACK
                writer.write(then)
            await writer.drain()
            while await reader.read(65536):  # until the broker closes
                pass
        finally:
            writer.transport.abort()

    big_topic = wire.rpc_response_topic(serial, "big").encode()
    oversized_publish = (MQTTFixedHeader(PUBLISH, 0x01, 10 * 1024 * 1024).to_bytes()
                         + len(big_topic).to_bytes(2, "big") + big_topic + b"x" * 65536)
    oversized_connect = MQTTFixedHeader(0x01, 0, wire.MAX_PACKET_BYTES * 40).to_bytes() + b"\x00\x04MQTT"
    filler = b'{"pad": "' + b"x" * (200 * 1024) + b'"}'

    async def foreign_will() -> None:
        will = aiomqtt.Will(wire.rpc_request_topic(spec["victim"], "x"), b'{"method": "reboot"}', qos=1, retain=True)
        with contextlib.suppress(aiomqtt.MqttError):
            async with aiomqtt.Client(host, port, identifier=serial, username=serial,
                                      password=wire.TOKEN_PASSWORD_PREFIX + token, tls_context=ctx, will=will,
                                      protocol=aiomqtt.ProtocolVersion.V311, timeout=10):
                pass

    async def retained_flood() -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async with aiomqtt.Client(host, port, identifier=serial, username=serial,
                                      password=wire.TOKEN_PASSWORD_PREFIX + token, tls_context=ctx,
                                      protocol=aiomqtt.ProtocolVersion.V311, timeout=10) as client:
                for i in range(20):
                    await client.publish(wire.rpc_response_topic(serial, f"r{i}"), filler, qos=0, retain=True)

    async def no_connect() -> None:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.transport.abort()

    plan = [
        ("oversized_publish", lambda: raw(connect_bytes(), oversized_publish)),
        ("oversized_connect", lambda: raw(oversized_connect)),
        ("garbage", lambda: raw(connect_bytes(), b"\xf0\x00" + bytes(range(256)))),
        ("foreign_will", foreign_will),
        ("retained_flood", retained_flood),
    ]

    async def lane(offset: int) -> None:
        i = offset
        while time.monotonic() < end:
            name, make = plan[i % len(plan)]
            i += 1
            counts[name] += 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(make(), timeout=15)

    async def idle_lane() -> None:
        while time.monotonic() < end:
            counts["no_connect"] += 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(no_connect(), timeout=30)

    await asyncio.gather(*(lane(k) for k in range(3)), idle_lane())
    return counts


def sweep_ms_per_10k() -> float:
    """One FleetBroker.sweep over 10,000 connected sessions' stamps, in ms."""
    from harness.broker.amqtt_compat import FleetSession
    from harness.broker.server import BrokerHooks, FleetBroker

    class Stamp:
        last_packet_at = time.monotonic()

    async def measure() -> float:
        bare = {"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}, "plugins": {}}
        broker = FleetBroker(bare, BrokerHooks())
        for i in range(10_000):
            session = FleetSession()
            session.client_id, session.keep_alive = f"c{i}", 60
            session.transitions.connect()
            broker._sessions[session.client_id] = (session, Stamp())  # type: ignore[assignment]
        started = time.perf_counter()
        for _ in range(20):
            broker.sweep()
        return (time.perf_counter() - started) / 20 * 1000

    return asyncio.run(measure())


# -- main -----------------------------------------------------------------------------------------


def boot_fleet(envs: list[str], state_root: Path, timeout: float) -> list[tuple[str, str]]:
    """First-boot every device with the simulated fleet, switch it off; (serial, token) each."""

    async def run() -> list[tuple[str, str]]:
        fleet = Fleet(connect_concurrency=64)
        for i, text in enumerate(envs):
            env = parse_agent_env(text)
            fleet.add(env, state_root / env.serial, FAMILIES[i % len(FAMILIES)])
        try:
            fleet.boot_all()
            not_live = await fleet.wait_live(timeout)
            if not_live:
                note(f"{len(not_live)} devices did not go live")
        finally:
            await asyncio.wait_for(fleet.stop(), 120)
        out = []
        for device in fleet.devices.values():
            creds = device.agent.state.credentials()
            if creds is not None:
                out.append((device.serial, creds.token))
        return out

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, help="honest devices (default 1000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase (default 30)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between two telemetry messages of one device (default 2)")
    parser.add_argument("--attack", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        counts = asyncio.run(attack(json.loads(Path(args.attack).read_text()), args.seconds))
        for name, value in counts.items():
            print(f"attacker_{name}_attempts {value}", flush=True)
        return 0
    if not 1 <= args.devices <= 10_000 or not 1 <= args.seconds <= 600 or args.interval <= 0:
        parser.error("--devices 1-10000, --seconds 1-600, --interval > 0")
    tune_process()
    workdir = Path(tempfile.mkdtemp(prefix="fleetrig-abuse-"))
    args.workdir = str(workdir)
    platform = PlatformProcess(workdir / "data", workdir / "platform.log", None)
    try:
        state = platform.start()
        with Client(state["api_url"], read_operator_token(workdir / "data"), actor="bench", timeout=300) as client:
            client.add_customer("Bench", "bench-1")
            client.add_part("bench-part")
            client.add_model("bench-model", "bench-part")
            serials = [f"ABUSE{i:06d}" for i in range(args.devices + 1)]
            report = client.provision(serials, customer="Bench", part="bench-part", auth=wire.AUTH_TOKEN)
            envs = [r["agent_env"] for r in report["results"] if r["ok"]]
            ca_pem = parse_agent_env(envs[0]).ca_cert_pem
            creds = boot_fleet(envs, workdir / "devices", max(60.0, len(envs) / 10))
            (attacker, attacker_token), honest = creds[0], creds[1:]
            url = urlsplit(state["broker_url"])
            spec = {"host": url.hostname, "port": url.port, "ca_pem": ca_pem, "attacker": attacker,
                    "attacker_token": attacker_token, "victim": honest[0][0]}
            result = asyncio.run(load(args, spec, honest, platform, client))
        figure("devices", len(honest))
        for label, key in (("without_attacker", "quiet"), ("with_attacker", "attacked")):
            phase: Phase = result[key]
            figure(f"honest_msgs_per_s_{label}", phase.acked / args.seconds)
            figure(f"honest_p99_ms_{label}", 1000 * phase.percentile(0.99))
            figure(f"honest_p50_ms_{label}", 1000 * phase.percentile(0.50))
            figure(f"honest_unacked_{label}", phase.sent - phase.acked)
        figure("honest_disconnects_with_attacker", result["disconnects"])
        figure("platform_rss_mib_before_attack", result["rss_before"] / 1024 / 1024)
        figure("platform_rss_mib_after_attack", result["rss_after"] / 1024 / 1024)
        for line in result["attacker"].splitlines():
            name, _, value = line.partition(" ")
            figure(name, value)
        for name, value in result["broker"].items():
            figure(f"broker_{name}", value)
        figure("sweep_ms_per_10k_sessions", sweep_ms_per_10k())
        return 0
    finally:
        platform.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
