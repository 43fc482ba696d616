"""The REST API (FastAPI; OpenAPI at /docs). Every route but /api/v1/health needs the operator token.

Routes are plain `def`s: FastAPI runs them in its thread pool, so the registry's blocking calls
never hold up the broker, which shares the event loop.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from harness.errors import Refused
from harness.platform import eol, fleet, pms, telemetry, tracking
from harness.platform.context import PlatformContext
from harness.platform.models import AuditEvent
from harness.platform.repo import MAX_PACKAGE_BYTES

if TYPE_CHECKING:
    from harness.platform.process import Platform


class CustomerIn(BaseModel):
    name: str
    tenant_id: str


class PartIn(BaseModel):
    name: str


class ModelIn(BaseModel):
    name: str
    part: str


class ProvisionIn(BaseModel):
    serials: list[str] = Field(min_length=1)
    customer: str
    part: str
    model: str | None = None
    dry_run: bool = False
    atomic: bool = False
    auth: str = "x509"
    signature_cert: str | None = None


class ReissueIn(BaseModel):
    serials: list[str] = Field(min_length=1)
    dry_run: bool = False


class ClaimIn(BaseModel):
    serials: list[str] | None = None
    all: bool = False
    dry_run: bool = False


class DisposeIn(BaseModel):
    reason: str
    confirm: bool = False


class CveIn(BaseModel):
    cve_id: str
    status: str = "open"


class JobIn(BaseModel):
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    serials: list[str] | None = None
    all: bool = False
    customer: str | None = None
    timeout_s: float | None = None


def create_app(platform: Platform) -> FastAPI:
    app = FastAPI(
        title="fleetrig platform",
        version="1",
        description="Device registry, provisioning, fleet and end of life. "
        "Send the operator token (data dir file operator.token) as 'Authorization: Bearer TOKEN'.",
    )

    def ctx() -> PlatformContext:
        assert platform.ctx is not None
        return platform.ctx

    def operator(authorization: str = Header(default=""), x_fleetrig_actor: str = Header(default="")) -> str:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or not hmac.compare_digest(token.strip(), platform.token):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong operator token: send 'Authorization: Bearer TOKEN' with the "
                "token from the platform's data dir (operator.token)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        actor = (x_fleetrig_actor or "operator").strip()[:100]
        return f"operator:{actor}"

    @app.exception_handler(Refused)
    def refused(_request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)})

    @app.get("/api/v1/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "broker_url": platform.broker_url}

    @app.get("/api/v1/stats")
    def stats(_: str = Depends(operator)) -> dict[str, Any]:
        return {**platform.stats(), "states": pms.state_counts(ctx())}

    @app.post("/api/v1/customers", status_code=201)
    def add_customer(body: CustomerIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return pms.add_customer(ctx(), body.name, body.tenant_id, actor)

    @app.post("/api/v1/parts", status_code=201)
    def add_part(body: PartIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return pms.add_part(ctx(), body.name, actor)

    @app.post("/api/v1/models", status_code=201)
    def add_model(body: ModelIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return pms.add_model(ctx(), body.name, body.part, actor)

    @app.get("/api/v1/catalog")
    def catalog(_: str = Depends(operator)) -> dict[str, Any]:
        return pms.list_catalog(ctx())

    @app.post("/api/v1/provisioning")
    def provision(body: ProvisionIn, actor: str = Depends(operator)) -> dict[str, Any]:
        report = pms.provision(
            ctx(), body.serials, customer=body.customer, part=body.part, model=body.model, actor=actor,
            dry_run=body.dry_run, atomic=body.atomic, auth=body.auth, signature_cert=body.signature_cert,
        )
        return report.as_dict()

    @app.post("/api/v1/provisioning/reissue")
    def reissue_many(body: ReissueIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return pms.reissue_many(ctx(), body.serials, actor=actor, dry_run=body.dry_run).as_dict()

    @app.post("/api/v1/devices/{serial}/reissue")
    def reissue(serial: str, actor: str = Depends(operator)) -> dict[str, Any]:
        return pms.reissue(ctx(), serial, actor).as_dict()

    @app.get("/api/v1/devices")
    def devices(
        state: str | None = Query(default=None), customer: str | None = Query(default=None),
        _: str = Depends(operator),
    ) -> list[dict[str, Any]]:
        return pms.list_devices(ctx(), state=state, customer=customer)

    @app.get("/api/v1/devices/{serial}")
    def device(serial: str, _: str = Depends(operator)) -> dict[str, Any]:
        return pms.show_device(ctx(), serial)

    @app.post("/api/v1/fleet/claims")
    def claim(body: ClaimIn, actor: str = Depends(operator)) -> dict[str, Any]:
        if body.all == (body.serials is not None):
            raise Refused("give either serials or all=true")
        return fleet.claim(ctx(), None if body.all else body.serials, actor=actor, dry_run=body.dry_run)

    @app.get("/api/v1/fleet")
    def fleet_list(_: str = Depends(operator)) -> list[dict[str, Any]]:
        return fleet.list_fleet(ctx())

    @app.post("/api/v1/devices/{serial}/dispose")
    def dispose(serial: str, body: DisposeIn, actor: str = Depends(operator)) -> dict[str, Any]:
        if not body.confirm:
            raise Refused("disposal is permanent; send confirm=true (the CLI's --yes) to go ahead")
        return eol.dispose(ctx(), serial, reason=body.reason, actor=actor)

    @app.get("/api/v1/disposals")
    def disposals(_: str = Depends(operator)) -> list[dict[str, Any]]:
        return eol.list_disposals(ctx())

    @app.post("/api/v1/devices/{serial}/cves", status_code=201)
    def add_cve(serial: str, body: CveIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return tracking.track_cve(ctx(), serial, body.cve_id, body.status, actor)

    def jobs() -> Any:
        if platform.jobs is None:
            raise Refused("the job engine is not running", status=503)
        return platform.jobs

    @app.post("/api/v1/jobs", status_code=201)
    def create_job(body: JobIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return jobs().create(body.method, body.params, actor=actor, serials=body.serials, all_devices=body.all,
                             customer=body.customer, timeout_s=body.timeout_s)

    @app.get("/api/v1/jobs/{job_id}")
    def show_job(job_id: str, _: str = Depends(operator)) -> dict[str, Any]:
        return jobs().show(job_id)

    @app.get("/api/v1/devices/{serial}/telemetry")
    def device_telemetry(serial: str, limit: int = Query(default=100, ge=1, le=10000),
                         _: str = Depends(operator)) -> dict[str, Any]:
        return telemetry.read_telemetry(ctx(), serial, limit)

    @app.get("/api/v1/devices/{serial}/events")
    def device_events(serial: str, limit: int = Query(default=200, ge=1, le=10000),
                      _: str = Depends(operator)) -> list[dict[str, Any]]:
        return telemetry.read_events(ctx(), serial, limit)

    @app.put("/api/v1/repo/{name}", status_code=201)
    async def add_package(name: str, request: Request, _: str = Depends(operator)) -> dict[str, Any]:
        assert platform.store is not None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_PACKAGE_BYTES:
                raise Refused(f"package {name} is larger than {MAX_PACKAGE_BYTES} bytes", status=413)
            chunks.append(chunk)
        info = platform.store.add(name, chunks)
        return {**info, "url": platform.repo_url + info["name"]}

    @app.get("/api/v1/repo")
    def list_packages(_: str = Depends(operator)) -> list[dict[str, Any]]:
        assert platform.store is not None
        return [{**p, "url": platform.repo_url + p["name"]} for p in platform.store.list()]

    @app.get("/api/v1/audit")
    def audit_log(
        serial: str | None = Query(default=None), limit: int = Query(default=200, ge=1, le=10000),
        _: str = Depends(operator),
    ) -> list[dict[str, Any]]:
        with ctx().registry.session() as s:
            query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if serial:
                query = query.where(AuditEvent.serial == serial)
            return [
                {"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "serial": e.serial,
                 "detail": e.detail}
                for e in s.scalars(query)
            ]

    return app
