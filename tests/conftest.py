"""Shared helpers: the platform fixtures come from the fleetrig pytest plugin (harness.pytest_plugin.fixtures)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiomqtt
import pytest
from sqlalchemy import text

from agent.env import AgentEnv, parse_agent_env
from harness.pytest_plugin.fixtures import Catalog, RunningPlatform
from simulators.fleet import Fleet

FAMILIES = ("imx", "photon", "x86")


def provision(platform: RunningPlatform, catalog: Catalog, serials: list[str], **kwargs) -> dict[str, AgentEnv]:
    """Provision through the REST API; return each serial's parsed agent.env."""
    report = platform.client.provision(serials, customer=catalog.customer, part=catalog.part, **kwargs)
    assert report["refused"] == 0, report["results"]
    return {r["serial"]: parse_agent_env(r["agent_env"]) for r in report["results"]}


async def boot(envs: dict[str, AgentEnv], root: Path, *, timeout: float = 60, **fleet_kwargs) -> Fleet:
    """Power on one simulated device per agent.env and wait until all are live."""
    fleet = Fleet(**fleet_kwargs)
    for i, (serial, env) in enumerate(envs.items()):
        fleet.add(env, root / serial, FAMILIES[i % len(FAMILIES)])
    fleet.boot_all()
    not_live = await fleet.wait_live(timeout)
    assert not not_live, [(d.serial, d.error, d.agent.last_error) for d in not_live]
    return fleet


def table_dump(platform: RunningPlatform) -> dict[str, list[tuple]]:
    """Every row of every registry table, for before/after comparisons."""
    dump: dict[str, list[tuple]] = {}
    with platform.ctx.registry.engine.connect() as conn:
        names = [r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))]
        for name in sorted(names):
            dump[name] = sorted(tuple(map(str, row)) for row in conn.execute(text(f"SELECT * FROM {name}")))
    return dump


def tls_context(env: AgentEnv, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=env.ca_cert_pem)
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def mqtt_client(env: AgentEnv, *, client_id: str | None = None, username: str | None = None,
                password: str | None = None, tls: ssl.SSLContext | None = None) -> aiomqtt.Client:
    """A raw MQTT client aimed at the platform's broker, for tests that act as a hostile peer."""
    return aiomqtt.Client(
        env.broker_host, env.broker_port, identifier=client_id, username=username, password=password,
        tls_context=tls or tls_context(env), protocol=aiomqtt.ProtocolVersion.V311, timeout=10,
    )


async def connect_refused(client: aiomqtt.Client) -> str:
    """Connect and expect a refusal; return the error text."""
    with pytest.raises(aiomqtt.MqttError) as info:
        async with client:
            await asyncio.sleep(0)
    return str(info.value)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on once this returns (bound, read back, closed)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    """Poll `predicate` (sync, run in a thread) until truthy; return its value or fail."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met in {timeout}s: {predicate}")
        await asyncio.sleep(interval)
