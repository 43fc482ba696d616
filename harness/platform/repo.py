"""The platform's package repository: OTA packages served over HTTPS.

Operators add files through the REST API (`fleetrig repo add FILE`); devices fetch them from
`https://HOST:PORT/repo/NAME` with the platform CA, optionally behind HTTP basic auth (the
seed's server username/password). Every device trusts this repository from provisioning on
(agent.env's REPO_URL); any other source must be added to trustedRepositories first.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse

from harness.errors import NotFound, Refused

MAX_PACKAGE_BYTES = 256 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_name(name: str) -> str:
    if not _NAME.match(name or "") or ".." in name:
        raise Refused(f"package name {name!r} is not allowed: 1-128 characters from letters, digits . _ + -")
    return name


class PackageStore:
    """The files behind the repository, in DATA_DIR/repo."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        path = self.directory / check_name(name)
        if not path.is_file():
            raise NotFound(f"no package {name!r} in the repository")
        return path

    def add(self, name: str, chunks: list[bytes] | bytes) -> dict[str, Any]:
        check_name(name)
        data = chunks if isinstance(chunks, bytes) else b"".join(chunks)
        if len(data) > MAX_PACKAGE_BYTES:
            raise Refused(f"package {name} is larger than {MAX_PACKAGE_BYTES} bytes")
        if not data:
            raise Refused(f"package {name} is empty")
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.directory / name)
        return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def list(self) -> list[dict[str, Any]]:
        return [{"name": p.name, "size": p.stat().st_size} for p in sorted(self.directory.iterdir())
                if p.is_file() and not p.name.startswith(".")]

    def remove(self, name: str) -> None:
        self.path(name).unlink()


def create_repo_app(store: PackageStore, username: str | None, password: str | None) -> FastAPI:
    """The HTTPS app devices fetch from: GET /repo/NAME, with basic auth when configured."""
    import base64

    app = FastAPI(title="fleetrig package repository", docs_url=None, redoc_url=None, openapi_url=None)

    def authorized(request: Request) -> bool:
        if not username:
            return True
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, secret = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(user, username) and hmac.compare_digest(secret, password or "")

    @app.get("/repo/{name}")
    def fetch(name: str, request: Request) -> FileResponse:
        if not authorized(request):
            raise HTTPException(401, "repository credentials required", headers={"WWW-Authenticate": "Basic"})
        try:
            path = store.path(name)
        except Refused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    return app
