"""`fleetrig pms ...`: customers, parts, models, provisioning and devices."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from harness.cli.output import confirm, emit_json, fail, table
from harness.client.rest import PlatformUnreachable
from harness.errors import Refused
from harness.platform.pms import ProvisionResult, check_output_dir, write_agent_envs

app = typer.Typer(no_args_is_help=True)
customer_app = typer.Typer(no_args_is_help=True, help="Customers (each with a tenant id).")
part_app = typer.Typer(no_args_is_help=True, help="Parts: hardware definitions.")
model_app = typer.Typer(no_args_is_help=True, help="Models, assigned to a part.")
provisioning_app = typer.Typer(no_args_is_help=True, help="Provision devices and reissue agent.env files.")
device_app = typer.Typer(no_args_is_help=True, help="Devices in the registry.")
app.add_typer(customer_app, name="customer")
app.add_typer(part_app, name="part")
app.add_typer(model_app, name="model")
app.add_typer(provisioning_app, name="provisioning")
app.add_typer(device_app, name="device")


@customer_app.command("add")
def customer_add(ctx: typer.Context, name: str, tenant_id: str = typer.Option(..., "--tenant-id")) -> None:
    """Add a customer with its tenant id."""
    ctx.obj.client().add_customer(name, tenant_id)
    print(f"customer {name} added (tenant {tenant_id})")


@customer_app.command("list")
def customer_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List customers."""
    customers = ctx.obj.client().catalog()["customers"]
    if as_json:
        emit_json(customers)
    else:
        table("customers", ["name", "tenant id"], [(c["name"], c["tenant_id"]) for c in customers])


@part_app.command("add")
def part_add(ctx: typer.Context, part: str) -> None:
    """Add a part."""
    ctx.obj.client().add_part(part)
    print(f"part {part} added")


@part_app.command("list")
def part_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List parts and their models."""
    parts = ctx.obj.client().catalog()["parts"]
    if as_json:
        emit_json(parts)
    else:
        table("parts", ["part", "models"], [(p["name"], ", ".join(p["models"])) for p in parts])


@model_app.command("add")
def model_add(ctx: typer.Context, model: str, part: str = typer.Option(..., "--part")) -> None:
    """Add a model and assign it to a part."""
    ctx.obj.client().add_model(model, part)
    print(f"model {model} added to part {part}")


def _read_serials(serials: list[str], serials_file: Path | None) -> list[str]:
    collected = list(serials)
    if serials_file is not None:
        try:
            text = serials_file.read_text()
        except OSError as exc:
            fail(f"--serials-file {serials_file}: {exc.strerror}")
        collected += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not collected:
        fail("no serials: give SERIAL arguments or --serials-file", 2)
    return collected


def _print_results(results: list[dict], as_json: bool, report: dict, done: str = "provisioned",
                   would: str = "would provision") -> None:
    if as_json:
        emit_json({**report, "results": [{k: v for k, v in r.items() if k != "agent_env"} for r in results]})
        return
    refused = [r for r in results if not r["ok"]]
    verb = would if report["dry_run"] else done
    if len(results) <= 50 or refused:
        shown = results if len(results) <= 50 else refused
        table(None, ["serial", "result"], [(r["serial"], r["error"] if not r["ok"] else verb) for r in shown])
    print(f"{verb} {report[done]}, refused {report['refused']}")


@provisioning_app.command("provision")
def provision(
    ctx: typer.Context,
    serials: list[str] = typer.Argument(None, help="Serial numbers to provision."),
    serials_file: Path | None = typer.Option(None, "--serials-file", help="File with one serial per line."),
    customer: str = typer.Option(..., "--customer"),
    part: str = typer.Option(..., "--part"),
    model: str | None = typer.Option(None, "--model", help="Needed only when the part has several models."),
    output_dir: Path = typer.Option(..., "--output-dir", help="agent.env files go to DIR/SERIAL/agent.env."),
    auth: str = typer.Option("x509", "--auth", help="How devices authenticate after first boot: x509 | token."),
    signature_cert: Path | None = typer.Option(None, "--signature-cert", help="PEM certificate for OTA signatures."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate only: no rows, no files."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    atomic: bool = typer.Option(False, "--atomic", help="Refuse all serials if one is refused."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Register serials in the registry and the broker, and write each device's agent.env."""
    wanted = _read_serials(serials or [], serials_file)
    if dry_run:
        _check_output_dir_dry(output_dir)
    else:
        check_output_dir(output_dir)
    sig = None
    if signature_cert is not None:
        try:
            sig = signature_cert.read_text()
        except OSError as exc:
            fail(f"--signature-cert {signature_cert}: {exc.strerror}")
    client = ctx.obj.client()
    # Scripts (no terminal) are never asked, as on a manufacturing line; a person is, unless --yes.
    if not dry_run and not yes and sys.stdin.isatty() \
            and not confirm(f"Provision {len(wanted)} serial(s) for customer {customer}?", False):
        fail("provisioning cancelled")
    try:
        report = client.provision(wanted, customer=customer, part=part, model=model, dry_run=dry_run,
                                  atomic=atomic, auth=auth, signature_cert=sig)
    except PlatformUnreachable as exc:
        if dry_run:
            raise
        # The platform may have committed before it went away: those serials exist, their files do not.
        fail(f"{exc}; serials it provisioned before the connection broke get their agent.env with "
             f"'fleetrig pms provisioning reissue --serials-file FILE --output-dir {output_dir}'")
    results = report["results"]
    if not dry_run:
        write_agent_envs([ProvisionResult(**r) for r in results], output_dir)
    _print_results(results, as_json, report)
    if report["refused"]:
        first = next(r for r in results if not r["ok"])
        fail(f"{report['refused']} of {len(results)} serial(s) refused; {first['serial']}: {first['error']}")


def _check_output_dir_dry(output_dir: Path) -> None:
    """A dry run checks the output dir without creating anything."""
    probe = output_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise Refused(f"output dir {output_dir}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise Refused(f"output dir {output_dir}: {probe} is not writable")


@provisioning_app.command("reissue")
def reissue(
    ctx: typer.Context,
    serials: list[str] = typer.Argument(None, help="Serial numbers of provisioned devices."),
    serials_file: Path | None = typer.Option(None, "--serials-file", help="File with one serial per line."),
    output_dir: Path = typer.Option(..., "--output-dir", help="agent.env files go to DIR/SERIAL/agent.env."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check only: no key changes, no files."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write new agent.env files (new init keys; the old keys stop working) without re-provisioning.

    This recovers files that never reached you, e.g. when the platform went down right after
    it provisioned a batch: one call for the whole batch, one result per serial.
    """
    wanted = _read_serials(serials or [], serials_file)
    if dry_run:
        _check_output_dir_dry(output_dir)
    else:
        check_output_dir(output_dir)
    client = ctx.obj.client()
    if not dry_run and not yes and sys.stdin.isatty() and not confirm(
            f"Reissue {len(wanted)} serial(s)? Their current init keys stop working.", False):
        fail("reissue cancelled")
    report = client.reissue_many(wanted, dry_run=dry_run)
    results = report["results"]
    if not dry_run:
        write_agent_envs([ProvisionResult(**r) for r in results], output_dir)
    _print_results(results, as_json, report, done="reissued", would="would reissue")
    if report["refused"]:
        first = next(r for r in results if not r["ok"])
        fail(f"{report['refused']} of {len(results)} serial(s) refused; {first['serial']}: {first['error']}")


_DEVICE_COLUMNS = ["serial", "customer", "part", "model", "state", "firmware", "connectivity", "last seen"]


def _device_row(d: dict) -> list:
    return [d["serial"], d["customer"], d["part"], d["model"], d["state"], d["firmware_version"],
            d["connectivity"], d["last_seen"]]


@device_app.command("list")
def device_list(
    ctx: typer.Context,
    state: str | None = typer.Option(None, "--state"),
    customer: str | None = typer.Option(None, "--customer"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List devices in the registry."""
    devices = ctx.obj.client().devices(state=state, customer=customer)
    if as_json:
        emit_json(devices)
    else:
        table(f"{len(devices)} devices", _DEVICE_COLUMNS, [_device_row(d) for d in devices])


@device_app.command("show")
def device_show(ctx: typer.Context, serial: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show one device: state, identity, firmware, facts."""
    d = ctx.obj.client().device(serial)
    if as_json:
        emit_json(d)
        return
    rows = [(k, d[k]) for k in ("serial", "customer", "tenant_id", "part", "model", "state", "auth",
                                "firmware_version", "connectivity", "last_seen", "registered_at", "claimed_at")]
    rows += [(f"facts.{k}", v) for k, v in sorted(d.get("facts", {}).items()) if k != "disks"]
    rows.append(("init keys", len(d["init_keys"])))
    rows.append(("credentials", ", ".join(c["cert_serial"] for c in d["credentials"]) or "none"))
    table(serial, ["field", "value"], rows)
