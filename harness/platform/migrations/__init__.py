"""The registry's schema history (Alembic revisions in versions/), and bringing a registry up to date.

`create_all` only creates missing tables: it never adds a column to a table that exists, so a
data dir from an older release would start and then fail on the first query that reads a newer
column. Every start therefore runs `upgrade` before anything else touches the registry:

- an empty database gets every revision from the first one. A fresh data dir is built by the
  same code that upgrades an old one (not create_all + stamp), so the two cannot drift apart;
  tests/test_migrations.py checks the result against models.py. It costs once per data dir
  what create_all would cost and a little more: bench/migrations.py measured 71 ms for a fresh
  SQLite registry, 14 ms for a start at head, 137 ms to upgrade a first-schema registry of
  10,000 devices (2 shared cores);
- a database at an older revision is upgraded in place, in one transaction (SQLite runs DDL in
  a transaction here as PostgreSQL does), so a kill mid-upgrade leaves the old revision whole;
- a database from before the migrations existed (made by create_all, no alembic_version table)
  is recognised by its tables and columns, stamped with the revision it matches, then upgraded;
- a database at a revision this release does not know (written by a newer release) is refused.

A new revision: change models.py, then `python -m harness.platform.migrations "what changed"`
writes versions/NNNN_what_changed.py from the difference; review it before committing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from harness.errors import Refused

log = logging.getLogger("fleetrig.registry")

SCRIPTS = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code: the scripts here, and the connection to run them on."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision this release knows."""
    revision = scripts().get_current_head()
    assert revision is not None
    return revision


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _revision_before_migrations(connection: Connection) -> str | None:
    """The revision a registry made by create_all matches, from what each revision added; None if empty."""
    schema = inspect(connection)
    tables = set(schema.get_table_names())
    if "devices" not in tables:
        return None
    if "jobs" not in tables:
        return "0001"
    if "first_used_at" not in {c["name"] for c in schema.get_columns("credentials")}:
        return "0002"
    return "0003"


def upgrade(engine: Engine, target: str = "head", *, where: str | None = None) -> tuple[str | None, str | None]:
    """Bring the registry to `target`; return its revision before and after.

    Raises Refused for a registry at a revision this release does not know; `where` names the
    registry in that message (default: its URL without the password).
    """
    known = {s.revision for s in scripts().walk_revisions()}
    with engine.begin() as connection:
        config = alembic_config(connection)
        before = current_revision(connection)
        if before is None:
            before = _revision_before_migrations(connection)
            if before is not None:
                command.stamp(config, before)
        elif before not in known:
            where = where or engine.url.render_as_string(hide_password=True)
            raise Refused(
                f"registry {where} is at schema revision {before!r}, which this release does not know "
                f"(it knows up to {head()!r}): a newer fleetrig wrote it; run that release or a later one"
            )
        command.upgrade(config, target)
        after = current_revision(connection)
        if connection.dialect.name == "sqlite":
            broken = connection.execute(text("PRAGMA foreign_key_check")).first()
            if broken is not None:
                raise Refused(f"registry upgrade to {after} left a row of {broken[0]} without its parent; "
                              "nothing was changed")
    if before != after:
        log.info("registry schema upgraded from %s to %s", before or "empty", after)
    return before, after
