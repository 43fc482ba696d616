"""Opening the registry: a SQLite file in the data dir (WAL) by default, PostgreSQL by URL.

Opening it brings its schema up to date first (harness/platform/migrations), and a registry that
cannot be opened (PostgreSQL down, a file that cannot be created) is refused with one line naming
where it is and what went wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from harness.errors import Refused
from harness.platform import migrations

#: Seconds to wait for PostgreSQL to answer a connect; a host that drops packets fails in this time.
CONNECT_TIMEOUT_S = 10


def database_url(data_dir: Path, url: str | None) -> str:
    if url:
        if not url.startswith(("sqlite", "postgresql")):
            raise Refused(f"--db {url!r}: only sqlite:///PATH and postgresql://... URLs are supported")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return url
    return f"sqlite:///{(data_dir / 'registry.sqlite3').resolve()}"


def _sqlite_pragmas(foreign_keys: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets the API read while the registration batcher writes; NORMAL is durable across
        # process crashes (a power cut of the host may lose the last commits, never corrupt).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return on_connect


def _open_engine(url: str, *, migrating: bool = False) -> Engine:
    try:
        if not url.startswith("sqlite"):
            return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    except (ModuleNotFoundError, NoSuchModuleError) as exc:
        raise Refused(f"--db {_where(url)}: its driver is missing ({exc}); "
                      "install it with: pip install 'fleetrig[postgres]'") from None
    # Migrations: foreign keys off, because batch mode rebuilds a table by copying it and a
    # DROP of the old table would cascade; `migrations.upgrade` runs PRAGMA foreign_key_check
    # before it commits. And BEGIN of our own: Python's sqlite3 runs DDL outside any
    # transaction, which would leave a half-upgraded file after a kill.
    event.listen(engine, "connect", _sqlite_pragmas(foreign_keys=not migrating))
    if migrating:
        event.listen(engine, "connect", lambda dbapi_connection, _record: setattr(
            dbapi_connection, "isolation_level", None))
        event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _where(url: str) -> str:
    """The registry's location for a message: host:port/database, or the SQLite file; no password."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        return parsed.database or "(in memory)"
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


def _cannot_open(url: str, exc: DBAPIError) -> Refused:
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc.orig).__name__
    if len(reason) > 300:
        reason = reason[:300] + "..."
    return Refused(f"registry {_where(url)}: cannot open it: {reason}", status=503)


class Registry:
    """The database: engine, sessions, and the schema."""

    def __init__(self, url: str, *, revision: str = "head") -> None:
        """Open the registry at `url`, its schema brought to `revision` first (tests build older ones)."""
        self.url = url
        engine = _open_engine(url, migrating=True)
        try:
            _, self.revision = migrations.upgrade(engine, revision, where=_where(url))
        except DBAPIError as exc:
            raise _cannot_open(url, exc) from None
        finally:
            engine.dispose()
        self.engine: Engine = _open_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
