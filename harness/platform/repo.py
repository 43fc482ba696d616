"""The platform's package repository: OTA packages served over HTTPS.

Operators add files through the REST API (`fleetrig repo add FILE`); devices fetch them from
`https://HOST:PORT/repo/NAME` with the platform CA, optionally behind HTTP basic auth (the
seed's server username/password). Every device trusts this repository from provisioning on
(agent.env's REPO_URL); any other source must be added to trustedRepositories first.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse

from agent.wire import MAX_PACKAGE_BYTES, shorten
from harness.errors import NotFound, Refused

#: A package name, unanchored (the REST API declares it in its schema); no ".." either.
NAME_RULE = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}"
#: A full match (`\Z`, not `$`, which would let "pkg.bin\n" in).
_NAME = re.compile(NAME_RULE + r"\Z")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise Refused(f"package name {shorten(name)} is not allowed: 1-128 characters from letters, digits . _ + -")
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

    def add(self, name: str, chunks: Iterable[bytes]) -> dict[str, Any]:
        """Store a package from its chunks, written to disk as they come (never held whole in memory).

        The name is checked before a byte is written; the file appears under its name only when
        complete (rename), so a device never fetches half a package.
        """
        with self.writer(name) as write:
            for chunk in chunks:
                write(chunk)
        return self.info(name)

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[Callable[[bytes], None]]:
        """A `write(chunk)` for a new package; the package is published when the block ends."""
        check_name(name)
        tmp = self.directory / f".{name}.tmp"
        size = 0
        try:
            with tmp.open("wb") as handle:
                def write(chunk: bytes) -> None:
                    nonlocal size
                    size += len(chunk)
                    if size > MAX_PACKAGE_BYTES:
                        raise Refused(f"package {name} is larger than {MAX_PACKAGE_BYTES} bytes", status=413)
                    handle.write(chunk)

                yield write
            if size == 0:
                raise Refused(f"package {name} is empty")
            os.replace(tmp, self.directory / name)
        finally:
            tmp.unlink(missing_ok=True)

    def info(self, name: str) -> dict[str, Any]:
        path = self.path(name)
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return {"name": name, "size": path.stat().st_size, "sha256": digest.hexdigest()}

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
