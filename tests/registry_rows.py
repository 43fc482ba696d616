"""A registry of the project's first schema (revision 0001) with rows in every table, and the
checks that a platform started on it upgraded it whole: shared by the SQLite and PostgreSQL tests.

The old schema comes from `alembic upgrade 0001`, not from the git history, so the tests run on
a shallow clone too. Rows go in through reflected tables: the current models have columns the
old tables lack.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, inspect, select, text

from agent.env import AgentEnv, parse_agent_env
from harness.client import Client
from harness.platform import migrations, pms
from harness.platform.db import Registry
from harness.platform.identities import digest
from harness.platform.models import Base, Device, DeviceEventRecord, Job, JobTarget, TelemetryRecord
from harness.platform.process import Platform, PlatformConfig, PlatformThread
from tests.conftest import boot, connect_refused, mqtt_client

FIRST_TABLES = ("customers", "parts", "models", "devices", "init_keys", "credentials", "claims",
                "firmware_records", "cve_records", "disposal_events", "audit_events")
T0 = dt.datetime(2026, 11, 24, 6, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class FirstSchemaFleet:
    """What the rows stand for: a device never booted, one registered (token), one claimed."""

    provisioned: str = "OLD-P-1"
    registered: str = "OLD-T-1"
    claimed: str = "OLD-C-1"
    tenant_id: str = "old-0001"
    init_key: str = "never-used-init-key-of-old-p-1"
    spent_init_key: str = "spent-init-key-of-old-t-1"
    token: str = "token-of-old-t-1-issued-by-the-first-release"


@dataclass(frozen=True)
class FirstSchemaRegistry:
    fleet: FirstSchemaFleet
    #: The rows as dumped, in the first schema's columns (listed by table in `columns`).
    rows: dict[str, list[tuple]]
    columns: dict[str, list[str]]


def fill_first_schema(url: str) -> FirstSchemaRegistry:
    """Build a registry at revision 0001 at `url`, with rows in every table."""
    fleet = FirstSchemaFleet()
    registry = Registry(url, revision="0001")
    later = T0 + dt.timedelta(days=365)
    rows: dict[str, list[dict]] = {
        "customers": [{"id": 1, "name": "ACME-OLD", "tenant_id": fleet.tenant_id, "created_at": T0}],
        "parts": [{"id": 1, "name": "evk-old", "created_at": T0}],
        "models": [{"id": 1, "name": "evk-old-a", "part_id": 1, "created_at": T0}],
        "devices": [
            {"id": i, "serial": serial, "customer_id": 1, "part_id": 1, "model_id": 1, "state": state,
             "auth_mode": auth, "firmware_version": fw, "connectivity": "offline", "last_seen": seen,
             "facts": facts, "boot_id": None, "signature_cert": None, "created_at": T0,
             "registered_at": seen, "claimed_at": T0 if state == "claimed" else None}
            for i, serial, state, auth, fw, seen, facts in (
                (1, fleet.provisioned, "provisioned", "x509", None, None, None),
                (2, fleet.registered, "registered", "token", "1.0.0", T0, {"family": "photon"}),
                (3, fleet.claimed, "claimed", "x509", "1.0.0", T0, {"family": "imx"}),
            )
        ],
        "init_keys": [
            {"id": 1, "device_id": 1, "key_hash": digest(fleet.init_key), "created_at": T0, "used_at": None,
             "revoked_at": None},
            {"id": 2, "device_id": 2, "key_hash": digest(fleet.spent_init_key), "created_at": T0, "used_at": T0,
             "revoked_at": None},
            {"id": 3, "device_id": 3, "key_hash": digest("spent-init-key-of-old-c-1"), "created_at": T0,
             "used_at": T0, "revoked_at": None},
        ],
        "credentials": [
            {"id": 1, "device_id": 2, "cert_fingerprint": "a1" * 32, "cert_serial": "1001",
             "token_hash": digest(fleet.token), "issued_at": T0, "not_after": later, "revoked_at": None},
            {"id": 2, "device_id": 3, "cert_fingerprint": "c3" * 32, "cert_serial": "1002",
             "token_hash": digest("token-of-old-c-1"), "issued_at": T0, "not_after": later, "revoked_at": None},
        ],
        "claims": [{"id": 1, "device_id": 3, "claimed_at": T0, "actor": "operator:old"}],
        "firmware_records": [{"id": 1, "device_id": 2, "version": "1.0.0", "first_seen": T0},
                             {"id": 2, "device_id": 3, "version": "1.0.0", "first_seen": T0}],
        "cve_records": [{"id": 1, "device_id": 3, "cve_id": "CVE-2024-0001", "status": "open", "created_at": T0}],
        "disposal_events": [{"id": 1, "serial": "OLD-D-1", "customer": "ACME-OLD", "reason": "water damage",
                             "actor": "operator:old", "at": T0, "detail": {"state": "claimed"}}],
        "audit_events": [{"id": i, "at": T0, "actor": "operator:old", "action": action, "serial": serial,
                          "detail": {"n": i}}
                         for i, (action, serial) in enumerate([("device.provision", None),
                                                               ("device.register", fleet.registered),
                                                               ("device.dispose", "OLD-D-1")], 1)],
    }
    assert set(rows) == set(FIRST_TABLES)
    with registry.engine.begin() as conn:
        tables = MetaData()
        tables.reflect(bind=conn)
        for name in FIRST_TABLES:  # parents first
            conn.execute(tables.tables[name].insert(), rows[name])
        if conn.dialect.name == "postgresql":  # explicit ids: move the sequences past them
            for name in FIRST_TABLES:
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                                  f"(SELECT max(id) FROM {name}))"))
    filled = FirstSchemaRegistry(fleet, dump(registry.engine), first_columns(registry.engine))
    registry.close()
    return filled


def dump(engine: Engine, columns: dict[str, list[str]] | None = None) -> dict[str, list[tuple]]:
    """The rows of the first schema's tables, in its columns (or those given), as text."""
    out: dict[str, list[tuple]] = {}
    with engine.connect() as conn:
        schema = inspect(conn)
        for name in FIRST_TABLES:
            names = columns[name] if columns else [c["name"] for c in schema.get_columns(name)]
            query = text(f"SELECT {', '.join(names)} FROM {name}")
            out[name] = sorted(tuple(map(str, row)) for row in conn.execute(query))
    return out


def first_columns(engine: Engine) -> dict[str, list[str]]:
    with engine.connect() as conn:
        schema = inspect(conn)
        return {name: [c["name"] for c in schema.get_columns(name)] for name in FIRST_TABLES}


def schema_differences(engine: Engine) -> list:
    """What Alembic finds different between the registry and models.py: [] when they agree."""
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


async def start_and_check_upgrade(config: PlatformConfig, old: FirstSchemaRegistry, devices_dir: Path) -> None:
    """Start a platform on the registry `old`, and check it upgraded it whole (`check_upgraded`)."""
    thread = PlatformThread(config)
    platform = await asyncio.to_thread(thread.start)
    client = Client(platform.api_url, platform.token, actor="pytest")
    try:
        await check_upgraded(platform, client, old, devices_dir)
    finally:
        client.close()
        await asyncio.to_thread(thread.stop)


async def check_upgraded(platform: Platform, client: Client, old: FirstSchemaRegistry, devices_dir: Path) -> None:
    """Every row kept, the schema at head and equal to the models, old credentials still working,
    the spent init key still dead, the new tables usable, and the never-booted device boots."""
    fleet = old.fleet
    ctx = platform.ctx
    assert ctx is not None
    engine = ctx.registry.engine
    assert ctx.registry.revision == migrations.head()
    assert dump(engine, old.columns) == old.rows
    assert schema_differences(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == migrations.head()
        used = conn.execute(text("SELECT first_used_at, issued_at FROM credentials")).all()
    assert used and all(first == issued for first, issued in used)
    assert ctx.identities.get(fleet.registered).init_key_hash is None  # spent before: stays spent

    # The tables later revisions added take rows, and the API reads them back.
    with ctx.registry.session() as s:
        device = s.scalar(select(Device).where(Device.serial == fleet.registered))
        s.add(Job(id="oldjob000001", actor="pytest", method="triggerquery", params={"option": "all"},
                  timeout_s=60.0, targets=[JobTarget(serial=fleet.registered, request_id="r" * 20)]))
        s.add(TelemetryRecord(device_id=device.id, at=T0, seq=1, values={"cpu": 12.5}))
        s.add(DeviceEventRecord(device_id=device.id, kind="boot", message="upgraded"))
    job = await asyncio.to_thread(client.job, "oldjob000001")
    assert [t["serial"] for t in job["results"]] == [fleet.registered]
    telemetry = await asyncio.to_thread(client.telemetry, fleet.registered)
    assert "12.5" in repr(telemetry)
    events = await asyncio.to_thread(client.events, fleet.registered)
    assert any(e["message"] == "upgraded" for e in events)
    listed = {d["serial"]: d["state"] for d in await asyncio.to_thread(client.devices)}
    assert listed == {fleet.provisioned: "provisioned", fleet.registered: "registered", fleet.claimed: "claimed"}

    # Over the real broker: the old token connects, the spent init key does not, the never-booted
    # device registers with the init key the first release gave it.
    env: AgentEnv = parse_agent_env(pms.render_agent_env(ctx, fleet.provisioned, fleet.tenant_id, fleet.init_key,
                                                         "x509", None))
    async with mqtt_client(env, client_id=fleet.registered, username=fleet.registered,
                           password="token:" + fleet.token):
        pass
    refused = await connect_refused(mqtt_client(env, client_id=fleet.registered, username=fleet.registered,
                                                password="init:" + fleet.spent_init_key))
    assert "authori" in refused.lower()
    booted = await boot({fleet.provisioned: env}, devices_dir)
    assert (await asyncio.to_thread(client.device, fleet.provisioned))["state"] == "registered"
    await booted.stop()
