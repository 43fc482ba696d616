"""Registry migrations benchmark: what an upgrade costs at start, on SQLite.

    python bench/migrations.py --devices 10000

Prints one figure per line:

    fresh_ms            a new data dir: every revision from the empty database (median of 5)
    noop_ms             a start on a registry already at head (median of 5)
    devices N
    upgrade_ms          a registry of the first schema with N devices, each with an init key and a
                        credential, upgraded to head (median of 3)
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import MetaData

from harness.platform.db import Registry


def _timed(make_url, runs: int, prepare=None) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as scratch:
            url = make_url(Path(scratch))
            if prepare:
                prepare(url)
            start = time.perf_counter()
            Registry(url).close()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _first_schema(devices: int):  # type: ignore[no-untyped-def]
    def fill(url: str) -> None:
        registry = Registry(url, revision="0001")
        now = dt.datetime.now(dt.UTC)
        with registry.engine.begin() as conn:
            tables = MetaData()
            tables.reflect(bind=conn)
            conn.execute(tables.tables["customers"].insert(),
                         [{"id": 1, "name": "C", "tenant_id": "c", "created_at": now}])
            conn.execute(tables.tables["parts"].insert(), [{"id": 1, "name": "P", "created_at": now}])
            conn.execute(tables.tables["models"].insert(), [{"id": 1, "name": "M", "part_id": 1, "created_at": now}])
            conn.execute(tables.tables["devices"].insert(), [
                {"id": i, "serial": f"SN-{i:06d}", "customer_id": 1, "part_id": 1, "model_id": 1,
                 "state": "registered", "auth_mode": "x509", "connectivity": "offline", "created_at": now}
                for i in range(1, devices + 1)])
            conn.execute(tables.tables["init_keys"].insert(), [
                {"device_id": i, "key_hash": f"{i:064x}", "created_at": now, "used_at": now}
                for i in range(1, devices + 1)])
            conn.execute(tables.tables["credentials"].insert(), [
                {"device_id": i, "cert_fingerprint": f"{i:064x}", "cert_serial": str(i), "token_hash": f"{i:064x}",
                 "issued_at": now, "not_after": now} for i in range(1, devices + 1)])
        registry.close()

    return fill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10000)
    args = parser.parse_args()

    def url(scratch: Path) -> str:
        return f"sqlite:///{scratch / 'registry.sqlite3'}"

    def at_head(u: str) -> None:
        Registry(u).close()

    print(f"fresh_ms {_timed(url, 5):.1f}")
    print(f"noop_ms {_timed(url, 5, at_head):.1f}")
    print(f"devices {args.devices}")
    print(f"upgrade_ms {_timed(url, 3, _first_schema(args.devices)):.1f}")


if __name__ == "__main__":
    main()
