"""The platform's side of the device conversation: registration, births, connectivity.

Messages arrive from the broker (already past authentication and the topic ACL), are parsed
and validated by the wire contract (a refusal is logged and counted against the device that
sent it, and never reaches the registry), and go into a queue; a worker applies them to the
registry in batches, one transaction per batch, in a thread so the broker's event loop never
waits on the database. Answers (certificates, acks) are published after the batch commits, so a
device never holds a credential the registry does not.

One device's item must never cost other devices their data. If a batch fails anyway (an item
the contract let through that the database still refuses, a constraint, a full disk), the batch
is rolled back and its items are applied again one transaction each, so only the failing item
is lost and its device alone is told "platform error". Retrying after a failure was chosen over
a savepoint per item: a SAVEPOINT forces a flush per item, where the batch otherwise writes
everything in one flush at commit. bench/gateway_batch.py, 500 telemetry items a batch on
SQLite: 571 items/s in one transaction, 141 with a savepoint per item (4x slower, on every
batch), 133 for a batch that failed and was retried item by item. After validation at the wire
a failing batch is the rare case, so the common path keeps its one transaction and only a
failure pays per item.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from amqtt.session import Session
from sqlalchemy import select, update

from agent import wire
from harness.broker.plugins import INIT_KEY_HASH, ROLE, SERIAL
from harness.errors import Refused
from harness.platform import audit, telemetry
from harness.platform.context import PlatformContext
from harness.platform.identities import digest
from harness.platform.jobs import JobEngine
from harness.platform.models import (
    OFFLINE,
    ONLINE,
    PROVISIONED,
    REGISTERED,
    Credential,
    Device,
    FirmwareRecord,
    InitKey,
    utcnow,
)

log = logging.getLogger("fleetrig.gateway")

Publish = Callable[[str, bytes], Awaitable[None]]


@dataclass
class _Item:
    kind: str  # register | birth | online | offline
    serial: str
    request: Any = None
    key_hash: str = ""


#: How many of the latest batch errors the stats keep.
MAX_ERRORS_KEPT = 20


@dataclass
class GatewayStats:
    registered: int = 0
    registration_refused: int = 0
    births: int = 0
    malformed: int = 0
    batches: int = 0
    last_batch: int = 0
    telemetry_samples: int = 0
    #: Batches that failed whole and were applied again item by item.
    batches_retried: int = 0
    #: Items the registry refused even alone (lost; their device was told "platform error").
    failed_items: int = 0
    #: Messages refused by the wire contract, and items failed in the registry, per serial.
    malformed_by_device: Counter[str] = field(default_factory=Counter)
    failed_by_device: Counter[str] = field(default_factory=Counter)
    #: The latest refusal per serial (the wire contract's message: it names the field).
    last_refusal: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, tally: Counter[str]) -> None:
        """Count what a committed transaction did (nothing is counted for one rolled back)."""
        for name, count in tally.items():
            setattr(self, name, getattr(self, name) + count)

    def error(self, serial: str, text: str) -> None:
        self.errors = [*self.errors[-(MAX_ERRORS_KEPT - 1):], f"{serial}: {text[:300]}"]


class DeviceGateway:
    """Turns device messages into registry changes, in batches."""

    def __init__(self, ctx: PlatformContext, publish: Publish, *, batch_size: int = 500,
                 batch_window: float = 0.02) -> None:
        self.ctx = ctx
        self.publish = publish
        self.batch_size = batch_size
        #: How long a batch that starts small waits for more: a batch costs a transaction, a few
        #: set queries and a commit whatever its size, ~3x a small batch's per-item work.
        self.batch_window = batch_window
        self.stats = GatewayStats()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        #: The job engine that closes job targets with device results (set by the platform).
        self.jobs: JobEngine | None = None

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="fleetrig-gateway")

    async def stop(self) -> None:
        if self._worker:
            # Let what is queued reach the registry before stopping.
            while not self._queue.empty() and not self._worker.done():
                await asyncio.sleep(0.01)
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    # -- broker hooks ---------------------------------------------------------------------------

    async def on_message(self, session: Session, topic: str, payload: bytes) -> None:
        role, serial = session.attributes.get(ROLE), session.attributes.get(SERIAL)
        suffix = ""
        try:
            owner, suffix = wire.split_topic(topic)
            if owner != serial:
                return
            if suffix == wire.REGISTER_REQUEST and role == wire.ROLE_REGISTRATION:
                request = wire.RegisterRequest.parse(payload)
                self._queue.put_nowait(
                    _Item("register", serial, request, session.attributes.get(INIT_KEY_HASH, ""))
                )
            elif suffix == wire.STATUS and role == wire.ROLE_DEVICE:
                status = wire.Status.parse(payload)
                self._queue.put_nowait(_Item("birth" if status.state == "online" else "offline", serial, status))
            elif role == wire.ROLE_DEVICE and suffix.startswith(wire.RPC_RESPONSE + "/"):
                result = wire.RpcResult.parse(payload)
                self._queue.put_nowait(_Item("result", serial, (suffix[len(wire.RPC_RESPONSE) + 1:], result)))
            elif role == wire.ROLE_DEVICE and suffix == wire.TELEMETRY:
                self._queue.put_nowait(_Item("telemetry", serial, wire.TelemetryMessage.parse(payload)))
            elif role == wire.ROLE_DEVICE and suffix == wire.EVENTS:
                self._queue.put_nowait(_Item("event", serial, wire.DeviceEvent.parse(payload)))
        except wire.WireError as exc:
            self.stats.malformed += 1
            self.stats.malformed_by_device[str(serial)] += 1
            self.stats.last_refusal[str(serial)] = str(exc)[:300]
            log.warning("%s: refused a message on %s: %s", serial, topic, exc)
            if suffix == wire.REGISTER_REQUEST:
                await self.publish(wire.topic(serial, wire.REGISTER_RESPONSE),
                                   wire.RegisterResponse(ok=False, error=str(exc)).to_bytes())

    async def on_session(self, session: Session, connected: bool) -> None:
        if session.attributes.get(ROLE) != wire.ROLE_DEVICE:
            return
        serial = session.attributes.get(SERIAL)
        if serial:
            self._queue.put_nowait(_Item("online" if connected else "offline", serial))

    # -- worker -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self.batch_window > 0 and self._queue.qsize() < min(50, self.batch_size - 1):
                await asyncio.sleep(self.batch_window)
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            answers = await asyncio.to_thread(self._apply_isolated, batch)
            self.stats.batches += 1
            self.stats.last_batch = len(batch)
            for topic, payload in answers:
                await self.publish(topic, payload)

    def _apply_isolated(self, batch: list[_Item]) -> list[tuple[str, bytes]]:
        """Apply a batch in one transaction; if it fails, each item in a transaction of its own."""
        try:
            return self._apply(batch)
        except Exception as exc:
            if len(batch) == 1:
                return self._failed(batch[0], exc)
            log.warning("registry batch of %d failed (%s: %s); applying its items one by one",
                        len(batch), type(exc).__name__, str(exc)[:200])
            self.stats.batches_retried += 1
        answers: list[tuple[str, bytes]] = []
        for item in batch:
            try:
                answers += self._apply([item])
            except Exception as exc:
                answers += self._failed(item, exc)
        return answers

    def _failed(self, item: _Item, exc: Exception) -> list[tuple[str, bytes]]:
        """Count an item the registry refused; a registration hears "platform error" and retries."""
        log.error("%s: the registry refused a %s item: %s: %s", item.serial, item.kind, type(exc).__name__,
                  str(exc)[:300])
        self.stats.failed_items += 1
        self.stats.failed_by_device[item.serial] += 1
        self.stats.error(item.serial, f"{item.kind}: {type(exc).__name__}: {exc}")
        if item.kind != "register":
            return []
        return [(wire.topic(item.serial, wire.REGISTER_RESPONSE),
                 wire.RegisterResponse(ok=False, error=wire.REGISTER_RETRY_LATER).to_bytes())]

    def _apply(self, batch: list[_Item]) -> list[tuple[str, bytes]]:
        answers: list[tuple[str, bytes]] = []
        tally: Counter[str] = Counter()
        identity_updates: list[tuple[str, dict[str, Any]]] = []
        issued: dict[int, Credential] = {}
        cut_off: list[str] = []
        first_use: list[int] = []
        now = utcnow()
        with self.ctx.registry.session() as s, s.no_autoflush:
            # A few set queries for the whole batch, then plain attribute changes: no query (and
            # so no autoflush) per item, and the ORM writes everything in one flush at commit.
            serials = list({i.serial for i in batch})
            devices = {d.serial: d for d in s.scalars(select(Device).where(Device.serial.in_(serials)))}
            key_hashes = list({i.key_hash for i in batch if i.kind == "register" and i.key_hash})
            keys = (
                {k.key_hash: k for k in s.scalars(select(InitKey).where(InitKey.key_hash.in_(key_hashes)))}
                if key_hashes else {}
            )
            for item in batch:
                device = devices.get(item.serial)
                if item.kind == "register":
                    answers.append(self._register(s, item, device, keys.get(item.key_hash), now,
                                                  identity_updates, issued, tally))
                elif device is None:
                    continue
                elif item.kind == "birth":
                    self._birth(s, device, item.request, now)
                    tally["births"] += 1
                    answers.append((wire.topic(item.serial, wire.ACK),
                                    wire.Ack(ref=f"birth-{item.request.seq}").to_bytes()))
                elif item.kind == "result":
                    if self.jobs is not None:
                        request_id, result = item.request
                        cut_off += self.jobs.apply_result(s, device, request_id, result, now)
                elif item.kind == "telemetry":
                    tally["telemetry_samples"] += telemetry.store(s, device, item.request, now)
                    answers.append((wire.topic(item.serial, wire.ACK),
                                    wire.Ack(ref=f"telemetry-{item.request.seq}").to_bytes()))
                elif item.kind == "event":
                    telemetry.event(s, device, item.request, now)
                elif item.kind == "online":
                    device.connectivity, device.last_seen = ONLINE, now
                    identity = self.ctx.identities.get(item.serial)
                    if identity is not None and identity.init_key_hash is not None and identity.cert_fingerprint:
                        # First connection with the new credential: the init key is spent now.
                        first_use.append(device.id)
                        identity_updates.append((item.serial, {"init_key_hash": None}))
                elif item.kind == "offline":
                    device.connectivity, device.last_seen = OFFLINE, now
            if first_use:
                # One statement for the batch; before this batch's new credentials are inserted.
                s.execute(update(Credential).where(Credential.device_id.in_(first_use),
                                                   Credential.revoked_at.is_(None),
                                                   Credential.first_used_at.is_(None))
                          .values(first_used_at=now).execution_options(synchronize_session=False))
            if issued:
                # Every earlier credential of a device that registered again is revoked: one
                # statement for the batch, before the new credentials are inserted.
                s.execute(
                    update(Credential)
                    .where(Credential.device_id.in_(list(issued)), Credential.revoked_at.is_(None))
                    .values(revoked_at=now)
                    .execution_options(synchronize_session=False)
                )
                s.add_all(issued.values())
        self.stats.add(tally)
        for serial, changes in identity_updates:
            self.ctx.identities.update(serial, **changes)
        for serial in cut_off:  # decommissioned: its credentials die now
            self.ctx.identities.remove(serial)
            self.ctx.drop_session(serial)
        return answers

    def _register(
        self, s: Any, item: _Item, device: Device | None, key: InitKey | None, now: Any,
        updates: list[tuple[str, dict[str, Any]]], issued: dict[int, Credential], tally: Counter[str],
    ) -> tuple[str, bytes]:
        topic = wire.topic(item.serial, wire.REGISTER_RESPONSE)
        try:
            if device is None:
                raise Refused("the device is not provisioned (or was disposed)")
            if key is None or key.device_id != device.id:
                raise Refused("the init key does not belong to this device")
            if key.revoked_at is not None:
                raise Refused("the init key was replaced by a reissue")
            if item.request.auth != device.auth_mode:
                # One credential kind per device, the one it was provisioned with: a device cannot
                # pick another at registration (the broker accepts only the provisioned kind).
                raise Refused(f"the device was provisioned for {device.auth_mode} authentication, "
                              f"not {item.request.auth}")
            identity = self.ctx.identities.get(device.serial)
            if key.used_at is not None and (identity is None or identity.init_key_hash != key.key_hash):
                # Spent: the device has connected with the credential this key got it. Until
                # then a repeat is allowed, so a power cut between the platform's answer and
                # the device storing it does not strand the device.
                raise Refused("the init key was used already")
            cert = self.ctx.ca.sign_device_csr(item.request.csr_pem, device.serial)
        except Refused as exc:
            tally["registration_refused"] += 1
            audit.record(s, f"device:{item.serial}", "device.register.refused", item.serial, reason=str(exc))
            return topic, wire.RegisterResponse(ok=False, error=str(exc)).to_bytes()
        token = secrets.token_urlsafe(32)
        earlier = issued.get(device.id)
        if earlier is not None:  # registered twice in one batch: only the last credential lives
            earlier.revoked_at = now
            s.add(earlier)
        issued[device.id] = Credential(
            device_id=device.id, cert_fingerprint=cert.fingerprint, cert_serial=cert.serial_number,
            token_hash=digest(token), not_after=cert.not_after,
        )
        key.used_at = key.used_at or now
        if device.state == PROVISIONED:
            device.state = REGISTERED
        device.registered_at = now
        audit.record(s, f"device:{item.serial}", "device.register", item.serial,
                     cert_serial=cert.serial_number, auth=item.request.auth)
        updates.append((item.serial, {
            "state": device.state, "cert_fingerprint": cert.fingerprint, "token_hash": digest(token),
        }))
        tally["registered"] += 1
        return topic, wire.RegisterResponse(ok=True, certificate_pem=cert.pem, token=token).to_bytes()

    def _birth(self, s: Any, device: Device, status: wire.Status, now: Any) -> None:
        if status.firmware_version and status.firmware_version != device.firmware_version:
            s.add(FirmwareRecord(device_id=device.id, version=status.firmware_version, first_seen=now))
            if device.firmware_version is not None:
                audit.record(s, f"device:{device.serial}", "device.firmware", device.serial,
                             old=device.firmware_version, new=status.firmware_version)
            device.firmware_version = status.firmware_version
        device.facts = status.facts
        device.boot_id = status.boot_id or None
        device.connectivity, device.last_seen = ONLINE, now
