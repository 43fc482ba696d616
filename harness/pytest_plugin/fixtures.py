"""The fleetrig pytest plugin: a platform and simulated devices as fixtures.

Every test run gets its own platform (registry, CA, broker over TLS, REST API) on free
loopback ports in a temporary data dir:

    def test_first_boot(fleetrig_platform, fleetrig_catalog):
        report = fleetrig_platform.client.provision(["SN1"], customer="ACME", part="evk")
        ...

Fixtures:
    fleetrig_platform  a running platform (PlatformThread), with `.client` (REST library),
                       `.ctx` (in-process operations) and `.data_dir`; one per test.
    fleetrig_catalog   customer ACME (tenant acme-0001), part "evk", model "evk-rev-a".
    fleetrig_broker_limits  the broker's BrokerLimits for fleetrig_platform (None: defaults).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.broker.limits import BrokerLimits
from harness.client import Client
from harness.platform.context import PlatformContext
from harness.platform.process import Platform, PlatformConfig, PlatformThread


@dataclass
class RunningPlatform:
    thread: PlatformThread
    client: Client
    data_dir: Path

    @property
    def platform(self) -> Platform:
        return self.thread.platform

    @property
    def ctx(self) -> PlatformContext:
        return self.thread.ctx

    def restart(self) -> None:
        """Stop the platform and start it again on the same data dir and ports."""
        self.thread.stop()
        self.thread = PlatformThread(PlatformConfig(data_dir=self.data_dir))
        self.thread.start()


@dataclass(frozen=True)
class Catalog:
    customer: str = "ACME"
    tenant_id: str = "acme-0001"
    part: str = "evk"
    model: str = "evk-rev-a"


@pytest.fixture
def fleetrig_broker_limits() -> BrokerLimits | None:
    """The broker's limits for fleetrig_platform (None: the defaults); override it in a test module."""
    return None


@pytest.fixture
def fleetrig_platform(tmp_path: Path, fleetrig_broker_limits: BrokerLimits | None) -> Iterator[RunningPlatform]:
    data_dir = tmp_path / "platform"
    thread = PlatformThread(PlatformConfig(data_dir=data_dir, http_port=0, mqtts_port=0, repo_port=0,
                                           broker_limits=fleetrig_broker_limits))
    platform = thread.start()
    running = RunningPlatform(thread, Client(platform.api_url, platform.token, actor="pytest"), data_dir)
    try:
        yield running
    finally:
        running.client.close()
        running.thread.stop()


@pytest.fixture
def fleetrig_catalog(fleetrig_platform: RunningPlatform) -> Catalog:
    catalog = Catalog()
    client = fleetrig_platform.client
    client.add_customer(catalog.customer, catalog.tenant_id)
    client.add_part(catalog.part)
    client.add_model(catalog.model, catalog.part)
    return catalog
