"""The `fleetrig` command line, shaped like tlm-cli: `fleetrig pms provisioning provision ...`.

Exit codes: 0 success, 1 refused (one line on stderr naming the problem), 2 usage error.
Commands that talk to a platform find it with --api and --token together (or FLEETRIG_API and
FLEETRIG_TOKEN), else --data-dir DIR (or FLEETRIG_DATA_DIR, default ./.fleetrig) to read both
from a local platform's data dir. Half a pair is refused rather than silently replaced.

Modules here import the server, the agent and the simulators only inside the commands that
need them, so `fleetrig --help` and every operator command start without loading them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from harness.cli import agent, audit, demo, eol, fleet, manage, pms, serve, sim
from harness.cli.output import fail
from harness.client import Client
from harness.errors import Refused


class RefusalsExit1(TyperGroup):
    """A refusal from the platform or the CLI is one line on stderr and exit 1, in every command."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Refused as exc:
            fail(str(exc))


app = typer.Typer(
    cls=RefusalsExit1,
    name="fleetrig",
    help="Device fleet simulator, HIL test harness and provisioning platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


@dataclass
class Target:
    api: str | None
    token: str | None
    data_dir: Path | None

    def client(self) -> Client:
        return Client.from_env(self.api, self.token, str(self.data_dir) if self.data_dir else None)


@app.callback()
def root(
    ctx: typer.Context,
    api: str | None = typer.Option(None, "--api", envvar="FLEETRIG_API",
                                   help="Platform REST API URL (with --token; wins over --data-dir)."),
    token: str | None = typer.Option(None, "--token", envvar="FLEETRIG_TOKEN",
                                     help="Operator token (with --api)."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", envvar="FLEETRIG_DATA_DIR",
        help="A local platform's data dir: serve keeps its data there, other commands read the API URL and "
        "token from it (default ./.fleetrig).",
    ),
) -> None:
    ctx.obj = Target(api, token, data_dir)


app.add_typer(pms.app, name="pms", help="PMS: customers, parts, models, provisioning, devices.")
app.add_typer(fleet.app, name="fleet", help="Fleet Manager: claim devices, list the fleet.")
app.add_typer(eol.app, name="eol", help="End of life: dispose of devices (permanent), list disposals.")
app.add_typer(eol.cve_app, name="cve", help="CVE tracking records of devices.")
app.add_typer(sim.app, name="sim", help="Simulated devices.")
app.add_typer(agent.app, name="agent", help="The device agent: build its bundle for a device.")
app.add_typer(manage.ota_app, name="ota", help="Updates: AOTA, FOTA, SOTA, or a raw manifest.")
app.add_typer(manage.config_app, name="config", help="The devices' configuration file.")
app.add_typer(manage.power_app, name="power", help="Reboot or shut down devices.")
app.add_typer(manage.job_app, name="job", help="Jobs and their results per device.")
app.add_typer(manage.repo_app, name="repo", help="The platform's package repository.")
app.command("decommission")(manage.decommission)
app.command("query")(manage.query)
app.command("events")(manage.events)
app.command("telemetry")(manage.telemetry)
app.command("sign")(manage.sign)
app.command("audit")(audit.audit)
app.command("serve")(serve.serve)
app.command("demo")(demo.demo)


def main() -> None:
    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
