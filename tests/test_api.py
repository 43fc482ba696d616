"""REST API: the operator token guards everything but health; OpenAPI is served."""

from __future__ import annotations

import httpx


def test_token_required(fleetrig_platform):
    api = fleetrig_platform.platform.api_url
    assert httpx.get(f"{api}/api/v1/health").json()["ok"] is True
    for path in ("/api/v1/devices", "/api/v1/fleet", "/api/v1/audit", "/api/v1/stats"):
        response = httpx.get(api + path)
        assert response.status_code == 401 and "operator token" in response.json()["detail"]
        assert httpx.get(api + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = httpx.post(f"{api}/api/v1/customers", json={"name": "X", "tenant_id": "x"})
    assert response.status_code == 401
    good = {"Authorization": f"Bearer {fleetrig_platform.platform.token}"}
    assert httpx.get(f"{api}/api/v1/devices", headers=good).json() == []
    assert httpx.get(f"{api}/docs").status_code == 200
    spec = httpx.get(f"{api}/openapi.json").json()
    assert "/api/v1/provisioning" in spec["paths"]


def test_bad_bodies_are_refused(fleetrig_platform, fleetrig_catalog):
    api = fleetrig_platform.platform.api_url
    good = {"Authorization": f"Bearer {fleetrig_platform.platform.token}"}
    response = httpx.post(f"{api}/api/v1/provisioning", headers=good, json={"serials": [], "customer": "ACME"})
    assert response.status_code == 422
    response = httpx.post(f"{api}/api/v1/provisioning", headers=good, content=b"not json")
    assert response.status_code == 422
    response = httpx.post(f"{api}/api/v1/devices/NOPE-1/dispose", headers=good, json={"reason": "x"})
    assert response.status_code == 400 and "confirm=true" in response.json()["detail"]
    response = httpx.post(f"{api}/api/v1/fleet/claims", headers=good, json={"serials": ["A-1"], "all": True})
    assert response.status_code == 400
    response = httpx.post(f"{api}/api/v1/provisioning", headers=good,
                          json={"serials": ["A-001"], "customer": "ACME", "part": "evk", "auth": "psk"})
    assert response.status_code == 422 and "body.auth: Input should be 'x509' or 'token'" in response.json()["detail"]
    response = httpx.post(f"{api}/api/v1/provisioning", headers=good,
                          json={"serials": ["A-001"], "customer": "ACME", "part": "evk",
                                "signature_cert": "not a cert"})
    assert response.status_code == 400 and "signature certificate" in response.json()["detail"]
