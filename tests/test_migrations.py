"""Schema migrations: an old data dir is upgraded in place at start, a fresh one is built by the same
revisions, a newer one and an unreachable registry are refused with one line."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import pytest

from harness.errors import Refused
from harness.platform import migrations
from harness.platform.db import Registry, database_url
from harness.platform.process import Platform, PlatformConfig
from tests.conftest import free_port
from tests.registry_rows import fill_first_schema, schema_differences, start_and_check_upgrade
from tests.serve_process import FREE_PORTS, serve_refused


def sqlite_url(data_dir: Path) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    return database_url(data_dir, None)


def serve(*args: str) -> subprocess.CompletedProcess:
    return serve_refused(*FREE_PORTS, *args)


def test_a_fresh_registry_is_built_by_the_revisions_and_equals_the_models(tmp_path):
    registry = Registry(sqlite_url(tmp_path / "data"))
    try:
        assert registry.revision == migrations.head()
        assert schema_differences(registry.engine) == []
    finally:
        registry.close()
    # Opening it again changes nothing.
    again = Registry(sqlite_url(tmp_path / "data"))
    assert again.revision == migrations.head()
    again.close()


async def test_first_schema_data_dir_is_upgraded_in_place_with_every_row(tmp_path):
    data_dir = tmp_path / "platform"
    old = fill_first_schema(sqlite_url(data_dir))
    config = PlatformConfig(data_dir=data_dir, http_port=0, mqtts_port=0, repo_port=0)
    await start_and_check_upgrade(config, old, tmp_path / "devices")


@pytest.mark.parametrize("revision", ["0001", "0002", "0003"])
def test_registry_made_before_migrations_is_recognised_and_upgraded(tmp_path, revision):
    """Data dirs made by create_all have no alembic_version table: each is matched to its revision."""
    url = sqlite_url(tmp_path / "data")
    Registry(url, revision=revision).close()
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute("DROP TABLE alembic_version")
        conn.execute("INSERT INTO customers (name, tenant_id, created_at) VALUES ('KEEP', 'keep-1', '2026-11-24')")
    registry = Registry(url)
    try:
        assert registry.revision == migrations.head()
        assert schema_differences(registry.engine) == []
        with registry.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT name FROM customers").scalars().all() == ["KEEP"]
    finally:
        registry.close()


def test_registry_newer_than_this_release_is_refused_with_one_line(tmp_path):
    data_dir = tmp_path / "data"
    url = sqlite_url(data_dir)
    Registry(url).close()
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0999'")
    with pytest.raises(Refused, match=r"schema revision '0999', which this release does not know"):
        asyncio.run(Platform(PlatformConfig(data_dir=data_dir, http_port=0, mqtts_port=0, repo_port=0)).start())

    done = serve("--data-dir", str(data_dir))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "registry.sqlite3 is at schema revision '0999'" in done.stderr
    assert f"it knows up to '{migrations.head()}'" in done.stderr
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:  # and nothing was touched
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0999",)]


def test_unreachable_postgresql_is_one_line_naming_the_host(tmp_path):
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")
    port = free_port()  # nothing listens there
    done = serve("--data-dir", str(tmp_path / "data"), "--db", f"postgresql://fleetrig:secret@127.0.0.1:{port}/fleet")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"registry 127.0.0.1:{port}/fleet: cannot open it" in done.stderr
    assert "refused" in done.stderr.lower()
    assert "secret" not in done.stderr


def test_unwritable_sqlite_registry_is_one_line(tmp_path):
    done = serve("--data-dir", str(tmp_path / "data"), "--db", f"sqlite:///{tmp_path}/missing/dir/registry.sqlite3")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "missing/dir/registry.sqlite3: cannot open it: unable to open database file" in done.stderr
