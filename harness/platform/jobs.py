"""Jobs: one command to one device, a list, every device, or a customer's devices.

A job is stored before anything is sent, one target row per device. The engine then publishes
one RPC per target, paced so a batch of thousands stays under the broker's capacity, and marks a
target failed at once when its device is offline. Each device's answer closes its target; a
sweeper closes every target whose deadline passed with a failed result that says so, so no job
ever hangs on a silent device.

A decommission revokes the device's platform identity (credentials, init keys, broker session)
when the device confirms it wiped itself, and also when it cannot: offline when the command
would go out, or silent until the deadline. The operator asked for the device to be gone, and a
device that is off (stolen, broken) must not keep working credentials until it comes back. Its
target is then recorded as failed, saying that the identity is revoked and the device itself
was not wiped. A device that answers with a refusal keeps its identity: it is reachable, and
the operator can try again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent import wire
from harness.errors import NotFound, Refused
from harness.platform import audit
from harness.platform.context import PlatformContext
from harness.platform.models import (
    CLAIMED,
    DECOMMISSIONED,
    FAILED,
    PENDING,
    REGISTERED,
    SENT,
    SUCCEEDED,
    TARGET_STATES,
    Credential,
    Customer,
    Device,
    DeviceEventRecord,
    InitKey,
    Job,
    JobTarget,
    utcnow,
)

log = logging.getLogger("fleetrig.jobs")

STATUS_TIMEOUT = 408
STATUS_OFFLINE = 503
MAX_TIMEOUT_S = 24 * 3600
DEFAULT_TIMEOUT_S = {"triggerfota": 900.0, "triggersota": 900.0, "triggeraota": 600.0, "triggerota": 900.0}

DECOMMISSION = "decommission_device"
_NOT_WIPED = "; its credentials are revoked, so it cannot connect again (the device itself was not wiped)"

Publish = Callable[[str, bytes], Awaitable[None]]


def _target_view(t: JobTarget) -> dict[str, Any]:
    return {
        "serial": t.serial, "state": t.state, "status": t.status, "message": t.message, "data": t.data,
        "job_id": t.job_id, "sent_at": t.sent_at.isoformat() if t.sent_at else None,
        "finished_at": t.finished_at.isoformat() if t.finished_at else None,
    }


def job_view(job: Job) -> dict[str, Any]:
    targets = [_target_view(t) for t in job.targets]
    counts = {state: sum(1 for t in targets if t["state"] == state) for state in TARGET_STATES}
    return {
        "id": job.id, "method": job.method, "params": job.params, "actor": job.actor,
        "created_at": job.created_at.isoformat(), "timeout_s": job.timeout_s,
        "done": counts[PENDING] + counts[SENT] == 0, "counts": counts, "results": targets,
    }


class JobEngine:
    """Creates jobs, sends their commands, and closes them with results or timeouts."""

    def __init__(self, ctx: PlatformContext, publish: Publish, is_connected: Callable[[str], bool], *,
                 send_batch: int = 100, send_pause: float = 0.02) -> None:
        self.ctx = ctx
        self.publish = publish
        self.is_connected = is_connected
        self.send_batch = send_batch
        self.send_pause = send_pause
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._sender()), asyncio.create_task(self._sweeper())]
        # Targets a previous run created but never sent go out now.
        pending = await asyncio.to_thread(self._pending_jobs)
        for job_id in pending:
            self._outbox.put_nowait(job_id)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- creating -----------------------------------------------------------------------------------

    def create(
        self, method: str, params: dict[str, Any], *, actor: str, serials: list[str] | None = None,
        all_devices: bool = False, customer: str | None = None, timeout_s: float | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Store a job for its targets and hand it to the sender; thread-safe.

        A dry run checks the method, timeout and targets and stores and sends nothing.
        """
        if method not in wire.RPC_METHODS:
            raise Refused(f"unknown method {method!r}; one of {', '.join(wire.RPC_METHODS)}")
        if not isinstance(params, dict):
            raise Refused("params must be an object")
        # Everything is checked before the job is stored: a job that cannot be sent must not exist.
        try:
            wire.check_depth(params, "params")
        except wire.WireError as exc:
            raise Refused(str(exc)) from None
        # The command must fit the payload limit the device enforces (with room for the envelope).
        if len(wire.encode(params)) > wire.MAX_PAYLOAD_BYTES - 1024:
            raise Refused(f"params take more than {wire.MAX_PAYLOAD_BYTES - 1024} bytes as JSON")
        for serial in serials or ():
            try:
                wire.check_serial(serial)
            except wire.WireError as exc:
                raise Refused(str(exc)) from None
        chosen = sum(bool(x) for x in (serials, all_devices, customer))
        if chosen != 1:
            raise Refused("choose the targets one way: serials, all, or customer")
        timeout = float(timeout_s or DEFAULT_TIMEOUT_S.get(method, 120.0))
        if not 0 < timeout <= MAX_TIMEOUT_S:
            raise Refused(f"timeout must be between 0 and {MAX_TIMEOUT_S} seconds")
        if dry_run:
            with self.ctx.registry.session() as s:
                targets = self._resolve(s, serials, all_devices, customer)
            return {"dry_run": True, "method": method, "params": params, "timeout_s": timeout, "targets": targets}
        job_id = secrets.token_hex(6)
        with self.ctx.registry.session() as s:
            targets = self._resolve(s, serials, all_devices, customer)
            job = Job(id=job_id, actor=actor, method=method, params=params, timeout_s=timeout)
            job.targets = [JobTarget(serial=serial, request_id=secrets.token_hex(10)) for serial in targets]
            s.add(job)
            audit.record(s, actor, "job.create", None, job_id=job_id, method=method, targets=len(targets))
        if self._loop is not None and self._outbox is not None:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, job_id)
        return self.show(job_id)

    def _resolve(self, s: Session, serials: list[str] | None, all_devices: bool, customer: str | None) -> list[str]:
        live = (REGISTERED, CLAIMED)
        if serials:
            unique = list(dict.fromkeys(serials))
            found = {d.serial: d.state for d in s.scalars(select(Device).where(Device.serial.in_(unique)))}
            unknown = [x for x in unique if x not in found]
            if unknown:
                raise NotFound(f"unknown serial {unknown[0]!r}")  # well formed, so short
            not_live = [x for x in unique if found[x] not in live]
            if not_live:
                raise Refused(f"device {not_live[0]} is {found[not_live[0]]}: it has never registered or was "
                              "decommissioned, so it cannot take commands")
            return unique
        query = select(Device.serial).where(Device.state.in_(live)).order_by(Device.serial)
        if customer:
            if s.scalar(select(Customer).where(Customer.name == customer)) is None:
                raise NotFound(f"unknown customer {wire.shorten(customer)}")
            query = query.join(Customer).where(Customer.name == customer)
        targets = list(s.scalars(query))
        if not targets:
            raise Refused("no registered devices to send the command to")
        return targets

    def show(self, job_id: str) -> dict[str, Any]:
        with self.ctx.registry.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"unknown job {job_id!r}")
            return job_view(job)

    def _pending_jobs(self) -> list[str]:
        with self.ctx.registry.session() as s:
            return list(s.scalars(select(JobTarget.job_id).where(JobTarget.state == PENDING).distinct()))

    # -- sending ------------------------------------------------------------------------------------

    async def _sender(self) -> None:
        assert self._outbox is not None
        while True:
            job_id = await self._outbox.get()
            try:
                await self._send(job_id)
            except Exception:
                log.exception("sending job %s failed", job_id)

    async def _send(self, job_id: str) -> None:
        while True:
            batch, more = await asyncio.to_thread(self._claim_batch, job_id)
            for topic, payload in batch:
                await self.publish(topic, payload)
            if not more:
                return
            await asyncio.sleep(self.send_pause)

    def _claim_batch(self, job_id: str) -> tuple[list[tuple[str, bytes]], bool]:
        """Mark the next pending targets sent (or failed when offline).

        Returns what to publish, and whether pending targets may remain.
        """
        now = utcnow()
        out: list[tuple[str, bytes]] = []
        cut_off: list[str] = []
        with self.ctx.registry.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return [], False
            rows = s.scalars(select(JobTarget).where(JobTarget.job_id == job_id, JobTarget.state == PENDING)
                             .limit(self.send_batch)).all()
            for target in rows:
                if not self.is_connected(target.serial):
                    cut_off += self._close_undelivered(s, target, STATUS_OFFLINE, "device is offline: command not sent",
                                                       now)
                    continue
                target.state, target.sent_at = SENT, now
                target.deadline = now + dt.timedelta(seconds=job.timeout_s)
                request = wire.RpcRequest(target.request_id, job.method, job.params or {}, job.id, job.timeout_s)
                out.append((wire.rpc_request_topic(target.serial, target.request_id), request.to_bytes()))
        self._cut_off(cut_off)
        return out, len(rows) == self.send_batch

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(self._expire)
            except Exception:
                log.exception("job sweeper failed")

    def _expire(self) -> int:
        now = utcnow()
        cut_off: list[str] = []
        with self.ctx.registry.session() as s:
            rows = s.scalars(select(JobTarget).where(JobTarget.state == SENT, JobTarget.deadline < now)).all()
            for target in rows:
                cut_off += self._close_undelivered(
                    s, target, STATUS_TIMEOUT,
                    f"timed out: no answer from the device within {target.job.timeout_s:.0f}s", now)
        self._cut_off(cut_off)
        return len(rows)

    def _close_undelivered(self, s: Session, target: JobTarget, status: int, message: str,
                           now: dt.datetime) -> list[str]:
        """Close a target the device never answered; a decommission revokes the identity all the same.

        Returns the serials to cut off once the transaction commits.
        """
        if target.job.method != DECOMMISSION:
            self._close(s, target, status, message, None, now)
            return []
        self._close(s, target, status, message + _NOT_WIPED, None, now)
        device = s.scalar(select(Device).where(Device.serial == target.serial))
        if device is None or device.state == DECOMMISSIONED:
            return []
        return [self._decommission(s, device, now, actor=target.job.actor, wiped=False)]

    def _cut_off(self, serials: list[str]) -> None:
        """After the commit: the broker forgets the identities and drops their sessions."""
        for serial in serials:
            self.ctx.identities.remove(serial)
            self.ctx.drop_session(serial)

    # -- results (called by the device gateway inside its batch transaction) --------------------------

    def apply_result(self, s: Session, device: Device, request_id: str, result: wire.RpcResult,
                     now: dt.datetime) -> list[str]:
        """Close the target `request_id` of `device` with `result`; return serials to cut off."""
        target = s.scalar(select(JobTarget).where(JobTarget.request_id == request_id))
        if target is None or target.serial != device.serial:
            return []
        if target.state in (SUCCEEDED, FAILED):
            return []  # a late answer after a timeout, or a duplicate
        self._close(s, target, result.status, result.message, result.data, now)
        said = isinstance(result.data, dict) and result.data.get("action") == "decommission"
        if result.status == 200 and (target.job.method == DECOMMISSION or said):
            return [self._decommission(s, device, now, actor=f"device:{device.serial}", wiped=True)]
        return []

    def _close(self, s: Session, target: JobTarget, status: int, message: str, data: Any, now: dt.datetime) -> None:
        target.state = SUCCEEDED if status == 200 else FAILED
        target.status, target.message, target.finished_at = status, message, now
        target.data = data if isinstance(data, dict) else ({"value": data} if data is not None else None)
        device = s.scalar(select(Device).where(Device.serial == target.serial))
        if device is not None:
            s.add(DeviceEventRecord(device_id=device.id, at=now, kind=f"job.{target.state}",
                                    message=f"{target.job.method}: {status} {message}"[:wire.MAX_MESSAGE_CHARS],
                                    detail={"job_id": target.job_id}))

    def _decommission(self, s: Session, device: Device, now: dt.datetime, *, actor: str, wiped: bool) -> str:
        """Revoke every credential and init key of the device; return its serial to cut off."""
        for cred in s.scalars(select(Credential).where(Credential.device_id == device.id)):
            cred.revoked_at = cred.revoked_at or now
        for key in s.scalars(select(InitKey).where(InitKey.device_id == device.id)):
            key.revoked_at = key.revoked_at or now
        device.state = DECOMMISSIONED
        audit.record(s, actor, "device.decommission", device.serial, wiped=wiped)
        return device.serial
