"""`fleetrig serve`: run the platform in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import typer

from harness.broker.tuning import tune_process
from harness.datadir import TOKEN_FILE
from harness.errors import Refused
from harness.platform.process import Platform, PlatformConfig


def serve(
    data_dir: Path = typer.Option(Path(".fleetrig"), "--data-dir", help="Registry, CA, token and ports live here."),
    db: str | None = typer.Option(None, "--db", help="Registry URL (default: SQLite file in the data dir)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the API and broker listen on."),
    public_host: str | None = typer.Option(None, "--public-host", help="Broker host name written into agent.env."),
    http_port: int | None = typer.Option(None, "--http-port", help="REST API port (0: any free port)."),
    mqtts_port: int | None = typer.Option(None, "--mqtts-port", help="MQTT over TLS port (0: any free port)."),
    mqtt_port: int | None = typer.Option(None, "--mqtt-port", help="Also serve plain MQTT on 127.0.0.1:PORT."),
    repo_port: int | None = typer.Option(None, "--repo-port", help="Package repository (HTTPS) port (0: any)."),
    repo_user: str | None = typer.Option(None, "--repo-user", help="Basic-auth user for the package repository."),
    repo_password: str | None = typer.Option(None, "--repo-password", envvar="FLEETRIG_REPO_PASSWORD",
                                             help="Basic-auth password for the package repository."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the platform: registry, REST API and the built-in MQTT broker (TLS)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        logging.getLogger("transitions").setLevel(logging.ERROR)
    config = PlatformConfig(data_dir=data_dir, db_url=db, host=host, public_host=public_host,
                            http_port=http_port, mqtts_port=mqtts_port, mqtt_port=mqtt_port, repo_port=repo_port,
                            repo_user=repo_user, repo_password=repo_password)
    tune_process()
    asyncio.run(_serve(config))


async def _serve(config: PlatformConfig) -> None:
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
    print(f"  operator token: {Path(config.data_dir) / TOKEN_FILE}", flush=True)
    await stop.wait()
    print("fleetrig platform stopping", flush=True)
    await platform.stop()
