"""`fleetrig serve`: run the platform in the foreground until SIGINT/SIGTERM.

Three listeners: the REST API (default :8080), MQTT over TLS for devices (:8883) and the
package repository devices fetch OTA packages from over HTTPS (:8443). A port given as 0 is
any free port; the ports chosen are kept in the data dir for the next start, because every
agent.env names the broker and the repository: a platform that came back elsewhere would strand
its fleet.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from harness.datadir import DEFAULT_DATA_DIR, TOKEN_FILE
from harness.errors import Refused

if TYPE_CHECKING:
    from harness.platform.process import PlatformConfig


def serve(
    ctx: typer.Context,
    data_dir: Path | None = typer.Option(
        None, "--data-dir",
        help=f"Registry, CA, token and ports live here (default: the global --data-dir, FLEETRIG_DATA_DIR, "
        f"else ./{DEFAULT_DATA_DIR}).",
    ),
    db: str | None = typer.Option(None, "--db", help="Registry URL (default: SQLite file in the data dir)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the API, broker and repository listen on."),
    public_host: str | None = typer.Option(None, "--public-host",
                                           help="Host name devices use (written into agent.env)."),
    http_port: int | None = typer.Option(None, "--http-port",
                                         help="REST API port (default: the last start's, else 8080; 0: any free)."),
    mqtts_port: int | None = typer.Option(
        None, "--mqtts-port", help="MQTT over TLS port (default: the last start's, else 8883; 0: any free)."),
    mqtt_port: int | None = typer.Option(None, "--mqtt-port", help="Also serve plain MQTT on 127.0.0.1:PORT."),
    repo_port: int | None = typer.Option(
        None, "--repo-port", help="Package repository (HTTPS) port (default: last start's, else 8443; 0: any free)."),
    repo_user: str | None = typer.Option(None, "--repo-user", help="Basic-auth user for the package repository."),
    repo_password: str | None = typer.Option(None, "--repo-password", envvar="FLEETRIG_REPO_PASSWORD",
                                             help="Basic-auth password for the package repository."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
) -> None:
    """Run the platform: registry, REST API, the built-in MQTT broker (TLS) and the package repository."""
    from harness.broker.tuning import tune_process
    from harness.platform.process import PlatformConfig

    chosen = data_dir or (ctx.obj.data_dir if ctx.obj is not None else None) or Path(DEFAULT_DATA_DIR)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        logging.getLogger("transitions").setLevel(logging.ERROR)
    config = PlatformConfig(data_dir=chosen, db_url=db, host=host, public_host=public_host,
                            http_port=http_port, mqtts_port=mqtts_port, mqtt_port=mqtt_port, repo_port=repo_port,
                            repo_user=repo_user, repo_password=repo_password)
    tune_process()
    asyncio.run(_serve(config))


async def _serve(config: PlatformConfig) -> None:
    from harness.platform.process import Platform

    platform = Platform(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await platform.start()
    except Refused:
        await platform.stop()
        raise
    print("fleetrig platform ready", flush=True)
    print(f"  REST API:       {platform.api_url}  (OpenAPI: {platform.api_url}/docs)", flush=True)
    print(f"  MQTT over TLS:  {platform.broker_url}", flush=True)
    print(f"  packages:       {platform.repo_url}", flush=True)
    if platform.plain_mqtt_port:
        print(f"  plain MQTT:     mqtt://127.0.0.1:{platform.plain_mqtt_port}", flush=True)
    print(f"  data dir:       {config.data_dir}", flush=True)
    print(f"  operator token: {Path(config.data_dir) / TOKEN_FILE}", flush=True)
    await stop.wait()
    print("fleetrig platform stopping", flush=True)
    await platform.stop()
