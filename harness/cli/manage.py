"""Device management from the command line: OTA, config, power, decommission, jobs, telemetry.

Every command creates a job for its targets (serials, --all, or --customer) and prints the job
id; with --wait it prints each device's result JSON ({"status", "message", "job_id"}) and exits
1 when any device did not answer 200.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.packages import sign as sign_bytes
from harness.cli.output import confirm, emit_json, fail, table

ota_app = typer.Typer(no_args_is_help=True, help="Updates: AOTA, FOTA, SOTA, or a raw manifest.")
config_app = typer.Typer(no_args_is_help=True, help="The devices' intel_manageability.conf.")
power_app = typer.Typer(no_args_is_help=True, help="Reboot or shut down devices.")
job_app = typer.Typer(no_args_is_help=True, help="Jobs: one command and its result per device.")
repo_app = typer.Typer(no_args_is_help=True, help="The platform's package repository (HTTPS).")

SERIALS = typer.Argument(None, help="Target serials.")
ALL = typer.Option(False, "--all", help="Every registered device.")
CUSTOMER = typer.Option(None, "--customer", help="Every registered device of this customer.")
WAIT = typer.Option(False, "--wait", help="Wait for every device's result and print it.")
TIMEOUT = typer.Option(None, "--timeout", help="Seconds a device has to answer (default per command).")
JSON = typer.Option(False, "--json", help="Print JSON.")


def _run(ctx: typer.Context, method: str, params: dict[str, Any], serials: list[str] | None, all_: bool,
         customer: str | None, wait: bool, timeout: float | None, as_json: bool) -> None:
    if sum(bool(x) for x in (serials, all_, customer)) != 1:
        fail("name target serials, or use --all or --customer (one of them)", 2)
    client = ctx.obj.client()
    params = {k: v for k, v in params.items() if v not in (None, "")}
    job = client.create_job(method, params, serials=serials or None, all=all_, customer=customer, timeout_s=timeout)
    if wait:
        job = client.wait_job(job["id"], timeout=job["timeout_s"] + 30)
    _print_job(job, as_json, wait)


def _print_job(job: dict[str, Any], as_json: bool, results: bool) -> None:
    if as_json:
        emit_json(job)
    elif results:
        for r in job["results"]:
            print(json.dumps({"serial": r["serial"], "status": r["status"], "message": r["message"],
                              "job_id": job["id"], **({"data": r["data"]} if r["data"] else {})}))
    else:
        print(f"job {job['id']}: {job['method']} to {len(job['results'])} device(s); "
              f"'fleetrig job show {job['id']} --wait' for the results")
    if results:
        failed = [r for r in job["results"] if r["status"] != 200]
        if failed:
            first = failed[0]
            fail(f"{len(failed)} of {len(job['results'])} device(s) failed; {first['serial']}: "
                 f"{first['status']} {first['message']}")


@ota_app.command("manifest")
def ota_manifest(ctx: typer.Context, serials: list[str] = SERIALS, file: Path = typer.Option(..., "--file"),
                 all_: bool = ALL, customer: str | None = CUSTOMER, wait: bool = WAIT,
                 timeout: float | None = TIMEOUT, as_json: bool = JSON) -> None:
    """Send a raw manifest (XML file) to devices."""
    try:
        manifest = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--file {file}: {exc}")
    _run(ctx, "triggerota", {"manifest": manifest}, serials, all_, customer, wait, timeout, as_json)


@ota_app.command("aota")
def ota_aota(
    ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL, customer: str | None = CUSTOMER,
    app: str = typer.Option(..., "--app", help="docker | compose"),
    cmd: str = typer.Option(..., "--cmd",
                            help="compose: up down pull list remove; docker: import load pull remove stats"),
    fetch: str | None = typer.Option(None, "--fetch"),
    container_tag: str | None = typer.Option(None, "--container-tag"),
    version: str | None = typer.Option(None, "--version"), file: str | None = typer.Option(None, "--file"),
    signature: str | None = typer.Option(None, "--signature"),
    username: str | None = typer.Option(None, "--username"), password: str | None = typer.Option(None, "--password"),
    docker_registry: str | None = typer.Option(None, "--docker-registry"),
    docker_username: str | None = typer.Option(None, "--docker-username"),
    docker_password: str | None = typer.Option(None, "--docker-password"),
    device_reboot: str | None = typer.Option(None, "--device-reboot"),
    wait: bool = WAIT, timeout: float | None = TIMEOUT, as_json: bool = JSON,
) -> None:
    """Application update: docker / docker-compose commands."""
    params = {"app": app, "cmd": cmd, "fetch": fetch, "containerTag": container_tag, "version": version,
              "file": file, "signature": signature, "username": username, "password": password,
              "dockerRegistry": docker_registry, "dockerUsername": docker_username,
              "dockerPassword": docker_password, "deviceReboot": device_reboot}
    _run(ctx, "triggeraota", params, serials, all_, customer, wait, timeout, as_json)


@ota_app.command("fota")
def ota_fota(
    ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL, customer: str | None = CUSTOMER,
    fetch: str = typer.Option(..., "--fetch"), biosversion: str = typer.Option(..., "--biosversion"),
    vendor: str = typer.Option(..., "--vendor"), manufacturer: str = typer.Option(..., "--manufacturer"),
    product: str = typer.Option(..., "--product"), releasedate: str = typer.Option(..., "--releasedate"),
    signature: str | None = typer.Option(None, "--signature"),
    sigversion: str | None = typer.Option(None, "--sigversion"),
    tooloptions: str | None = typer.Option(None, "--tooloptions"), path: str | None = typer.Option(None, "--path"),
    username: str | None = typer.Option(None, "--username"), password: str | None = typer.Option(None, "--password"),
    wait: bool = WAIT, timeout: float | None = TIMEOUT, as_json: bool = JSON,
) -> None:
    """Firmware update: vendor, manufacturer and product must match; the release date must be newer."""
    params = {"fetch": fetch, "biosversion": biosversion, "vendor": vendor, "manufacturer": manufacturer,
              "product": product, "releasedate": releasedate, "signature": signature, "sigversion": sigversion,
              "tooloptions": tooloptions, "path": path, "username": username, "password": password}
    _run(ctx, "triggerfota", params, serials, all_, customer, wait, timeout, as_json)


@ota_app.command("sota")
def ota_sota(
    ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL, customer: str | None = CUSTOMER,
    cmd: str = typer.Option("update", "--cmd"),
    mode: str | None = typer.Option(None, "--mode", help="full | no-download | download-only"),
    fetch: str | None = typer.Option(None, "--fetch", help="A mender artifact instead of apt."),
    package_list: str | None = typer.Option(None, "--package-list"),
    log_to_file: str | None = typer.Option(None, "--log-to-file", help="Y: log on the device; N: to the cloud."),
    release_date: str | None = typer.Option(None, "--release-date"),
    signature: str | None = typer.Option(None, "--signature"),
    username: str | None = typer.Option(None, "--username"), password: str | None = typer.Option(None, "--password"),
    device_reboot: str | None = typer.Option(None, "--device-reboot"),
    wait: bool = WAIT, timeout: float | None = TIMEOUT, as_json: bool = JSON,
) -> None:
    """OS update: apt (full / no-download / download-only) or a mender artifact."""
    params = {"cmd": cmd, "mode": mode, "fetch": fetch, "package_list": package_list, "log_to_file": log_to_file,
              "release_date": release_date, "signature": signature, "username": username, "password": password,
              "deviceReboot": device_reboot}
    _run(ctx, "triggersota", params, serials, all_, customer, wait, timeout, as_json)


def _config(verb: str):  # type: ignore[no-untyped-def]
    def command(ctx: typer.Context, serials: list[str] = typer.Argument(..., help="Serials, then the PATH."),
                wait: bool = WAIT, timeout: float | None = TIMEOUT, as_json: bool = JSON) -> None:
        if len(serials) < 2:
            fail(f"usage: fleetrig config {verb} SERIAL... PATH", 2)
        *targets, path = serials
        _run(ctx, "triggerconfig", {"cmd": verb, "path": path}, targets, False, None, wait, timeout, as_json)

    command.__doc__ = {"get": "Read keys: PATH is key;key.", "set": "Set values: PATH is key:value;key:value.",
                       "append": "Append to trustedRepositories, sotaSW or ubuntuAptSource: key:value.",
                       "remove": "Remove from trustedRepositories, sotaSW or ubuntuAptSource: key:value."}[verb]
    return command


for _verb in ("get", "set", "append", "remove"):
    config_app.command(_verb)(_config(_verb))


@config_app.command("load")
def config_load(ctx: typer.Context, serials: list[str] = SERIALS, fetch: str = typer.Option(..., "--fetch"),
                signature: str | None = typer.Option(None, "--signature"), wait: bool = WAIT,
                timeout: float | None = TIMEOUT, as_json: bool = JSON) -> None:
    """Replace the whole configuration file with one fetched from a trusted repository."""
    _run(ctx, "triggerconfig", {"cmd": "load", "fetch": fetch, "signature": signature}, serials, False, None,
         wait, timeout, as_json)


@power_app.command("reboot")
def power_reboot(ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL,
                 customer: str | None = CUSTOMER, wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Reboot devices: they go offline and come back."""
    _run(ctx, "reboot_device", {}, serials, all_, customer, wait, None, as_json)


@power_app.command("shutdown")
def power_shutdown(ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL,
                   customer: str | None = CUSTOMER, wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Shut devices down: they go offline and stay off."""
    _run(ctx, "shutdown_device", {}, serials, all_, customer, wait, None, as_json)


def decommission(ctx: typer.Context, serials: list[str] = typer.Argument(..., help="Serials to decommission."),
                 yes: bool = typer.Option(False, "--yes", "-y", help="Confirm: the devices can never connect again."),
                 wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Remove every credential from devices and shut them down, for good."""
    if not confirm(f"Decommission {len(serials)} device(s)? They can never connect again.", yes):
        fail("decommission is permanent: confirm with --yes")
    _run(ctx, "decommission_device", {}, serials, False, None, wait, None, as_json)


def query(ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL, customer: str | None = CUSTOMER,
          option: str = typer.Option("all", "--option", help="all hw fw os version swbom status"),
          wait: bool = typer.Option(True, "--wait/--no-wait"), as_json: bool = JSON) -> None:
    """Ask devices for their facts (the triggerquery command)."""
    _run(ctx, "triggerquery", {"option": option}, serials, all_, customer, wait, None, as_json)


@job_app.command("show")
def job_show(ctx: typer.Context, job_id: str, wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Show a job and each device's result."""
    client = ctx.obj.client()
    job = client.wait_job(job_id) if wait else client.job(job_id)
    if as_json:
        emit_json(job)
        return
    counts = job["counts"]
    table(f"job {job['id']}: {job['method']} ({'done' if job['done'] else 'running'})",
          ["serial", "state", "status", "message"],
          [(r["serial"], r["state"], r["status"], r["message"]) for r in job["results"]])
    print(f"succeeded {counts['succeeded']}, failed {counts['failed']}, waiting {counts['sent'] + counts['pending']}")


def events(ctx: typer.Context, serial: str, limit: int = typer.Option(200, "--limit"), as_json: bool = JSON) -> None:
    """A device's event log."""
    rows = ctx.obj.client().events(serial, limit)
    if as_json:
        emit_json(rows)
    else:
        table(f"events of {serial}", ["at", "kind", "message"], [(e["at"], e["kind"], e["message"]) for e in rows])


def telemetry(ctx: typer.Context, serial: str, limit: int = typer.Option(20, "--limit"), as_json: bool = JSON) -> None:
    """A device's static facts and latest dynamic telemetry."""
    data = ctx.obj.client().telemetry(serial, limit)
    if as_json:
        emit_json(data)
        return
    table(f"{serial}: static", ["fact", "value"], [(k, v) for k, v in sorted(data["static"].items()) if k != "disks"])
    table(f"{serial}: dynamic (latest {len(data['dynamic'])})",
          ["at", "cpu %", "memory free MB", "disk used %", "core °C"],
          [(d["at"], d.get("cpu_percent"), d.get("available_memory_mb"), d.get("percent_disk_used"),
            d.get("core_temp_c")) for d in data["dynamic"]])


@repo_app.command("add")
def repo_add(ctx: typer.Context, file: Path, name: str | None = typer.Option(None, "--name"),
             as_json: bool = JSON) -> None:
    """Upload a package; prints the URL devices fetch it from."""
    info = ctx.obj.client().add_package(file, name)
    if as_json:
        emit_json(info)
    else:
        print(info["url"])


@repo_app.command("list")
def repo_list(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Packages in the repository."""
    rows = ctx.obj.client().packages()
    if as_json:
        emit_json(rows)
    else:
        table("packages", ["name", "size", "url"], [(p["name"], p["size"], p["url"]) for p in rows])


def sign(file: Path, key: Path = typer.Option(..., "--key", help="PEM RSA private key (over 3000 bits)."),
         sigversion: str = typer.Option("384", "--sigversion", help="SHA-256, 384 or 512.")) -> None:
    """Print the signature of FILE for the OTA form's signature field."""
    if sigversion not in ("256", "384", "512"):
        fail("--sigversion must be 256, 384 or 512", 2)
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        data = file.read_bytes()
    except (OSError, ValueError, TypeError) as exc:
        fail(f"cannot use {key} / {file}: {exc}")
    if not isinstance(private, rsa.RSAPrivateKey) or private.key_size <= 3000:
        fail(f"{key}: an RSA private key over 3000 bits is needed")
    print(sign_bytes(data, private, sigversion))
