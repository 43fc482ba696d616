"""The REST API (FastAPI; OpenAPI at /openapi.json, Swagger UI at /docs, served offline).

Every route but /api/v1/health needs the operator token (`Authorization: Bearer TOKEN`, declared
as the bearer security scheme, so /docs has Authorize). Input is checked before anything is
stored or sent:

- Body size: FastAPI's own limit (`max_body_size`), which refuses with 413 on Content-Length
  before reading (answered by Starlette, as text/plain), and counts a chunked body as it streams
  (answered with the error model, naming the limit). The default limit is
  `DEFAULT_MAX_BODY_BYTES` (the largest real body, a 100 000-serial provisioning request, is
  about 1.5 MB); the package upload has its own, `wire.MAX_PACKAGE_BYTES`, and goes to disk as
  it arrives.
- JSON: parsed by the wire contract's `loads_json`, the same parser the gateway uses for MQTT
  payloads: bounded depth, finite numbers. A 300-deep body used to be stored as a job and sent
  before its answer failed to serialize.
- Refusals name the field and never echo the value whole (FastAPI's default 422 echoes `input`).
- A malformed credential of any kind is a 401, never a 500.

Routes are plain `def`s: FastAPI runs them in its thread pool, so the registry's blocking calls
never hold up the broker, which shares the event loop. The app is built from `ApiServices`, a
narrow view of the platform, so this module knows nothing of the process that runs it.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from sqlalchemy import String, cast, or_, select
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from agent import wire
from harness.errors import Refused
from harness.platform import eol, fleet, pms, repo, telemetry, tracking
from harness.platform.context import PlatformContext
from harness.platform.jobs import MAX_TIMEOUT_S, JobEngine
from harness.platform.models import DEVICE_STATES, AuditEvent
from harness.platform.repo import PackageStore, check_name

#: Largest request body accepted by default (bytes); `PlatformConfig.max_body_bytes` changes it.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

#: Longest name of a customer, part, model or tenant (the registry's columns).
NAME_CHARS = 128
SERIAL_CHARS = 64


@dataclass(frozen=True)
class ApiServices:
    """What the REST API needs of the platform, and nothing more."""

    ctx: PlatformContext
    jobs: JobEngine
    store: PackageStore
    repo_url: str
    operator_token: str
    stats: Callable[[], dict[str, Any]]
    broker_url: str
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


# -- errors ------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: 'body', 'query' or 'path', then the field")
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every 4xx answer: `detail` names what was wrong; `errors` lists each bad field (422)."""

    detail: str
    errors: list[FieldError] | None = None


_DESCRIPTIONS = {
    400: "Refused: the detail says why and what to do",
    401: "Missing or wrong operator token",
    404: "No such device, job, customer, part or package",
    409: "Exists already",
    413: "Request body larger than the limit",
    422: "A field is missing or malformed; the detail names it",
    503: "The platform is not ready for this",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: its 4xx answers with the error model (401 and 422 always)."""
    answers: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut, "description": _DESCRIPTIONS[code]} for code in sorted({401, 422, *codes})
    }
    if 413 in answers:  # refused on Content-Length before the app runs: Starlette's plain text
        answers[413]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    return answers


def _loc(parts: Any) -> list[str | int]:
    return [p if isinstance(p, int) else wire.shorten(p, 64).strip("'\"") for p in parts]


def _validation_answer(exc: RequestValidationError) -> JSONResponse:
    """A 422 that names each bad field and never echoes its input (FastAPI's default does)."""
    errors = []
    for error in exc.errors()[:20]:
        msg = str(error.get("msg", ""))[:200]
        reason = (error.get("ctx") or {}).get("error")
        if error.get("type") == "json_invalid" and reason:
            msg = f"{msg}: {str(reason)[:200]}"
        errors.append({"loc": _loc(error.get("loc", ())), "msg": msg, "type": str(error.get("type", ""))})
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors) or "invalid request"
    return JSONResponse(status_code=422, content={"detail": detail, "errors": errors})


def _http_answer(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = str(exc.detail)
    if exc.status_code == 413:
        limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
        detail = f"request body larger than {limit} bytes" if limit is not None else detail
    return JSONResponse(status_code=exc.status_code, content={"detail": detail[:2000]},
                        headers=getattr(exc, "headers", None))


# -- JSON through the wire contract -----------------------------------------------------------------


class _ContractRequest(Request):
    """A request whose JSON body is parsed by the wire contract (depth, finite numbers)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = wire.loads_json(await self.body(), "request body")
            except wire.WireError as exc:
                raise HTTPException(status_code=422, detail=str(exc)) from None
        return self._json


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


class _ContractRoute(APIRoute):
    """Routes that parse JSON through the wire contract and refuse unknown or repeated query parameters.

    An unknown parameter is refused rather than ignored: `GET /devices?stat=registered` (a typo)
    would otherwise list every device as if it had filtered them.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        known = _query_names(self.dependant)

        async def route(request: Request) -> Response:
            names = [name for name, _value in request.query_params.multi_items()]
            unknown = sorted(set(names) - known)
            if unknown:
                raise HTTPException(status_code=422, detail=(
                    f"unknown query parameter {wire.shorten(unknown[0])}; "
                    f"this route takes {', '.join(sorted(known)) or 'none'}"))
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:  # each takes one value: which of several would win is nobody's guess
                raise HTTPException(status_code=422, detail=f"query parameter {repeated[0]!r} given more than once")
            return await handler(_ContractRequest(request.scope, request.receive))

        return route


# -- bodies ------------------------------------------------------------------------------------------

def _rule(rule: str) -> dict[str, str]:
    """A registry rule, declared in the schema only (anchored as JSON Schema reads `$`).

    The operation checks it, once, with its own message ("tenant id ... is malformed: ...").
    """
    return {"pattern": f"^{rule}$"}


Name = Annotated[str, Field(min_length=1, max_length=NAME_CHARS, json_schema_extra=_rule(pms.NAME_RULE))]
Tenant = Annotated[str, Field(min_length=1, max_length=NAME_CHARS, json_schema_extra=_rule(pms.TENANT_RULE))]
# Tuples of allowed values, declared as enums (Literal[tuple] takes each item as one value).
AuthMode = Literal[wire.AUTH_MODES]  # type: ignore[valid-type]
RpcMethod = Literal[wire.RPC_METHODS]  # type: ignore[valid-type]
CveState = Literal[tracking.CVE_STATES]  # type: ignore[valid-type]
DeviceState = Literal[DEVICE_STATES]  # type: ignore[valid-type]
Serials = Annotated[list[str], Field(min_length=1, max_length=pms.MAX_BULK)]


class CustomerIn(BaseModel):
    name: Name
    tenant_id: Tenant
    dry_run: bool = False


class PartIn(BaseModel):
    name: Name
    dry_run: bool = False


class ModelIn(BaseModel):
    name: Name
    part: Name
    dry_run: bool = False


class ProvisionIn(BaseModel):
    serials: Serials
    customer: Name
    part: Name
    model: Name | None = None
    dry_run: bool = False
    atomic: bool = False
    auth: AuthMode = wire.AUTH_X509
    signature_cert: str | None = Field(default=None, max_length=64 * 1024)


class ReissueIn(BaseModel):
    serials: Serials
    dry_run: bool = False


class ClaimIn(BaseModel):
    serials: Serials | None = None
    all: bool = False
    dry_run: bool = False


class DisposeIn(BaseModel):
    reason: str = Field(max_length=eol.MAX_REASON_CHARS)
    confirm: bool = False


class CveIn(BaseModel):
    cve_id: str = Field(max_length=32, json_schema_extra=_rule(tracking.CVE_RULE))
    status: CveState = "open"
    dry_run: bool = False


class JobIn(BaseModel):
    method: RpcMethod
    params: dict[str, Any] = Field(default_factory=dict)
    serials: Serials | None = None
    all: bool = False
    customer: Name | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    dry_run: bool = False


SerialPath = Annotated[str, PathParam(max_length=SERIAL_CHARS)]


def create_app(services: ApiServices) -> FastAPI:
    app = FastAPIOffline(
        title="fleetrig platform",
        version="1",
        description="Device registry, provisioning, fleet and end of life. "
        "Send the operator token (data dir file operator.token) as 'Authorization: Bearer TOKEN'.",
        max_body_size=services.max_body_bytes,
    )
    app.router.route_class = _ContractRoute
    ctx = services.ctx
    expected = services.operator_token.encode()
    bearer = HTTPBearer(auto_error=False, description="The operator token, from the data dir's operator.token")

    def operator(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
        x_fleetrig_actor: str = Header(default="", description="who acts, for the audit log"),
    ) -> str:
        # Compared as bytes: compare_digest refuses non-ASCII text ('Bearer é' was a 500).
        given = credentials.credentials.strip().encode("utf-8", "replace") if credentials else b""
        if not given or not hmac.compare_digest(given, expected):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong operator token: send 'Authorization: Bearer TOKEN' with the "
                "token from the platform's data dir (operator.token)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        actor = "".join(ch for ch in x_fleetrig_actor.strip()[:100] if ch.isprintable()) or "operator"
        return f"operator:{actor}"

    @app.exception_handler(Refused)
    def refused(_request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)[:2000]})

    app.add_exception_handler(RequestValidationError, lambda _r, exc: _validation_answer(exc))  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_answer)  # type: ignore[arg-type]

    @app.get("/api/v1/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "broker_url": services.broker_url}

    @app.get("/api/v1/stats", responses=_errors())
    def stats(_: str = Depends(operator)) -> dict[str, Any]:
        return {**services.stats(), "states": pms.state_counts(ctx)}

    @app.post("/api/v1/customers", status_code=201, responses=_errors(400, 409, 413))
    def add_customer(body: CustomerIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return pms.add_customer(ctx, body.name, body.tenant_id, actor, dry_run=body.dry_run)

    @app.post("/api/v1/parts", status_code=201, responses=_errors(400, 409, 413))
    def add_part(body: PartIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return pms.add_part(ctx, body.name, actor, dry_run=body.dry_run)

    @app.post("/api/v1/models", status_code=201, responses=_errors(400, 404, 409, 413))
    def add_model(body: ModelIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return pms.add_model(ctx, body.name, body.part, actor, dry_run=body.dry_run)

    @app.get("/api/v1/catalog", responses=_errors())
    def catalog(_: str = Depends(operator)) -> dict[str, Any]:
        return pms.list_catalog(ctx)

    @app.post("/api/v1/provisioning", responses=_errors(400, 404, 413))
    def provision(body: ProvisionIn, actor: str = Depends(operator)) -> dict[str, Any]:
        report = pms.provision(
            ctx, body.serials, customer=body.customer, part=body.part, model=body.model, actor=actor,
            dry_run=body.dry_run, atomic=body.atomic, auth=body.auth, signature_cert=body.signature_cert,
        )
        return report.as_dict()

    @app.post("/api/v1/provisioning/reissue", responses=_errors(400, 413))
    def reissue_many(body: ReissueIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return pms.reissue_many(ctx, body.serials, actor=actor, dry_run=body.dry_run).as_dict()

    @app.post("/api/v1/devices/{serial}/reissue", responses=_errors(400, 404))
    def reissue(serial: SerialPath, actor: str = Depends(operator)) -> dict[str, Any]:
        return pms.reissue(ctx, serial, actor).as_dict()

    @app.get("/api/v1/devices", responses=_errors(404))
    def devices(
        state: DeviceState | None = Query(default=None),
        customer: str | None = Query(default=None, max_length=NAME_CHARS),
        _: str = Depends(operator),
    ) -> list[dict[str, Any]]:
        return pms.list_devices(ctx, state=state, customer=customer)

    @app.get("/api/v1/devices/{serial}", responses=_errors(404))
    def device(serial: SerialPath, _: str = Depends(operator)) -> dict[str, Any]:
        return pms.show_device(ctx, serial)

    @app.post("/api/v1/fleet/claims", responses=_errors(400, 404, 413))
    def claim(body: ClaimIn, actor: str = Depends(operator)) -> dict[str, Any]:
        if body.all == (body.serials is not None):
            raise Refused("give either serials or all=true")
        return fleet.claim(ctx, None if body.all else body.serials, actor=actor, dry_run=body.dry_run)

    @app.get("/api/v1/fleet", responses=_errors())
    def fleet_list(_: str = Depends(operator)) -> list[dict[str, Any]]:
        return fleet.list_fleet(ctx)

    @app.post("/api/v1/devices/{serial}/dispose", responses=_errors(400, 404, 409, 413))
    def dispose(serial: SerialPath, body: DisposeIn, actor: str = Depends(operator)) -> dict[str, Any]:
        if not body.confirm:
            raise Refused("disposal is permanent; send confirm=true (the CLI's --yes) to go ahead")
        return eol.dispose(ctx, serial, reason=body.reason, actor=actor)

    @app.get("/api/v1/disposals", responses=_errors())
    def disposals(_: str = Depends(operator)) -> list[dict[str, Any]]:
        return eol.list_disposals(ctx)

    @app.post("/api/v1/devices/{serial}/cves", status_code=201, responses=_errors(400, 404, 413))
    def add_cve(serial: SerialPath, body: CveIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return tracking.track_cve(ctx, serial, body.cve_id, body.status, actor, dry_run=body.dry_run)

    @app.get("/api/v1/cves", responses=_errors())
    def list_cves(serial: str | None = Query(default=None, max_length=SERIAL_CHARS),
                  status: CveState | None = Query(default=None),
                  _: str = Depends(operator)) -> list[dict[str, Any]]:
        return tracking.list_cves(ctx, serial=serial, status=status)

    @app.post("/api/v1/jobs", status_code=201, responses=_errors(400, 404, 413))
    def create_job(body: JobIn, actor: str = Depends(operator)) -> dict[str, Any]:
        return services.jobs.create(body.method, body.params, actor=actor, serials=body.serials,
                                    all_devices=body.all, customer=body.customer, timeout_s=body.timeout_s,
                                    dry_run=body.dry_run)

    @app.get("/api/v1/jobs/{job_id}", responses=_errors(404))
    def show_job(job_id: Annotated[str, PathParam(max_length=32)], _: str = Depends(operator)) -> dict[str, Any]:
        return services.jobs.show(job_id)

    @app.get("/api/v1/devices/{serial}/telemetry", responses=_errors(404))
    def device_telemetry(serial: SerialPath, limit: int = Query(default=100, ge=1, le=10000),
                         _: str = Depends(operator)) -> dict[str, Any]:
        return telemetry.read_telemetry(ctx, serial, limit)

    @app.get("/api/v1/devices/{serial}/events", responses=_errors(404))
    def device_events(serial: SerialPath, limit: int = Query(default=200, ge=1, le=10000),
                      _: str = Depends(operator)) -> list[dict[str, Any]]:
        return telemetry.read_events(ctx, serial, limit)

    @app.put(
        "/api/v1/repo/{name}", status_code=201, responses=_errors(400, 413), max_body_size=wire.MAX_PACKAGE_BYTES,
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def add_package(name: Annotated[str, PathParam(max_length=128, json_schema_extra=_rule(repo.NAME_RULE))],
                          request: Request,
                          _: str = Depends(operator)) -> dict[str, Any]:
        check_name(name)  # before a byte of the body is read
        with services.store.writer(name) as write:
            async for chunk in request.stream():
                if chunk:
                    await asyncio.to_thread(write, chunk)
        info = await asyncio.to_thread(services.store.info, name)
        return {**info, "url": services.repo_url + info["name"]}

    @app.get("/api/v1/repo/{name}", responses=_errors(400, 404))
    def show_package(name: Annotated[str, PathParam(max_length=128, json_schema_extra=_rule(repo.NAME_RULE))],
                     _: str = Depends(operator)) -> dict[str, Any]:
        path = services.store.path(name)
        return {"name": path.name, "size": path.stat().st_size, "url": services.repo_url + path.name}

    @app.get("/api/v1/repo", responses=_errors())
    def list_packages(_: str = Depends(operator)) -> list[dict[str, Any]]:
        return [{**p, "url": services.repo_url + p["name"]} for p in services.store.list()]

    @app.get("/api/v1/audit", responses=_errors())
    def audit_log(
        serial: str | None = Query(default=None, max_length=SERIAL_CHARS),
        limit: int = Query(default=200, ge=1, le=10000),
        bulk: bool = Query(default=False, description="With serial: also the bulk operations naming it."),
        _: str = Depends(operator),
    ) -> list[dict[str, Any]]:
        with ctx.registry.session() as s:
            query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if serial and bulk:
                # Bulk operations (provisioning, claims) name their serials in the detail.
                query = query.where(or_(AuditEvent.serial == serial,
                                        cast(AuditEvent.detail, String).contains(f'"{serial}"')))
            elif serial:
                query = query.where(AuditEvent.serial == serial)
            return [
                {"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "serial": e.serial,
                 "detail": e.detail}
                for e in s.scalars(query)
            ]

    return app
