"""PMS: customers, parts, models, and provisioning of devices (the library operations).

Provisioning registers serials in the registry and the broker's identity table in one bulk
transaction, and returns each device's agent.env text with a fresh one-time init key. Only the
key's digest is stored; the key exists nowhere else but in that text.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from agent import wire
from agent.env import AgentEnv
from harness.errors import Conflict, NotFound, Refused
from harness.platform import audit
from harness.platform.context import PlatformContext
from harness.platform.identities import Identity, digest
from harness.platform.models import (
    DECOMMISSIONED,
    DEVICE_STATES,
    Customer,
    Device,
    DeviceModel,
    DisposalEvent,
    InitKey,
    Part,
    utcnow,
)

MAX_BULK = 100_000
#: The rules for names and tenant ids, unanchored: the REST API declares them in its schema
#: (anchored there as ^...$, which in JSON Schema and pydantic match at the very end only).
NAME_RULE = r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}"
TENANT_RULE = wire.TENANT_RULE
# Full matches (`\Z`): in Python `$` also matches before a final newline and let "ACME\n" in.
_NAME = re.compile(NAME_RULE + r"\Z")
_TENANT = re.compile(TENANT_RULE + r"\Z")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise Refused(f"{kind} name {wire.shorten(name)} is malformed: "
                      "1-128 characters from letters, digits, space . _ -")
    return name


def new_init_key() -> str:
    """A one-time init key: 192 random bits, URL-safe text."""
    return secrets.token_urlsafe(24)


# -- customers, parts, models -------------------------------------------------------------------


def add_customer(ctx: PlatformContext, name: str, tenant_id: str, actor: str, *,
                 dry_run: bool = False) -> dict[str, Any]:
    _check_name("customer", name)
    if not isinstance(tenant_id, str) or not _TENANT.fullmatch(tenant_id):
        raise Refused(f"tenant id {wire.shorten(tenant_id)} is malformed: "
                      "1-128 characters from letters, digits . _ : -")
    with ctx.registry.session() as s:
        if s.scalar(select(Customer).where(Customer.name == name)):
            raise Conflict(f"customer {name!r} exists already")
        if s.scalar(select(Customer).where(Customer.tenant_id == tenant_id)):
            raise Conflict(f"tenant id {tenant_id!r} belongs to another customer")
        if dry_run:
            return {"name": name, "tenant_id": tenant_id, "dry_run": True}
        s.add(Customer(name=name, tenant_id=tenant_id))
        audit.record(s, actor, "customer.add", customer=name, tenant_id=tenant_id)
    return {"name": name, "tenant_id": tenant_id}


def add_part(ctx: PlatformContext, name: str, actor: str, *, dry_run: bool = False) -> dict[str, Any]:
    _check_name("part", name)
    with ctx.registry.session() as s:
        if s.scalar(select(Part).where(Part.name == name)):
            raise Conflict(f"part {name!r} exists already")
        if dry_run:
            return {"name": name, "dry_run": True}
        s.add(Part(name=name))
        audit.record(s, actor, "part.add", part=name)
    return {"name": name}


def add_model(ctx: PlatformContext, name: str, part: str, actor: str, *,
              dry_run: bool = False) -> dict[str, Any]:
    _check_name("model", name)
    with ctx.registry.session() as s:
        part_row = s.scalar(select(Part).where(Part.name == part))
        if part_row is None:
            raise NotFound(f"unknown part {part!r}; add it with 'fleetrig pms part add {part}'")
        if s.scalar(select(DeviceModel).where(DeviceModel.name == name)):
            raise Conflict(f"model {name!r} exists already")
        if dry_run:
            return {"name": name, "part": part, "dry_run": True}
        s.add(DeviceModel(name=name, part=part_row))
        audit.record(s, actor, "model.add", model=name, part=part)
    return {"name": name, "part": part}


def list_catalog(ctx: PlatformContext) -> dict[str, list[dict[str, Any]]]:
    with ctx.registry.session() as s:
        return {
            "customers": [{"name": c.name, "tenant_id": c.tenant_id} for c in s.scalars(select(Customer))],
            "parts": [{"name": p.name, "models": [m.name for m in p.models]} for p in s.scalars(select(Part))],
        }


# -- provisioning -------------------------------------------------------------------------------


@dataclass
class ProvisionResult:
    serial: str
    ok: bool
    error: str = ""
    agent_env: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProvisionReport:
    dry_run: bool
    results: list[ProvisionResult]

    @property
    def provisioned(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def refused(self) -> int:
        return sum(1 for r in self.results if not r.ok)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "provisioned": self.provisioned,
            "refused": self.refused,
            "results": [r.as_dict() for r in self.results],
        }


def check_signature_cert(pem: str | None) -> str | None:
    """Validate an optional OTA signature certificate (PEM) given at provisioning."""
    if not pem:
        return None
    try:
        x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise Refused(f"signature certificate is not a PEM X.509 certificate: {exc}") from None
    return pem


def _resolve_model(s: Session, part: Part, model: str | None) -> DeviceModel:
    models = list(part.models)
    if model is not None:
        for candidate in models:
            if candidate.name == model:
                return candidate
        raise NotFound(f"model {model!r} is not assigned to part {part.name!r}")
    if not models:
        raise Refused(
            f"part {part.name!r} has no model assigned; add one with "
            f"'fleetrig pms model add MODEL --part {part.name}'"
        )
    if len(models) > 1:
        names = ", ".join(sorted(m.name for m in models))
        raise Refused(f"part {part.name!r} has several models ({names}); choose one with --model")
    return models[0]


def provision(
    ctx: PlatformContext,
    serials: list[str],
    *,
    customer: str,
    part: str,
    actor: str,
    model: str | None = None,
    dry_run: bool = False,
    atomic: bool = False,
    auth: str = wire.AUTH_X509,
    signature_cert: str | None = None,
) -> ProvisionReport:
    """Provision many serials in one transaction; one result per serial, in input order.

    The request as a whole is refused for an unknown customer or part, a part without a
    model, or a bad option. Single serials are refused for a malformed serial, a duplicate in
    the request, a serial already registered, or one disposed before. The valid ones still go
    through, unless `atomic`, when one refusal refuses all.
    """
    if not serials:
        raise Refused("no serials given")
    if len(serials) > MAX_BULK:
        raise Refused(f"{len(serials)} serials in one request; the limit is {MAX_BULK}")
    if auth not in wire.AUTH_MODES:
        raise Refused(f"auth must be one of {', '.join(wire.AUTH_MODES)}, got {auth!r}")
    signature_cert = check_signature_cert(signature_cert)
    keys: dict[str, str] = {}
    with ctx.registry.session() as s:
        cust = s.scalar(select(Customer).where(Customer.name == customer))
        if cust is None:
            raise NotFound(
                f"unknown customer {customer!r}; add it with "
                f"'fleetrig pms customer add {customer} --tenant-id ID'"
            )
        part_row = s.scalar(select(Part).where(Part.name == part))
        if part_row is None:
            raise NotFound(f"unknown part {part!r}; add it with 'fleetrig pms part add {part}'")
        model_row = _resolve_model(s, part_row, model)

        found, disposed = _known(s, serials)
        results: list[ProvisionResult] = []
        for serial, error in _screen(serials):
            if error:
                results.append(ProvisionResult(serial, False, error))
            elif serial in found:
                results.append(ProvisionResult(serial, False, (
                    f"serial {serial} is already provisioned; if its agent.env was lost, get a new one with "
                    f"'fleetrig pms provisioning reissue {serial}'")))
            elif serial in disposed:
                results.append(ProvisionResult(serial, False, _disposed(serial)))
            else:
                results.append(ProvisionResult(serial, True))
        report = ProvisionReport(dry_run=dry_run, results=results)
        if atomic and report.refused:
            for r in results:
                if r.ok:
                    r.ok, r.error = False, "not provisioned: another serial of this atomic request was refused"
            return report
        if dry_run:
            return report
        accepted = [r for r in results if r.ok]
        devices = [
            Device(serial=r.serial, customer_id=cust.id, part_id=part_row.id, model_id=model_row.id,
                   auth_mode=auth, signature_cert=signature_cert)
            for r in accepted
        ]
        s.add_all(devices)
        s.flush()
        for device in devices:
            key = new_init_key()
            keys[device.serial] = key
            s.add(InitKey(device_id=device.id, key_hash=digest(key)))
        audit.record(
            s, actor, "device.provision", None, count=len(accepted), customer=customer, part=part,
            model=model_row.name, serials=[r.serial for r in accepted][:1000],
        )
        tenant_id = cust.tenant_id
    for r in accepted:
        ctx.identities.put(Identity(serial=r.serial, state="provisioned", init_key_hash=digest(keys[r.serial]),
                                     auth_mode=auth))
        r.agent_env = render_agent_env(ctx, r.serial, tenant_id, keys[r.serial], auth, signature_cert)
    return report


def render_agent_env(
    ctx: PlatformContext, serial: str, tenant_id: str, init_key: str, auth: str, signature_cert: str | None
) -> str:
    return AgentEnv(
        serial=serial,
        tenant_id=tenant_id,
        broker_url=ctx.broker_url,
        init_key=init_key,
        ca_cert_pem=ctx.ca.cert_pem,
        auth=auth,
        signature_cert_pem=signature_cert,
        repo_url=ctx.repo_url,
    ).render()


def _known(s: Session, serials: list[str]) -> tuple[dict[str, Device], set[str]]:
    """The devices among `serials` (with their keys and customer), and the serials disposed before."""
    wellformed = list({x for x in serials if isinstance(x, str) and wire.SERIAL_PATTERN.fullmatch(x)})
    devices: dict[str, Device] = {}
    disposed: set[str] = set()
    for start in range(0, len(wellformed), 5000):  # bound the IN list: SQLite's variable limit
        chunk = wellformed[start:start + 5000]
        query = (select(Device).where(Device.serial.in_(chunk))
                 .options(selectinload(Device.init_keys), selectinload(Device.customer)))
        devices.update((d.serial, d) for d in s.scalars(query))
        disposed.update(s.scalars(select(DisposalEvent.serial).where(DisposalEvent.serial.in_(chunk))))
    return devices, disposed


def _disposed(serial: str) -> str:
    return f"serial {serial} was disposed; end of life is permanent"


def _screen(serials: list[str]) -> Iterator[tuple[str, str]]:
    """Each serial of a bulk request with what is wrong with it alone ("" when nothing)."""
    seen: set[str] = set()
    for serial in serials:
        try:
            wire.check_serial(serial)
        except wire.WireError as exc:
            yield str(serial), str(exc)
            continue
        if serial in seen:
            yield serial, f"serial {serial} appears twice in the request"
            continue
        seen.add(serial)
        yield serial, ""


@dataclass
class ReissueReport(ProvisionReport):
    def as_dict(self) -> dict[str, Any]:
        report = super().as_dict()
        report["reissued"] = report.pop("provisioned")
        return report


def reissue_many(ctx: PlatformContext, serials: list[str], *, actor: str, dry_run: bool = False) -> ReissueReport:
    """New agent.env files for provisioned devices, in one transaction; one result per serial.

    Each device gets a new init key and every older key of it dies at once. This is how files
    that never reached the operator are recovered (a kill between the provisioning commit and
    the answer): provisioning them again is refused, as they exist. Refused per serial: a
    malformed or repeated serial, an unknown one, one disposed or decommissioned.
    """
    if not serials:
        raise Refused("no serials given")
    if len(serials) > MAX_BULK:
        raise Refused(f"{len(serials)} serials in one request; the limit is {MAX_BULK}")
    issued: list[tuple[ProvisionResult, str, str, str, str | None]] = []
    with ctx.registry.session() as s:
        found, disposed = _known(s, serials)
        results: list[ProvisionResult] = []
        for serial, error in _screen(serials):
            device = found.get(serial)
            if not error and device is None:
                error = _disposed(serial) if serial in disposed else f"unknown serial {serial!r}: provision it first"
            elif not error and device is not None and device.state == DECOMMISSIONED:
                error = f"device {serial} was decommissioned: its identity is revoked for good"
            results.append(ProvisionResult(serial, not error, error))
        report = ReissueReport(dry_run=dry_run, results=results)
        if dry_run:
            return report
        now = utcnow()
        for r in results:
            if not r.ok:
                continue
            device = found[r.serial]
            for old in device.init_keys:
                if old.used_at is None and old.revoked_at is None:
                    old.revoked_at = now
            key = new_init_key()
            s.add(InitKey(device_id=device.id, key_hash=digest(key)))
            audit.record(s, actor, "device.reissue", r.serial)
            issued.append((r, key, device.customer.tenant_id, device.auth_mode, device.signature_cert))
    for r, key, tenant_id, auth, sig in issued:
        ctx.identities.update(r.serial, init_key_hash=digest(key))
        ctx.drop_session(r.serial, only_role=wire.ROLE_REGISTRATION)
        r.agent_env = render_agent_env(ctx, r.serial, tenant_id, key, auth, sig)
    return report


def reissue(ctx: PlatformContext, serial: str, actor: str) -> ProvisionResult:
    """A new agent.env for one provisioned device (see `reissue_many`)."""
    (result,) = reissue_many(ctx, [serial], actor=actor).results
    if not result.ok:
        raise (NotFound if result.error.startswith("unknown serial") else Refused)(result.error)
    return result


# -- devices ------------------------------------------------------------------------------------


def device_view(device: Device) -> dict[str, Any]:
    return {
        "serial": device.serial,
        "customer": device.customer.name,
        "tenant_id": device.customer.tenant_id,
        "part": device.part.name,
        "model": device.model.name,
        "state": device.state,
        "auth": device.auth_mode,
        "firmware_version": device.firmware_version,
        "connectivity": device.connectivity,
        "last_seen": device.last_seen.isoformat() if device.last_seen else None,
        "registered_at": device.registered_at.isoformat() if device.registered_at else None,
        "claimed_at": device.claimed_at.isoformat() if device.claimed_at else None,
        "family": (device.facts or {}).get("family"),
    }


def list_devices(
    ctx: PlatformContext, *, state: str | None = None, customer: str | None = None
) -> list[dict[str, Any]]:
    if state and state not in DEVICE_STATES:
        raise Refused(f"unknown device state {wire.shorten(state)}; one of {', '.join(DEVICE_STATES)}")
    with ctx.registry.session() as s:
        query = select(Device).order_by(Device.serial)
        if state:
            query = query.where(Device.state == state)
        if customer:
            # A filter that names nobody is a typo, not an empty fleet.
            if s.scalar(select(Customer.id).where(Customer.name == customer)) is None:
                raise NotFound(f"unknown customer {wire.shorten(customer)}; see 'fleetrig pms customer list'")
            query = query.join(Customer).where(Customer.name == customer)
        return [device_view(d) for d in s.scalars(query)]


def show_device(ctx: PlatformContext, serial: str) -> dict[str, Any]:
    with ctx.registry.session() as s:
        device = s.scalar(select(Device).where(Device.serial == serial))
        if device is None:
            raise NotFound(f"unknown serial {serial!r}")
        view = device_view(device)
        view["facts"] = device.facts or {}
        view["init_keys"] = [
            {"created_at": k.created_at.isoformat(), "used_at": k.used_at.isoformat() if k.used_at else None,
             "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}
            for k in device.init_keys
        ]
        view["credentials"] = [
            {"fingerprint": c.cert_fingerprint, "cert_serial": c.cert_serial,
             "issued_at": c.issued_at.isoformat(), "revoked_at": c.revoked_at.isoformat() if c.revoked_at else None}
            for c in device.credentials
        ]
        view["firmware_history"] = [f.version for f in device.firmware_records]
        view["cves"] = [{"cve_id": c.cve_id, "status": c.status} for c in device.cve_records]
        return view


def state_counts(ctx: PlatformContext) -> dict[str, int]:
    with ctx.registry.session() as s:
        return dict(s.execute(select(Device.state, func.count()).group_by(Device.state)).all())  # type: ignore[arg-type]
