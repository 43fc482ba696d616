"""The Python library for operators: every platform operation, over the REST API.

    from harness.client.rest import Client
    client = Client.from_data_dir(".fleetrig")
    report = client.provision(["SN1", "SN2"], customer="ACME", part="imx8-som")

It is what the CLI uses. Refusals raise harness.errors.Refused with the platform's message.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from harness.datadir import DEFAULT_DATA_DIR, read_operator_token, read_state
from harness.errors import Refused


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class PlatformUnreachable(Refused):
    """No answer from the platform: it is down, or it went down before answering."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=503)


class Client:
    def __init__(self, api_url: str, token: str, *, actor: str | None = None, timeout: float = 120) -> None:
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {token}", "X-Fleetrig-Actor": actor or default_actor()},
            timeout=timeout,
        )

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, **kwargs: Any) -> Client:
        data_dir = Path(data_dir)
        state = read_state(data_dir)
        if not state.get("api_url"):
            raise Refused(f"no platform state in {data_dir}: start one with 'fleetrig serve --data-dir {data_dir}'")
        try:
            token = read_operator_token(data_dir)
        except OSError as exc:
            raise Refused(f"cannot read the operator token in {data_dir}: {exc.strerror}") from None
        return cls(state["api_url"], token, **kwargs)

    @classmethod
    def from_env(cls, api: str | None = None, token: str | None = None, data_dir: str | None = None) -> Client:
        """Find the platform: an API URL and token (arguments, else FLEETRIG_API/FLEETRIG_TOKEN), or a data dir.

        An API URL and token win over any data dir. One without the other is refused, naming
        the missing half: falling back to ./.fleetrig would quietly talk to another platform.
        """
        api = api or os.environ.get("FLEETRIG_API") or None
        token = token or os.environ.get("FLEETRIG_TOKEN") or None
        if api and token:
            return cls(api, token)
        if api:
            raise Refused(f"--api {api} needs the operator token too: give --token TOKEN (or FLEETRIG_TOKEN)")
        if token:
            raise Refused("--token needs the platform's URL too: give --api URL (or FLEETRIG_API)")
        data_dir = data_dir or os.environ.get("FLEETRIG_DATA_DIR") or DEFAULT_DATA_DIR
        return cls.from_data_dir(data_dir)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, "/api/v1" + path, **kwargs)
        except httpx.HTTPError as exc:
            raise PlatformUnreachable(f"cannot reach the platform at {self.api_url}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            if isinstance(detail, list):  # request validation errors
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
            raise Refused(str(detail), status=response.status_code)
        return response.json()

    # PMS
    def add_customer(self, name: str, tenant_id: str, *, dry_run: bool = False) -> dict[str, Any]:
        return self._call("POST", "/customers", json={"name": name, "tenant_id": tenant_id, "dry_run": dry_run})

    def add_part(self, name: str, *, dry_run: bool = False) -> dict[str, Any]:
        return self._call("POST", "/parts", json={"name": name, "dry_run": dry_run})

    def add_model(self, name: str, part: str, *, dry_run: bool = False) -> dict[str, Any]:
        return self._call("POST", "/models", json={"name": name, "part": part, "dry_run": dry_run})

    def catalog(self) -> dict[str, Any]:
        return self._call("GET", "/catalog")

    def provision(self, serials: list[str], *, customer: str, part: str, model: str | None = None,
                  dry_run: bool = False, atomic: bool = False, auth: str = "x509",
                  signature_cert: str | None = None) -> dict[str, Any]:
        return self._call("POST", "/provisioning", json={
            "serials": serials, "customer": customer, "part": part, "model": model, "dry_run": dry_run,
            "atomic": atomic, "auth": auth, "signature_cert": signature_cert,
        })

    def reissue(self, serial: str) -> dict[str, Any]:
        return self._call("POST", f"/devices/{serial}/reissue")

    def reissue_many(self, serials: list[str], *, dry_run: bool = False) -> dict[str, Any]:
        """New agent.env files for many provisioned devices; one result per serial, as provision."""
        return self._call("POST", "/provisioning/reissue", json={"serials": serials, "dry_run": dry_run})

    def devices(self, state: str | None = None, customer: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"state": state, "customer": customer}.items() if v}
        return self._call("GET", "/devices", params=params)

    def device(self, serial: str) -> dict[str, Any]:
        return self._call("GET", f"/devices/{serial}")

    # Fleet
    def claim(self, serials: list[str] | None = None, *, all: bool = False, dry_run: bool = False) -> dict[str, Any]:
        return self._call("POST", "/fleet/claims", json={"serials": serials, "all": all, "dry_run": dry_run})

    def fleet(self) -> list[dict[str, Any]]:
        return self._call("GET", "/fleet")

    # End of life
    def dispose(self, serial: str, reason: str, *, confirm: bool) -> dict[str, Any]:
        return self._call("POST", f"/devices/{serial}/dispose", json={"reason": reason, "confirm": confirm})

    def disposals(self) -> list[dict[str, Any]]:
        return self._call("GET", "/disposals")

    def track_cve(self, serial: str, cve_id: str, status: str = "open", *, dry_run: bool = False) -> dict[str, Any]:
        return self._call("POST", f"/devices/{serial}/cves",
                          json={"cve_id": cve_id, "status": status, "dry_run": dry_run})

    def cves(self, serial: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"serial": serial, "status": status}.items() if v}
        return self._call("GET", "/cves", params=params)

    def audit(self, serial: str | None = None, limit: int = 200, *, bulk: bool = False) -> list[dict[str, Any]]:
        """The audit log, newest first; with `serial` its events, and with `bulk` also the bulk
        operations (provisioning, claims) that named it."""
        params: dict[str, Any] = {"limit": limit}
        if serial:
            params["serial"] = serial
            params["bulk"] = bulk
        return self._call("GET", "/audit", params=params)

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    # Device management
    def create_job(self, method: str, params: dict[str, Any] | None = None, *, serials: list[str] | None = None,
                   all: bool = False, customer: str | None = None, timeout_s: float | None = None,
                   dry_run: bool = False) -> dict[str, Any]:
        """A job for its targets; a dry run returns the targets it would reach and stores nothing."""
        return self._call("POST", "/jobs", json={"method": method, "params": params or {}, "serials": serials,
                                                  "all": all, "customer": customer, "timeout_s": timeout_s,
                                                  "dry_run": dry_run})

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}")

    def wait_job(self, job_id: str, timeout: float = 600.0, interval: float = 0.25) -> dict[str, Any]:
        """Poll a job until every target has a result, or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["done"] or time.monotonic() > deadline:
                return job
            time.sleep(interval)

    def telemetry(self, serial: str, limit: int = 100) -> dict[str, Any]:
        return self._call("GET", f"/devices/{serial}/telemetry", params={"limit": limit})

    def events(self, serial: str, limit: int = 200) -> list[dict[str, Any]]:
        return self._call("GET", f"/devices/{serial}/events", params={"limit": limit})

    def add_package(self, path: str | Path, name: str | None = None) -> dict[str, Any]:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise Refused(f"cannot read {path}: {exc.strerror}") from None
        return self._call("PUT", f"/repo/{name or path.name}", content=data,
                          headers={"Content-Type": "application/octet-stream"})

    def package(self, name: str) -> dict[str, Any] | None:
        """A package's name, size and URL; None when the repository has none of that name."""
        try:
            return self._call("GET", f"/repo/{name}")
        except Refused as exc:
            if exc.status == 404:
                return None
            raise

    def packages(self) -> list[dict[str, Any]]:
        return self._call("GET", "/repo")
