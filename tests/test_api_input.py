"""REST input, attacked through the real API: body size, JSON depth, credentials, names, echoes.

Each test sends what the abuse report sent and checks the outcome in the registry: nothing
stored, nothing sent, a 4xx that names the field and does not echo the value.
"""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
from sqlalchemy import func, select

from agent import wire
from harness.errors import Refused
from harness.platform import pms, tracking
from harness.platform.api import DEFAULT_MAX_BODY_BYTES
from harness.platform.models import Customer, Device, Job
from tests.conftest import boot, provision


def _auth(platform) -> dict[str, str]:
    return {"Authorization": f"Bearer {platform.platform.token}"}


def _count(platform, model) -> int:
    with platform.ctx.registry.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def test_deep_job_params_are_refused_before_the_job_is_stored_or_sent(
        fleetrig_platform, fleetrig_catalog, tmp_path):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["DJ-001"])
    fleet = await boot(envs, tmp_path / "devices")
    api = fleetrig_platform.platform.api_url
    agent = fleet.devices["DJ-001"].agent
    for depth in (300, 40):
        body = {"method": "triggerconfig", "params": {"cmd": "set", "x": _nested(depth)}, "serials": ["DJ-001"]}
        response = await asyncio.to_thread(httpx.post, f"{api}/api/v1/jobs", headers=_auth(fleetrig_platform),
                                           json=body, timeout=30)
        assert response.status_code == 422, response.text
        assert f"nested deeper than {wire.MAX_JSON_DEPTH} levels" in response.json()["detail"]
    assert _count(fleetrig_platform, Job) == 0
    # Nothing reached the device either: a good job still goes through afterwards.
    done = await asyncio.to_thread(fleetrig_platform.client.create_job, "triggerconfig",
                                   {"cmd": "get", "path": "publishIntervalSeconds"}, serials=["DJ-001"])
    assert _count(fleetrig_platform, Job) == 1 and done["results"][0]["serial"] == "DJ-001"
    assert agent.connected
    await fleet.stop()


def test_body_over_the_limit_is_refused_by_content_length_before_reading(fleetrig_platform):
    """Content-Length over the limit: 413 at once, with the body never sent (the server does not wait)."""
    api = httpx.URL(fleetrig_platform.platform.api_url)
    size = 100 * 1024 * 1024
    request = (
        f"POST /api/v1/customers HTTP/1.1\r\nHost: {api.host}\r\n"
        f"Authorization: Bearer {fleetrig_platform.platform.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    with socket.create_connection((api.host, api.port), timeout=10) as sock:
        sock.sendall(request + b'{"name": "')
        answer = b""
        while not answer.endswith(b"Too Large"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert body == b"Content Too Large"
    assert _count(fleetrig_platform, Customer) == 0


def test_chunked_body_is_counted_as_it_streams(fleetrig_platform):
    api = fleetrig_platform.platform.api_url
    sent = 0

    def chunks():
        nonlocal sent
        piece = b'{"name": "' + b"x" * (256 * 1024 - 10)
        yield piece
        sent += len(piece)
        while sent < 3 * DEFAULT_MAX_BODY_BYTES:  # bounded: stops by itself
            yield b"x" * 256 * 1024
            sent += 256 * 1024

    try:
        response = httpx.post(f"{api}/api/v1/customers", headers={**_auth(fleetrig_platform),
                              "Content-Type": "application/json"}, content=chunks(), timeout=30)
    except httpx.HTTPError:  # the server may close the connection while the client still sends
        response = None
    if response is not None:
        assert response.status_code == 413
        assert response.json()["detail"] == f"request body larger than {DEFAULT_MAX_BODY_BYTES} bytes"
    assert _count(fleetrig_platform, Customer) == 0


def test_a_large_bad_body_is_not_echoed(fleetrig_platform):
    api = fleetrig_platform.platform.api_url
    huge = "A" * (DEFAULT_MAX_BODY_BYTES // 2)
    for body in (b"{" + huge.encode(), json.dumps({"name": huge, "tenant_id": "t"}).encode(),
                 json.dumps({"name": 5, "tenant_id": [huge]}).encode()):
        response = httpx.post(f"{api}/api/v1/customers", headers={**_auth(fleetrig_platform),
                              "Content-Type": "application/json"}, content=body, timeout=30)
        assert response.status_code == 422, response.text[:300]
        assert len(response.content) < 2000 and huge[:100] not in response.text
        detail = response.json()["detail"]
        assert "body" in detail
    response = httpx.post(f"{api}/api/v1/customers", headers=_auth(fleetrig_platform),
                          json={"name": "OK", "tenant_id": 5})
    assert response.status_code == 422
    assert response.json()["errors"] == [{"loc": ["body", "tenant_id"], "msg": "Input should be a valid string",
                                          "type": "string_type"}]


@pytest.mark.parametrize("header", [
    "Bearer é", "Bearer \u00ff\u00fe", "Bearer", "Basic dXNlcjpwYXNz", "token", "Bearer a b",
    "Bearer " + "x" * 10000, "\u00e9\u00e9 \u00e9",
])
def test_malformed_credentials_are_401(fleetrig_platform, header):
    api = fleetrig_platform.platform.api_url
    raw = header.encode("latin-1")
    response = httpx.get(f"{api}/api/v1/devices", headers=[(b"Authorization", raw)])
    assert response.status_code == 401, response.text
    assert "operator token" in response.json()["detail"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_utf8_credential_bytes_are_401(fleetrig_platform):
    api = fleetrig_platform.platform.api_url
    response = httpx.get(f"{api}/api/v1/stats", headers=[(b"Authorization", "Bearer é".encode())])
    assert response.status_code == 401


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\t"])
def test_names_with_a_trailing_newline_are_refused(fleetrig_platform, fleetrig_catalog, suffix):
    client = fleetrig_platform.client
    api, auth = fleetrig_platform.platform.api_url, _auth(fleetrig_platform)
    report = client.provision(["SN-0001", "SN-0001" + suffix], customer=fleetrig_catalog.customer,
                              part=fleetrig_catalog.part)
    assert [r["ok"] for r in report["results"]] == [True, False]
    assert "malformed serial" in report["results"][1]["error"]
    with fleetrig_platform.ctx.registry.session() as s:
        assert list(s.scalars(select(Device.serial))) == ["SN-0001"]
    for path, body in (("/api/v1/customers", {"name": "ACME2" + suffix, "tenant_id": "t-2"}),
                       ("/api/v1/customers", {"name": "ACME3", "tenant_id": "t-3" + suffix}),
                       ("/api/v1/parts", {"name": "evk2" + suffix}),
                       ("/api/v1/models", {"name": "m2" + suffix, "part": "evk"}),
                       ("/api/v1/devices/SN-0001/cves", {"cve_id": "CVE-2024-1234" + suffix})):
        response = httpx.post(api + path, headers=auth, json=body)
        assert response.status_code == 400, (path, response.text)
        assert "malformed" in response.json()["detail"] or "not a CVE id" in response.json()["detail"]
    # The operations refuse them too, whoever calls them (the schema is not their only guard).
    ctx = fleetrig_platform.ctx
    for call in (lambda: pms.add_customer(ctx, "ACME2" + suffix, "t-2", "test"),
                 lambda: pms.add_customer(ctx, "ACME2", "t-2" + suffix, "test"),
                 lambda: pms.add_part(ctx, "evk2" + suffix, "test"),
                 lambda: tracking.track_cve(ctx, "SN-0001", "CVE-2024-1234" + suffix, "open", "test")):
        with pytest.raises(Refused, match=r"malformed|not a CVE id"):
            call()
    assert _count(fleetrig_platform, Customer) == 1
    response = httpx.put(f"{api}/api/v1/repo/pkg.bin%0A", headers=auth, content=b"data")
    assert response.status_code == 400 and "package name 'pkg.bin\\n' is not allowed" in response.json()["detail"]
    with pytest.raises(Refused, match="package name"):
        fleetrig_platform.platform.store.add("pkg.bin" + suffix, [b"data"])
    assert fleetrig_platform.platform.store.list() == []


def test_package_upload_streams_to_disk_under_its_own_limit(fleetrig_platform):
    api, auth = fleetrig_platform.platform.api_url, _auth(fleetrig_platform)
    # Bigger than the JSON body limit, far under the package limit: accepted.
    data = b"\x7fELF" + b"\0" * (DEFAULT_MAX_BODY_BYTES + 1024)
    response = httpx.put(f"{api}/api/v1/repo/big.bin", headers=auth, content=data, timeout=60)
    assert response.status_code == 201, response.text
    assert response.json()["size"] == len(data)
    assert (fleetrig_platform.platform.store.directory / "big.bin").stat().st_size == len(data)
    response = httpx.put(f"{api}/api/v1/repo/empty.bin", headers=auth, content=b"")
    assert response.status_code == 400 and "empty" in response.json()["detail"]
    assert [p["name"] for p in fleetrig_platform.platform.store.list()] == ["big.bin"]


def test_openapi_declares_bearer_and_each_routes_errors(fleetrig_platform):
    api = fleetrig_platform.platform.api_url
    spec = httpx.get(f"{api}/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path == "/api/v1/health":
                assert "security" not in operation
                continue
            assert operation["security"], (method, path)
            codes = set(operation["responses"])
            assert {"401", "422"} <= codes, (method, path, codes)
            assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorOut"}
            if "requestBody" in operation:
                assert "413" in codes, (method, path)
    assert spec["paths"]["/api/v1/jobs/{job_id}"]["get"]["responses"]["404"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_docs_are_served_offline(fleetrig_platform):
    api = fleetrig_platform.platform.api_url
    page = httpx.get(f"{api}/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assets = [part.split('"')[0] for part in page.text.split('src="')[1:]] + \
             [part.split('"')[0] for part in page.text.split('href="')[1:]]
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    for asset in assets:
        response = httpx.get(api + asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset


def test_device_list_filters_refuse_what_matches_nothing_by_mistake(fleetrig_platform, fleetrig_catalog):
    """An unknown state or customer is a typo, not an empty fleet: refused, naming the choices."""
    client = fleetrig_platform.client
    client.provision(["FL-0001"], customer=fleetrig_catalog.customer, part=fleetrig_catalog.part)
    assert [d["serial"] for d in client.devices(state="provisioned", customer=fleetrig_catalog.customer)] \
        == ["FL-0001"]
    with pytest.raises(Refused) as bogus:
        client.devices(state="bogus")
    assert bogus.value.status == 422 and "state" in str(bogus.value)
    with pytest.raises(Refused) as nobody:
        client.devices(customer="NOBODY")
    assert nobody.value.status == 404
    assert str(nobody.value) == "unknown customer 'NOBODY'; see 'fleetrig pms customer list'"
