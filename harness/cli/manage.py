"""Device management from the command line: OTA, config, power, decommission, jobs, telemetry.

Every command creates a job for its targets (serials, --all, or --customer) and prints the job
id; with --wait it prints each device's result JSON ({"status", "message", "job_id"}) and exits
1 when any device did not answer 200. --dry-run checks the fields with the agent's own manifest
builder (what a device would answer 300 to is refused here) and the targets with the platform,
and sends nothing. A command to several devices, or one that takes a device away (shutdown,
decommission), asks at a terminal and needs --yes in a script.

Signatures: the manifest's sigversion (AOTA, FOTA) allows SHA-256 or SHA-384 (upstream's
manifest_schema.xsd); SOTA and config load carry no sigversion, so devices check SHA-384 there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import typer

from harness.cli.choices import AotaApp, AotaCommand, QueryOption, SigVersion, SotaCommand, SotaMode, YesNo
from harness.cli.options import ALL, CUSTOMER, DRY_RUN, JSON, LIMIT, QUIET, SERIALS, TIMEOUT, WAIT, YES, group
from harness.cli.output import approve, emit_json, fail, table

ota_app = group("Updates: AOTA, FOTA, SOTA, or a raw manifest.")
config_app = group("The devices' intel_manageability.conf.")
power_app = group("Reboot or shut down devices.")
job_app = group("Jobs: one command and its result per device.")
repo_app = group("The platform's package repository (HTTPS).")

SIGVERSION = typer.Option(None, "--sigversion", help="The signature's hash: SHA-256 or SHA-384 (default 384).")
SIGNATURE = typer.Option(None, "--signature", help="Hex signature of the package ('fleetrig sign').")
SIGNATURE_384 = typer.Option(None, "--signature",
                             help="Hex SHA-384 signature of the package ('fleetrig sign'; no sigversion here).")
USERNAME = typer.Option(None, "--username", help="User for the server holding the package.")
PASSWORD = typer.Option(None, "--password", help="Password for the server holding the package.")
DEVICE_REBOOT = typer.Option(None, "--device-reboot", help="Reboot after the update.")
FETCH = typer.Option(None, "--fetch", help="URL of the package (a trusted repository).")


def _describe(serials: list[str] | None, all_: bool, customer: str | None) -> str:
    if all_:
        return "every registered device"
    if customer:
        return f"every registered device of customer {customer}"
    return serials[0] if serials and len(serials) == 1 else f"{len(serials or [])} devices"


def _check_fields(method: str, params: dict[str, Any]) -> None:
    """Refuse what a device would refuse with 300, before anything is sent (dry runs)."""
    from agent.manifest import ManifestError
    from agent.rpc_forms import manifest_from_rpc

    try:
        manifest_from_rpc(method, params)
    except ManifestError as exc:
        fail(str(exc))


def _run(ctx: typer.Context, method: str, params: dict[str, Any], serials: list[str] | None, all_: bool,
         customer: str | None, *, wait: bool = False, timeout: float | None = None, as_json: bool = False,
         quiet: bool = False, dry_run: bool = False, yes: bool = False, warning: str = "") -> None:
    if sum(bool(x) for x in (serials, all_, customer)) != 1:
        fail("name target serials, or use --all or --customer (one of them)", 2)
    params = {k: v for k, v in params.items() if v not in (None, "")}
    client = ctx.obj.client()
    targets = _describe(serials, all_, customer)
    if dry_run:
        _check_fields(method, params)
        preview = client.create_job(method, params, serials=serials or None, all=all_, customer=customer,
                                    timeout_s=timeout, dry_run=True)
        if as_json:
            emit_json(preview)
        else:
            names = preview["targets"]
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            print(f"would send {method} to {len(names)} device(s): {shown}")
        return
    if warning or all_ or customer or len(serials or []) > 1:
        approve(f"send {method} to {targets}", yes, warning=warning)
    job = client.create_job(method, params, serials=serials or None, all=all_, customer=customer, timeout_s=timeout)
    if wait:
        job = client.wait_job(job["id"], timeout=job["timeout_s"] + 30)
    _print_job(job, as_json, wait, quiet)


def _print_job(job: dict[str, Any], as_json: bool, results: bool, quiet: bool = False) -> None:
    if as_json:
        emit_json(job)
    elif quiet:
        print(job["id"])
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
def ota_manifest(ctx: typer.Context, serials: list[str] = SERIALS,
                 file: Path = typer.Option(..., "--file", help="The manifest XML file."),
                 all_: bool = ALL, customer: str | None = CUSTOMER, wait: bool = WAIT,
                 timeout: float | None = TIMEOUT, dry_run: bool = DRY_RUN, yes: bool = YES,
                 quiet: bool = QUIET, as_json: bool = JSON) -> None:
    """Send a raw manifest (XML file) to devices."""
    try:
        manifest = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--file {file}: {exc}")
    _run(ctx, "triggerota", {"manifest": manifest}, serials, all_, customer, wait=wait, timeout=timeout,
         as_json=as_json, quiet=quiet, dry_run=dry_run, yes=yes)


@ota_app.command("aota")
def ota_aota(
    ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL, customer: str | None = CUSTOMER,
    app: AotaApp = typer.Option(..., "--app", help="What to update."),
    cmd: AotaCommand = typer.Option(..., "--cmd",
                                    help="compose: up down pull list remove; docker: import load pull remove stats"),
    fetch: str | None = FETCH,
    container_tag: str | None = typer.Option(None, "--container-tag",
                                             help="Image or stack name (compose: the package's folder)."),
    version: str | None = typer.Option(None, "--version", help="Image version."),
    file: str | None = typer.Option(None, "--file", help="Compose file name (default docker-compose.yml)."),
    signature: str | None = SIGNATURE, sigversion: SigVersion | None = SIGVERSION,
    username: str | None = USERNAME, password: str | None = PASSWORD,
    docker_registry: str | None = typer.Option(None, "--docker-registry", help="A registry other than the default."),
    docker_username: str | None = typer.Option(None, "--docker-username", help="User for the docker registry."),
    docker_password: str | None = typer.Option(None, "--docker-password", help="Password for the docker registry."),
    device_reboot: Literal["yes", "no"] | None = DEVICE_REBOOT,
    wait: bool = WAIT, timeout: float | None = TIMEOUT, dry_run: bool = DRY_RUN, yes: bool = YES,
    quiet: bool = QUIET, as_json: bool = JSON,
) -> None:
    """Application update: docker / docker-compose commands."""
    params = {"app": app, "cmd": cmd, "fetch": fetch, "containerTag": container_tag, "version": version,
              "file": file, "signature": signature, "sigversion": sigversion, "username": username,
              "password": password, "dockerRegistry": docker_registry, "dockerUsername": docker_username,
              "dockerPassword": docker_password, "deviceReboot": device_reboot}
    _run(ctx, "triggeraota", params, serials, all_, customer, wait=wait, timeout=timeout, as_json=as_json,
         quiet=quiet, dry_run=dry_run, yes=yes)


@ota_app.command("fota")
def ota_fota(
    ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL, customer: str | None = CUSTOMER,
    fetch: str = typer.Option(..., "--fetch", help="URL of the firmware package (a trusted repository)."),
    biosversion: str = typer.Option(..., "--biosversion", help="The new firmware's BIOS version."),
    vendor: str = typer.Option(..., "--vendor", help="Must match the device's BIOS vendor."),
    manufacturer: str = typer.Option(..., "--manufacturer", help="Must match the device's manufacturer."),
    product: str = typer.Option(..., "--product", help="Must match the device's product."),
    releasedate: str = typer.Option(..., "--releasedate", help="YYYY-MM-DD, newer than the running firmware's."),
    signature: str | None = SIGNATURE, sigversion: SigVersion | None = SIGVERSION,
    tooloptions: str | None = typer.Option(None, "--tooloptions", help="Options for the firmware tool."),
    path: str | None = typer.Option(None, "--path", help="Where the firmware file goes on the device."),
    username: str | None = USERNAME, password: str | None = PASSWORD,
    device_reboot: Literal["yes", "no"] | None = typer.Option(
        None, "--device-reboot", help="Reboot into the new firmware at once (default yes; no: at the next boot)."),
    wait: bool = WAIT, timeout: float | None = TIMEOUT, dry_run: bool = DRY_RUN, yes: bool = YES,
    quiet: bool = QUIET, as_json: bool = JSON,
) -> None:
    """Firmware update: vendor, manufacturer and product must match; the release date must be newer."""
    params = {"fetch": fetch, "biosversion": biosversion, "vendor": vendor, "manufacturer": manufacturer,
              "product": product, "releasedate": releasedate, "signature": signature, "sigversion": sigversion,
              "tooloptions": tooloptions, "path": path, "username": username, "password": password,
              "deviceReboot": device_reboot}
    _run(ctx, "triggerfota", params, serials, all_, customer, wait=wait, timeout=timeout, as_json=as_json,
         quiet=quiet, dry_run=dry_run, yes=yes)


@ota_app.command("sota")
def ota_sota(
    ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL, customer: str | None = CUSTOMER,
    cmd: SotaCommand = typer.Option("update", "--cmd", help="The SOTA command."),
    mode: SotaMode | None = typer.Option(None, "--mode", help="apt: what to do (default full)."),
    fetch: str | None = typer.Option(None, "--fetch", help="A mender artifact instead of apt."),
    package_list: str | None = typer.Option(None, "--package-list", help="Only these packages (comma separated)."),
    log_to_file: YesNo | None = typer.Option(None, "--log-to-file", help="Y: log on the device; N: to the cloud."),
    release_date: str | None = typer.Option(None, "--release-date", help="The artifact's release date."),
    signature: str | None = SIGNATURE_384,
    username: str | None = USERNAME, password: str | None = PASSWORD,
    device_reboot: Literal["yes", "no"] | None = DEVICE_REBOOT,
    wait: bool = WAIT, timeout: float | None = TIMEOUT, dry_run: bool = DRY_RUN, yes: bool = YES,
    quiet: bool = QUIET, as_json: bool = JSON,
) -> None:
    """OS update: apt (full / no-download / download-only) or a mender artifact."""
    params = {"cmd": cmd, "mode": mode, "fetch": fetch, "package_list": package_list, "log_to_file": log_to_file,
              "release_date": release_date, "signature": signature, "username": username, "password": password,
              "deviceReboot": device_reboot}
    _run(ctx, "triggersota", params, serials, all_, customer, wait=wait, timeout=timeout, as_json=as_json,
         quiet=quiet, dry_run=dry_run, yes=yes)


_CONFIG_HELP = {
    "get": ("Read keys.", "Keys to read: key;key."),
    "set": ("Set values.", "Values to set: key:value;key:value."),
    "append": ("Append to trustedRepositories, sotaSW or ubuntuAptSource.", "What to append: key:value."),
    "remove": ("Remove from trustedRepositories, sotaSW or ubuntuAptSource.", "What to remove: key:value."),
}


def _config(verb: str):  # type: ignore[no-untyped-def]
    doc, path_help = _CONFIG_HELP[verb]

    def command(ctx: typer.Context, serials: list[str] = SERIALS,
                path: str = typer.Option(..., "--path", help=path_help),
                all_: bool = ALL, customer: str | None = CUSTOMER, wait: bool = WAIT,
                timeout: float | None = TIMEOUT, dry_run: bool = DRY_RUN, yes: bool = YES,
                quiet: bool = QUIET, as_json: bool = JSON) -> None:
        _run(ctx, "triggerconfig", {"cmd": verb, "path": path}, serials, all_, customer, wait=wait,
             timeout=timeout, as_json=as_json, quiet=quiet, dry_run=dry_run, yes=yes)

    command.__doc__ = doc
    return command


for _verb in _CONFIG_HELP:
    config_app.command(_verb)(_config(_verb))


@config_app.command("load")
def config_load(ctx: typer.Context, serials: list[str] = SERIALS,
                fetch: str = typer.Option(..., "--fetch", help="URL of the new configuration file."),
                signature: str | None = SIGNATURE_384, all_: bool = ALL, customer: str | None = CUSTOMER,
                wait: bool = WAIT, timeout: float | None = TIMEOUT, dry_run: bool = DRY_RUN, yes: bool = YES,
                quiet: bool = QUIET, as_json: bool = JSON) -> None:
    """Replace the whole configuration file with one fetched from a trusted repository."""
    _run(ctx, "triggerconfig", {"cmd": "load", "fetch": fetch, "signature": signature}, serials, all_, customer,
         wait=wait, timeout=timeout, as_json=as_json, quiet=quiet, dry_run=dry_run, yes=yes)


@power_app.command("reboot")
def power_reboot(ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL,
                 customer: str | None = CUSTOMER, wait: bool = WAIT, dry_run: bool = DRY_RUN, yes: bool = YES,
                 quiet: bool = QUIET, as_json: bool = JSON) -> None:
    """Reboot devices: they go offline and come back."""
    _run(ctx, "reboot_device", {}, serials, all_, customer, wait=wait, as_json=as_json, quiet=quiet,
         dry_run=dry_run, yes=yes)


@power_app.command("shutdown")
def power_shutdown(ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL,
                   customer: str | None = CUSTOMER, wait: bool = WAIT, dry_run: bool = DRY_RUN,
                   yes: bool = typer.Option(False, "--yes", "-y", help="Confirm: the devices stay off."),
                   quiet: bool = QUIET, as_json: bool = JSON) -> None:
    """Shut devices down: they go offline and stay off."""
    _run(ctx, "shutdown_device", {}, serials, all_, customer, wait=wait, as_json=as_json, quiet=quiet,
         dry_run=dry_run, yes=yes, warning="they stay off until someone powers them on")


def decommission(ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL,
                 customer: str | None = CUSTOMER, dry_run: bool = DRY_RUN,
                 yes: bool = typer.Option(False, "--yes", "-y", help="Confirm: the devices can never connect again."),
                 wait: bool = WAIT, quiet: bool = QUIET, as_json: bool = JSON) -> None:
    """Remove every credential from devices and shut them down, for good."""
    _run(ctx, "decommission_device", {}, serials, all_, customer, wait=wait, as_json=as_json, quiet=quiet,
         dry_run=dry_run, yes=yes, warning="permanent: they can never connect again")


def query(ctx: typer.Context, serials: list[str] = SERIALS, all_: bool = ALL, customer: str | None = CUSTOMER,
          option: QueryOption = typer.Option("all", "--option", help="What to ask for."),
          wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the answers and print them."),
          dry_run: bool = DRY_RUN, yes: bool = YES, quiet: bool = QUIET, as_json: bool = JSON) -> None:
    """Ask devices for their facts (the triggerquery command)."""
    _run(ctx, "triggerquery", {"option": option}, serials, all_, customer, wait=wait, as_json=as_json,
         quiet=quiet, dry_run=dry_run, yes=yes)


@job_app.command("show")
def job_show(ctx: typer.Context, job_id: str = typer.Argument(..., help="The job id a command printed."),
             wait: bool = WAIT, as_json: bool = JSON) -> None:
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


def events(ctx: typer.Context, serial: str = typer.Argument(..., help="The device's serial."),
           limit: int = LIMIT, as_json: bool = JSON) -> None:
    """A device's event log."""
    rows = ctx.obj.client().events(serial, limit)
    if as_json:
        emit_json(rows)
    else:
        table(f"events of {serial}", ["at", "kind", "message"], [(e["at"], e["kind"], e["message"]) for e in rows])


def telemetry(ctx: typer.Context, serial: str = typer.Argument(..., help="The device's serial."),
              limit: int = typer.Option(20, "--limit", min=1, max=10000, help="Latest dynamic samples shown."),
              as_json: bool = JSON) -> None:
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
def repo_add(ctx: typer.Context, file: Path = typer.Argument(..., help="The package file."),
             name: str | None = typer.Option(None, "--name", help="Name in the repository (default: file name)."),
             dry_run: bool = DRY_RUN,
             yes: bool = typer.Option(False, "--yes", "-y", help="Replace a package of the same name."),
             as_json: bool = JSON) -> None:
    """Upload a package; prints the URL devices fetch it from."""
    if not file.is_file():
        fail(f"{file}: no such file")
    client = ctx.obj.client()
    target = name or file.name
    existing = client.package(target)
    if dry_run:
        verb = "would replace" if existing else "would add"
        info = {"name": target, "size": file.stat().st_size, "replaces": existing, "dry_run": True}
        if as_json:
            emit_json(info)
        else:
            print(f"{verb} {target} ({info['size']} bytes)")
        return
    if existing:
        approve(f"replace package {target} ({existing['size']} bytes)", yes,
                warning="devices fetching it get the new file")
    info = client.add_package(file, name)
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


def sign(file: Path = typer.Argument(..., help="The package to sign."),
         key: Path = typer.Option(..., "--key", help="PEM RSA private key (over 3000 bits)."),
         sigversion: SigVersion = typer.Option("384", "--sigversion",
                                               help="SHA-256 or SHA-384 (SOTA and config load: 384).")) -> None:
    """Print the signature of FILE for the OTA form's signature field."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from agent.packages import sign as sign_bytes

    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        data = file.read_bytes()
    except (OSError, ValueError, TypeError) as exc:
        fail(f"cannot use {key} / {file}: {exc}")
    if not isinstance(private, rsa.RSAPrivateKey) or private.key_size <= 3000:
        fail(f"{key}: an RSA private key over 3000 bits is needed")
    print(sign_bytes(data, private, sigversion))
