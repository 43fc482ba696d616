"""The registry in PostgreSQL (`--db postgresql://...`): a throwaway cluster on a free port, with
a restart, and an upgrade in place of a registry of the first schema.

Skipped, with the reason, where the PostgreSQL server binaries or psycopg are missing.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.env import parse_agent_env
from harness.client import Client
from harness.platform.db import database_url
from harness.platform.process import PlatformConfig, PlatformThread
from tests.conftest import boot, free_port
from tests.registry_rows import fill_first_schema, start_and_check_upgrade


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    prefix: list[str] = []
    root = tmp_path / "pg"
    root.mkdir()
    if os.geteuid() == 0:  # initdb refuses to run as root: use the postgres account
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' account for initdb")
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser")
        os.chown(root, account.pw_uid, account.pw_gid)
        for parent in (tmp_path, *tmp_path.parents):
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "fleetrig"], check=True,
                   capture_output=True, timeout=120)
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-p {port} -k {root} -h 127.0.0.1", "start"], check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql://fleetrig@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True, timeout=60)


async def test_registry_in_postgresql_survives_a_restart(postgres_url, tmp_path):
    config = PlatformConfig(data_dir=tmp_path / "platform", db_url=postgres_url, http_port=0, mqtts_port=0,
                            repo_port=0)
    thread = PlatformThread(config)
    platform = await asyncio.to_thread(thread.start)
    client = Client(platform.api_url, platform.token, actor="pytest")
    try:
        await asyncio.to_thread(client.add_customer, "ACME", "acme-pg")
        await asyncio.to_thread(client.add_part, "evk")
        await asyncio.to_thread(client.add_model, "evk-a", "evk")
        report = await asyncio.to_thread(client.provision, ["PG-001", "PG-002"], customer="ACME", part="evk")
        envs = {r["serial"]: parse_agent_env(r["agent_env"]) for r in report["results"]}
        fleet = await boot(envs, tmp_path / "devices", max_backoff=1.0)
        assert (await asyncio.to_thread(client.claim, all=True))["claimed"] == 2
        assert platform.ctx.registry.url.startswith("postgresql+psycopg://")

        await asyncio.to_thread(thread.stop)
        thread = PlatformThread(PlatformConfig(data_dir=tmp_path / "platform", db_url=postgres_url))
        await asyncio.to_thread(thread.start)
        devices = await asyncio.to_thread(client.devices)
        assert [(d["serial"], d["state"]) for d in devices] == [("PG-001", "claimed"), ("PG-002", "claimed")]
        for _ in range(300):
            if all(d.agent.connects >= 2 and d.agent.connected for d in fleet.devices.values()):
                break
            await asyncio.sleep(0.1)
        assert all(d.agent.connects >= 2 for d in fleet.devices.values())
        await fleet.stop()
    finally:
        client.close()
        await asyncio.to_thread(thread.stop)


async def test_first_schema_registry_in_postgresql_is_upgraded_in_place(postgres_url, tmp_path):
    old = fill_first_schema(database_url(tmp_path, postgres_url))
    config = PlatformConfig(data_dir=tmp_path / "platform", db_url=postgres_url, http_port=0, mqtts_port=0,
                            repo_port=0)
    await start_and_check_upgrade(config, old, tmp_path / "devices")
