"""The platform: registry, CA, built-in broker, device gateway and REST API in one process.

`Platform` runs on one asyncio loop (what `fleetrig serve` does). `PlatformThread` runs the
same in a background thread, for tests and for the demo, so a caller can drive it with
blocking calls.

The data dir holds everything that must survive a restart: the registry (SQLite), the CA,
the broker's certificate, the operator token, and the ports. A port given as 0 means "a free
one at the first start, then the same one": every device's agent.env names the broker's and the
package repository's addresses, so a platform that came back elsewhere would strand its fleet.
An explicit non-zero port overrides the kept one (and is kept from then on). A port that is
busy is refused with one line naming the server and the port, before anything listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from harness.broker.server import BrokerHooks, BrokerLimits, FleetBroker, broker_config
from harness.datadir import STATE_FILE, TOKEN_FILE, read_operator_token, read_state
from harness.errors import Refused
from harness.platform import telemetry
from harness.platform.api import DEFAULT_MAX_BODY_BYTES, ApiServices, create_app
from harness.platform.context import PlatformContext
from harness.platform.db import Registry, database_url
from harness.platform.gateway import DeviceGateway
from harness.platform.identities import Identities
from harness.platform.jobs import JobEngine
from harness.platform.lock import DataDirLock
from harness.platform.pki import CertificateAuthority, default_server_hosts
from harness.platform.repo import PackageStore, create_repo_app

log = logging.getLogger("fleetrig.platform")

DEFAULT_HTTP_PORT = 8080
DEFAULT_MQTTS_PORT = 8883
DEFAULT_REPO_PORT = 8443


@dataclass
class PlatformConfig:
    data_dir: Path
    db_url: str | None = None
    host: str = "127.0.0.1"
    #: The host name devices use to reach the broker (written into agent.env).
    public_host: str | None = None
    http_port: int | None = None
    mqtts_port: int | None = None
    mqtt_port: int | None = None
    repo_port: int | None = None
    #: HTTP basic auth for the package repository (the seed's server username/password).
    repo_user: str | None = None
    repo_password: str | None = None
    #: Days of telemetry and device events kept; older rows are pruned hourly.
    retention_days: int = telemetry.DEFAULT_RETENTION_DAYS
    #: Bounds the broker enforces per connection (packet size, connect deadline, keepalive, retained).
    broker_limits: BrokerLimits | None = None
    #: Largest REST request body (bytes); bigger ones are refused with 413 before they are read.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _first_line(exc: BaseException | None) -> str:
    """An exception as one short line: libraries put tracebacks and hints on the lines after."""
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


class Platform:
    """One running platform. `await start()`, then `await stop()`."""

    def __init__(self, config: PlatformConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.broker: FleetBroker | None = None
        self.gateway: DeviceGateway | None = None
        self.ctx: PlatformContext | None = None
        self.api_url = ""
        self.broker_url = ""
        self.token = ""
        self.repo_url = ""
        self.jobs: JobEngine | None = None
        self.store: PackageStore | None = None
        self._servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
        self._sockets: list[socket.socket] = []
        self._lock = DataDirLock(self.data_dir)
        self.plain_mqtt_port: int | None = None
        self._retention: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- set-up ---------------------------------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.data_dir, 0o700)
        except OSError as exc:
            raise Refused(f"data dir {self.data_dir}: {exc.strerror}") from None
        self._lock.acquire()
        token_path = self.data_dir / TOKEN_FILE
        if not token_path.exists():
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        self.token = read_operator_token(self.data_dir)

    def _port(self, saved: dict[str, Any], key: str, given: int | None, default: int) -> int:
        """The port to listen on: given (non-zero), else the one kept from the last start, else
        0 (any free one) when given as 0, else the default."""
        if given:
            return given
        kept = saved.get(key)
        if isinstance(kept, int) and 0 < kept < 65536:
            return kept
        return 0 if given == 0 else default

    def _listen(self, what: str, key: str, port: int, saved: dict[str, Any], host: str | None = None) -> socket.socket:
        """A listening socket for one server, or a one-line refusal naming the server and the port."""
        host = host or self.config.host
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and amqtt do
            sock.bind((host, port))
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            hint = ""
            if port and saved.get(key) == port:
                hint = (f" (the port kept in {self.data_dir / STATE_FILE} from the last start; free it, or move "
                        f"with --{key.replace('_', '-')} N)")
            raise Refused(f"the {what} cannot listen on {_url_host(host)}:{port}: {exc.strerror}{hint}") from None
        sock.setblocking(False)
        self._sockets.append(sock)
        return sock

    async def start(self) -> None:
        """Start every part, or none: a refusal stops what had started and lets the data dir go."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._prepare_data_dir()
        config, saved = self.config, read_state(self.data_dir)
        # Every port is taken before anything starts: a busy one refuses the start, nothing half up.
        api_sock = self._listen("REST API", "http_port",
                                self._port(saved, "http_port", config.http_port, DEFAULT_HTTP_PORT), saved)
        repo_sock = self._listen("package repository", "repo_port",
                                 self._port(saved, "repo_port", config.repo_port, DEFAULT_REPO_PORT), saved)
        mqtts_port = self._probe("MQTT broker", "mqtts_port",
                                 self._port(saved, "mqtts_port", config.mqtts_port, DEFAULT_MQTTS_PORT), saved)
        mqtt_port = None
        if config.mqtt_port is not None:
            mqtt_port = self._probe("plain MQTT listener", "mqtt_port",
                                    self._port(saved, "mqtt_port", config.mqtt_port, 0), saved, host="127.0.0.1")
        registry = Registry(database_url(self.data_dir, config.db_url))
        ca = CertificateAuthority(self.data_dir / "pki")
        public_host = config.public_host or config.host
        hosts = sorted({*default_server_hosts(), public_host, config.host} - {"0.0.0.0", "::"})
        certfile, keyfile = ca.server_certificate(self.data_dir / "pki", hosts)
        identities = Identities()
        self.ctx = PlatformContext(registry=registry, identities=identities, ca=ca, broker_url="",
                                   drop_session=self._drop_threadsafe)
        with registry.session() as s:
            count = identities.load(s)
        hooks = BrokerHooks()
        self.broker = FleetBroker(
            broker_config(authenticator=identities, hooks=hooks, host=config.host, mqtts_port=mqtts_port,
                          certfile=certfile, keyfile=keyfile, cafile=ca.cert_path, mqtt_port=mqtt_port),
            hooks, self.config.broker_limits,
        )
        hooks.extra["broker"] = self.broker
        self.gateway = DeviceGateway(self.ctx, self.broker.publish)
        hooks.on_message = self.gateway.on_message
        hooks.on_session = self.gateway.on_session
        await self.gateway.start()
        try:
            await self.broker.start()
        except Exception as exc:  # taken in the moment since the probe
            raise Refused(f"the MQTT broker cannot listen on {_url_host(config.host)}:{mqtts_port}: "
                          f"{_first_line(exc)}") from None
        mqtts_port = self.broker.bound_port("default")
        self.broker_url = f"mqtts://{public_host}:{mqtts_port}"
        self.ctx.broker_url = self.broker_url
        self.plain_mqtt_port = self.broker.bound_port("plain") if mqtt_port is not None else None
        self.store = PackageStore(self.data_dir / "repo")
        repo_app = create_repo_app(self.store, config.repo_user, config.repo_password)
        repo_port = await self._serve(repo_app, repo_sock, certfile=certfile, keyfile=keyfile)
        self.repo_url = f"https://{_url_host(public_host)}:{repo_port}/repo/"
        self.ctx.repo_url = self.repo_url
        self.jobs = JobEngine(self.ctx, self.broker.publish, self.broker.is_connected)
        self.gateway.jobs = self.jobs
        await self.jobs.start()
        self._retention = asyncio.create_task(self._prune_forever())
        services = ApiServices(ctx=self.ctx, jobs=self.jobs, store=self.store, repo_url=self.repo_url,
                               operator_token=self.token, stats=self.stats, broker_url=self.broker_url,
                               max_body_bytes=config.max_body_bytes)
        http_port = await self._serve(create_app(services), api_sock)
        self.api_url = f"http://{_url_host(config.host)}:{http_port}"
        ports = {"http_port": http_port, "mqtts_port": mqtts_port, "repo_port": repo_port}
        if self.plain_mqtt_port:
            ports["mqtt_port"] = self.plain_mqtt_port
        self._save_state(**ports)
        log.info("platform up: %s, %s, %d identities", self.api_url, self.broker_url, count)

    async def _prune_forever(self) -> None:
        """Telemetry and event retention: prune at start, then every hour."""
        assert self.ctx is not None
        while True:
            try:
                removed = await asyncio.to_thread(telemetry.prune, self.ctx, self.config.retention_days)
                if removed:
                    log.info("retention: removed %d telemetry rows older than %d days", removed,
                             self.config.retention_days)
            except Exception:
                log.exception("telemetry retention failed")
            await asyncio.sleep(3600)

    def _probe(self, what: str, key: str, port: int, saved: dict[str, Any], host: str | None = None) -> int:
        """Check that a port is free for a server that binds it itself (amqtt); return the port to use."""
        sock = self._listen(what, key, port, saved, host)
        self._sockets.remove(sock)
        with sock:
            return int(sock.getsockname()[1])

    async def _serve(self, app: Any, sock: socket.socket, *, certfile: Path | None = None,
                     keyfile: Path | None = None) -> int:
        """Run one uvicorn server on the platform's loop and its listening socket; return the port."""
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                ssl_certfile=str(certfile) if certfile else None,
                                ssl_keyfile=str(keyfile) if keyfile else None)
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._sockets.remove(sock)  # uvicorn's from now on: it closes it when it stops
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self._servers.append((server, task))
        while not server.started:
            if task.done():
                raise Refused(f"the server on {self.config.host}:{sock.getsockname()[1]} did not start: "
                              f"{_first_line(task.exception()) if not task.cancelled() else 'cancelled'}")
            await asyncio.sleep(0.02)
        return int(sock.getsockname()[1])

    def _save_state(self, **ports: int) -> None:
        """platform.json, replaced whole: a kill while it is written leaves the previous one."""
        state = {**ports, "api_url": self.api_url, "broker_url": self.broker_url, "pid": os.getpid()}
        path = self.data_dir / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.tmp")
        with open(tmp, "w") as handle:
            handle.write(json.dumps(state, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    async def stop(self) -> None:
        """Stop whatever is running and let the data dir go; calling it again does nothing more."""
        for sock in self._sockets:
            sock.close()  # taken for servers that never started
        self._sockets = []
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        for server, task in self._servers:
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
        self._servers = []
        if self.jobs is not None:
            await self.jobs.stop()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.shutdown()
        if self.gateway is not None:
            await self.gateway.stop()
        if self.ctx is not None:
            self.ctx.registry.close()
        self._lock.release()

    # -- broker control ---------------------------------------------------------------------------

    async def _drop(self, serial: str, only_role: str | None = None) -> None:
        if self.broker is not None:
            await self.broker.drop(serial, role=only_role)

    def _drop_threadsafe(self, serial: str, only_role: str | None = None) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._drop(serial, only_role), self._loop)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            with contextlib.suppress(Exception):
                future.result(timeout=10)

    def stats(self) -> dict[str, Any]:
        assert self.broker is not None and self.gateway is not None
        g = self.gateway.stats
        return {
            "sessions_connected": self.broker.connected_count(),
            "identities": len(self.ctx.identities) if self.ctx else 0,
            "registered": g.registered, "registration_refused": g.registration_refused,
            "births": g.births, "malformed": g.malformed, "batches": g.batches,
            "broker": dataclasses.asdict(self.broker.stats),
            "batches_retried": g.batches_retried, "failed_items": g.failed_items,
            "malformed_by_device": dict(g.malformed_by_device.most_common(20)),
            "failed_by_device": dict(g.failed_by_device.most_common(20)),
        }


class PlatformThread:
    """A Platform on its own event loop in a background thread (tests, demo, benchmarks)."""

    def __init__(self, config: PlatformConfig) -> None:
        self.platform = Platform(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleetrig-platform", daemon=True)

    def start(self) -> Platform:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.platform.start(), self._loop).result(timeout=60)
        return self.platform

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    def stop(self) -> None:
        """Stop the platform and its loop; calling it again does nothing."""
        if self._loop.is_closed():
            return
        try:
            self.call(self.platform.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()

    @property
    def ctx(self) -> PlatformContext:
        assert self.platform.ctx is not None
        return self.platform.ctx
