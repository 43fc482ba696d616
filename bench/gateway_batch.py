"""What it costs to keep one device's failing item from losing its batch.

    python bench/gateway_batch.py [--devices 500] [--rounds 5]

Applies batches of telemetry messages (one per device, three samples each, as the agent sends
them) to a real SQLite registry in a temporary dir, three ways, and prints one figure per line:

    batch_items                        items in each batch
    one_transaction_items_per_s        the gateway's way: one transaction, one flush at commit
    savepoint_per_item_items_per_s     the alternative: a SAVEPOINT around each item
    failed_batch_retry_items_per_s     the gateway's way when one item fails: the batch rolls
                                       back and its items are applied one transaction each

The gateway retries item by item after a failure rather than holding a savepoint per item: the
common path is the first figure, and only a failing batch (rare once the wire contract has
validated every field) pays the third.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from sqlalchemy import select, text

from agent import wire
from harness.platform import telemetry
from harness.platform.context import PlatformContext
from harness.platform.db import Registry
from harness.platform.gateway import DeviceGateway, _Item
from harness.platform.identities import Identities
from harness.platform.models import Customer, Device, DeviceModel, Part, utcnow
from harness.platform.pki import CertificateAuthority


async def _no_publish(_topic: str, _payload: bytes) -> None:
    return None


def _batch(serials: list[str], seq: int) -> list[_Item]:
    now = time.time()
    samples = [{"ts": now - i, "cpu_percent": 12.5, "available_memory_mb": 512, "core_temp_c": 41.0}
               for i in range(3)]
    return [_Item("telemetry", serial, wire.TelemetryMessage(seq=seq, samples=samples)) for serial in serials]


def _savepoint_per_item(gateway: DeviceGateway, batch: list[_Item]) -> None:
    with gateway.ctx.registry.session() as s:
        devices = {d.serial: d for d in s.scalars(select(Device).where(Device.serial.in_([i.serial for i in batch])))}
        now = utcnow()
        for item in batch:
            with s.begin_nested():
                telemetry.store(s, devices[item.serial], item.request, now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("fleetrig.gateway").setLevel(logging.CRITICAL)  # the failing item is expected
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(f"sqlite:///{Path(tmp) / 'registry.sqlite3'}")
        ctx = PlatformContext(registry=registry, identities=Identities(),
                              ca=CertificateAuthority(Path(tmp) / "pki"), broker_url="")
        serials = [f"BG-{i:05d}" for i in range(args.devices)]
        with registry.session() as s:
            customer, part = Customer(name="ACME", tenant_id="acme"), Part(name="evk")
            model = DeviceModel(name="evk-a", part=part)
            s.add_all([customer, part, model])
            s.flush()
            s.add_all(Device(serial=x, customer_id=customer.id, part_id=part.id, model_id=model.id) for x in serials)
        gateway = DeviceGateway(ctx, _no_publish)
        seq = 0

        def rate(apply) -> float:  # type: ignore[no-untyped-def]
            nonlocal seq
            elapsed = 0.0
            for _ in range(args.rounds):
                seq += 1
                batch = _batch(serials, seq)
                start = time.perf_counter()
                apply(batch)
                elapsed += time.perf_counter() - start
            return args.rounds * len(serials) / elapsed

        print(f"batch_items {len(serials)}")
        print(f"one_transaction_items_per_s {rate(gateway._apply_isolated):.0f}")
        print(f"savepoint_per_item_items_per_s {rate(lambda b: _savepoint_per_item(gateway, b)):.0f}")
        with registry.session() as s:
            victim = s.scalar(select(Device.id).where(Device.serial == serials[-1]))
            s.execute(text(f"CREATE TRIGGER poison BEFORE INSERT ON telemetry WHEN NEW.device_id = {victim} "
                           "BEGIN SELECT RAISE(ABORT, 'poison'); END"))
        print(f"failed_batch_retry_items_per_s {rate(gateway._apply_isolated):.0f}")
        assert gateway.stats.failed_items == args.rounds
        registry.close()


if __name__ == "__main__":
    main()
