"""Dynamic telemetry: collect, publish, and keep what the platform has not acknowledged.

Every collectionIntervalSeconds a sample is read from the hardware; every
publishIntervalSeconds the samples since the last publish become one message. A message leaves
the cache only when the platform acknowledges it (the broker's QoS 1 is not proof of delivery),
so a broker restart or lost network loses nothing while the cache holds; beyond maxCacheSize
messages the oldest are dropped, and the next message says how many. Intervals and cache size
follow configuration changes at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from agent import wire
from agent.config import AgentConfig
from agent.hardware import Hardware

Publish = Callable[[str, bytes], Awaitable[None]]


class Telemetry:
    def __init__(self, hardware: Hardware, config: AgentConfig, serial: str) -> None:
        self.hardware = hardware
        self.config = config
        self.serial = serial
        self.samples: list[tuple[Any, ...]] = []
        self.unacked: OrderedDict[int, bytes] = OrderedDict()
        self.seq = 0
        self.dropped = 0
        self.published = 0
        self._wake: asyncio.Future[None] | None = None
        config.on_change(self._config_changed)

    def _config_changed(self, keys: set[str]) -> None:
        if keys & {"collectionIntervalSeconds", "publishIntervalSeconds", "maxCacheSize"}:
            self._trim()
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)  # new intervals apply now, not after the old one

    def collect(self) -> None:
        """Read one sample. Kept as a tuple until published: a device holds up to five a cycle."""
        r = self.hardware.resources()
        self.samples.append((round(time.time(), 3), r.free_memory_mb, r.core_temp_c, r.disk_used_percent,
                             r.cpu_percent, r.battery_percent))

    def publish_readings(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Network counters and container stats: read once per publish. Blocking (a real device's
        `docker stats` takes a second or two): run() reads them off the event loop."""
        return self.hardware.resources().network, self.hardware.containers.stats()

    def seal(self, readings: tuple[dict[str, Any], list[dict[str, Any]]] | None = None) -> bytes | None:
        """Turn the samples since the last publish into one cached message.

        Network counters and container stats (`readings`, read now when not given) go with the
        newest sample.
        """
        if not self.samples:
            return None
        network, container_stats = readings if readings is not None else self.publish_readings()
        samples: list[dict[str, Any]] = []
        for ts, memory, temp, disk, cpu, battery in self.samples:
            sample: dict[str, Any] = {"ts": ts, "available_memory_mb": memory, "core_temp_c": temp,
                                      "percent_disk_used": disk, "cpu_percent": cpu}
            if battery is not None:
                sample["battery_percent"] = battery
            samples.append(sample)
        samples[-1]["network"] = network
        samples[-1]["container_stats"] = container_stats
        self.seq += 1
        payload = wire.encode({"v": wire.PROTOCOL_VERSION, "seq": self.seq, "samples": samples,
                               "dropped": self.dropped})
        self.samples = []
        self.unacked[self.seq] = payload
        self._trim()
        return payload

    def _trim(self) -> None:
        limit = max(1, self.config.int("maxCacheSize"))
        while len(self.unacked) > limit:
            self.unacked.popitem(last=False)
            self.dropped += 1

    def acknowledge(self, ref: str) -> bool:
        """Forget a message the platform has stored (ref 'telemetry-N'); True if it was pending."""
        try:
            seq = int(ref.removeprefix("telemetry-"))
        except ValueError:
            return False
        return self.unacked.pop(seq, None) is not None

    async def flush(self, publish: Publish) -> None:
        """(Re)send every unacknowledged message, oldest first."""
        for payload in list(self.unacked.values()):
            await publish(wire.topic(self.serial, wire.TELEMETRY), payload)
            self.published += 1

    async def run(self, publish: Publish, connected: Callable[[], bool]) -> None:
        """Collect and publish forever; publish only while connected, cache otherwise."""
        last_publish = time.monotonic()
        while True:
            self.collect()
            now = time.monotonic()
            if now - last_publish >= self.config.int("publishIntervalSeconds"):
                last_publish = now
                payload = self.seal(await asyncio.to_thread(self.publish_readings))
                if payload is not None and connected():
                    try:
                        await publish(wire.topic(self.serial, wire.TELEMETRY), payload)
                        self.published += 1
                    except Exception:  # lost connection: the message stays cached, resent on reconnect
                        pass
            # A bare future and a timer: waiting costs no task of its own per device.
            loop = asyncio.get_running_loop()
            self._wake = wake = loop.create_future()
            timer = loop.call_later(self.config.int("collectionIntervalSeconds"), _wake_up, wake)
            try:
                await wake
            finally:
                timer.cancel()
                self._wake = None


def _wake_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
