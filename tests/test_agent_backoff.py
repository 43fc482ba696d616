"""Reconnect backoff: an outage backs off to the cap with jitter; a platform error at first boot is retried.

Measured against real ports: the platform's broker, then a listener on the same port that
accepts each connection and closes it at once (the broker's host is up, the broker is not),
then the platform again. The delays the agent chose are compared with the gaps between the
connections the listener saw: each gap is at least the delay before it.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time

import pytest

from agent.agent import Agent
from agent.backoff import Backoff
from agent.state import StateDir
from simulators.hardware import SimulatedHardware
from tests.conftest import provision, wait_for

BASE, CAP = 0.05, 0.8


def test_ceiling_doubles_to_the_cap_and_every_delay_is_jittered_below_it():
    backoff = Backoff(BASE, CAP, random.Random(7))
    ceilings, delays = [], []
    for _ in range(10):
        ceilings.append(backoff.ceiling())
        delays.append(backoff.next_delay())
    assert ceilings == [0.05, 0.1, 0.2, 0.4, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # full jitter: no two waits alike
    backoff.reset()
    assert backoff.ceiling() == BASE
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(1.0, 0.5)


def _agent(env, root) -> Agent:
    return Agent(env, StateDir(root, durable=False), SimulatedHardware("imx", env.serial), min_backoff=BASE,
                 max_backoff=CAP, ack_timeout=5.0)


async def test_a_device_that_was_live_backs_off_to_the_cap_during_an_outage(fleetrig_platform, fleetrig_catalog,
                                                                            tmp_path):
    (env,) = (await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["BO-0001"])).values()
    agent = _agent(env, tmp_path / "BO-0001")
    retries: list[tuple[float, float]] = []  # (monotonic time the wait began, the wait)
    agent.on_retry = lambda delay, _error: retries.append((time.monotonic(), delay))
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.live.wait(), 30)
        await asyncio.to_thread(fleetrig_platform.thread.stop)

        accepted: list[float] = []

        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(time.monotonic())
            writer.close()

        server = await asyncio.start_server(refuse, env.broker_host, env.broker_port, reuse_address=True)
        async with server:
            await wait_for(lambda: len(accepted) >= 8, timeout=30)
        assert not agent.live.is_set()
        outage = retries[:9]
        delays = [delay for _, delay in outage]
        # The device was live once, yet the waits grow: the cap is reached, not reset every time.
        assert agent.backoff.failures >= 8 and agent.backoff.ceiling() == CAP
        assert all(d <= min(CAP, BASE * 2 ** i) for i, d in enumerate(delays)), delays
        assert len(set(delays)) == len(delays)
        # What the listener saw: every connection came no sooner than the wait the agent chose.
        starts = [t for t, _ in retries]
        for arrival in accepted[1:8]:
            before = max(i for i, t in enumerate(starts) if t < arrival)
            assert arrival - starts[before] >= retries[before][1] - 0.005

        # The broker is back on the same port: the device comes live again and starts over.
        await asyncio.to_thread(fleetrig_platform.restart)
        await asyncio.wait_for(agent.live.wait(), 30)
        assert agent.connects == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_platform_error_at_first_boot_is_retried_until_it_registers(fleetrig_platform, fleetrig_catalog,
                                                                             tmp_path):
    (env,) = (await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["BO-0002"])).values()
    db = sqlite3.connect(fleetrig_platform.data_dir / "registry.sqlite3")
    # A real fault in the real registry: issuing the credential fails until the trigger goes.
    db.execute("CREATE TRIGGER injected_fault BEFORE INSERT ON credentials "
               "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
    db.commit()
    agent = _agent(env, tmp_path / "BO-0002")
    errors: list[str] = []
    agent.on_retry = lambda _delay, error: errors.append(error)
    task = asyncio.create_task(agent.run(until_live=True))
    try:
        await wait_for(lambda: len(errors) >= 2, timeout=60)
        assert not task.done()  # not given up: retrying
        assert all("platform error; retry later" in e for e in errors), errors
        assert agent.state.credentials() is None
        db.execute("DROP TRIGGER injected_fault")
        db.commit()
        await asyncio.wait_for(task, 60)
    finally:
        db.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert agent.live.is_set() and agent.state.credentials() is not None
    device = await asyncio.to_thread(fleetrig_platform.client.device, "BO-0002")
    assert device["state"] == "registered"
