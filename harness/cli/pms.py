"""`fleetrig pms ...`: customers, parts, models, provisioning and devices."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli.choices import AuthMode, DeviceState
from harness.cli.options import DRY_RUN, JSON, YES, group
from harness.cli.output import approve, emit_json, fail, table
from harness.client.files import check_output_dir, write_agent_envs
from harness.client.rest import PlatformUnreachable

app = group("PMS: customers, parts, models, provisioning, devices.")
customer_app = group("Customers (each with a tenant id).")
part_app = group("Parts: hardware definitions.")
model_app = group("Models, assigned to a part.")
provisioning_app = group("Provision devices and reissue agent.env files.")
device_app = group("Devices in the registry.")
app.add_typer(customer_app, name="customer")
app.add_typer(part_app, name="part")
app.add_typer(model_app, name="model")
app.add_typer(provisioning_app, name="provisioning")
app.add_typer(device_app, name="device")


def _added(what: str, result: dict) -> None:
    print(f"{'would add' if result.get('dry_run') else 'added'} {what}")


@customer_app.command("add")
def customer_add(ctx: typer.Context, name: str = typer.Argument(..., help="Customer name."),
                 tenant_id: str = typer.Option(..., "--tenant-id", help="The customer's tenant id."),
                 dry_run: bool = DRY_RUN, yes: bool = YES) -> None:
    """Add a customer with its tenant id."""
    _added(f"customer {name} (tenant {tenant_id})", ctx.obj.client().add_customer(name, tenant_id, dry_run=dry_run))


@customer_app.command("list")
def customer_list(ctx: typer.Context, as_json: bool = JSON) -> None:
    """List customers."""
    customers = ctx.obj.client().catalog()["customers"]
    if as_json:
        emit_json(customers)
    else:
        table("customers", ["name", "tenant id"], [(c["name"], c["tenant_id"]) for c in customers])


@part_app.command("add")
def part_add(ctx: typer.Context, part: str = typer.Argument(..., help="Part name."),
             dry_run: bool = DRY_RUN, yes: bool = YES) -> None:
    """Add a part."""
    _added(f"part {part}", ctx.obj.client().add_part(part, dry_run=dry_run))


@part_app.command("list")
def part_list(ctx: typer.Context, as_json: bool = JSON) -> None:
    """List parts and their models."""
    parts = ctx.obj.client().catalog()["parts"]
    if as_json:
        emit_json(parts)
    else:
        table("parts", ["part", "models"], [(p["name"], ", ".join(p["models"])) for p in parts])


@model_app.command("add")
def model_add(ctx: typer.Context, model: str = typer.Argument(..., help="Model name."),
              part: str = typer.Option(..., "--part", help="The part this model is assigned to."),
              dry_run: bool = DRY_RUN, yes: bool = YES) -> None:
    """Add a model and assign it to a part."""
    _added(f"model {model} to part {part}", ctx.obj.client().add_model(model, part, dry_run=dry_run))


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


def _only_part(client) -> str:  # type: ignore[no-untyped-def]
    """--part may be left out when the catalog has exactly one part (the seed's loop omits it)."""
    parts = sorted(p["name"] for p in client.catalog()["parts"])
    if len(parts) == 1:
        return parts[0]
    if not parts:
        fail("no part in the catalog: add one with 'fleetrig pms part add PART'")
    fail(f"several parts in the catalog ({', '.join(parts)}): choose one with --part", 2)


@provisioning_app.command("provision")
def provision(
    ctx: typer.Context,
    serials: list[str] = typer.Argument(None, help="Serial numbers to provision."),
    serials_file: Path | None = typer.Option(None, "--serials-file", help="File with one serial per line."),
    customer: str = typer.Option(..., "--customer", help="The customer the devices belong to."),
    part: str | None = typer.Option(None, "--part", help="The devices' part (may be left out when there is one)."),
    model: str | None = typer.Option(None, "--model", help="Needed only when the part has several models."),
    output_dir: Path = typer.Option(..., "--output-dir", help="agent.env files go to DIR/SERIAL/agent.env."),
    auth: AuthMode = typer.Option("x509", "--auth", help="How devices authenticate after first boot."),
    signature_cert: Path | None = typer.Option(None, "--signature-cert", help="PEM certificate for OTA signatures."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate only: no rows, no files."),
    yes: bool = YES,
    atomic: bool = typer.Option(False, "--atomic", help="Refuse all serials if one is refused."),
    as_json: bool = JSON,
) -> None:
    """Register serials in the registry and the broker, and write each device's agent.env.

    Runs in scripts without --yes (a manufacturing line loops over serials); at a terminal it
    asks first unless --yes.
    """
    wanted = _read_serials(serials or [], serials_file)
    check_output_dir(output_dir, create=False)  # refused before anything is asked or made
    sig = None
    if signature_cert is not None:
        try:
            sig = signature_cert.read_text()
        except OSError as exc:
            fail(f"--signature-cert {signature_cert}: {exc.strerror}")
    client = ctx.obj.client()
    part = part or _only_part(client)
    if not dry_run:
        approve(f"provision {len(wanted)} serial(s) for customer {customer}", yes, required=False)
        check_output_dir(output_dir)
    try:
        report = client.provision(wanted, customer=customer, part=part, model=model, dry_run=dry_run,
                                  atomic=atomic, auth=auth, signature_cert=sig)
    except PlatformUnreachable as exc:
        if dry_run:
            raise
        # The platform may have committed before it went away: those serials exist, their files do not.
        fail(f"{exc}; serials it provisioned before the connection broke get their agent.env with "
             f"'fleetrig pms provisioning reissue --serials-file FILE --output-dir {output_dir} --yes'")
    results = report["results"]
    if not dry_run:
        write_agent_envs(results, output_dir)
    _print_results(results, as_json, report)
    if report["refused"]:
        first = next(r for r in results if not r["ok"])
        fail(f"{report['refused']} of {len(results)} serial(s) refused; {first['serial']}: {first['error']}")


@provisioning_app.command("reissue")
def reissue(
    ctx: typer.Context,
    serials: list[str] = typer.Argument(None, help="Serial numbers of provisioned devices."),
    serials_file: Path | None = typer.Option(None, "--serials-file", help="File with one serial per line."),
    output_dir: Path = typer.Option(..., "--output-dir", help="agent.env files go to DIR/SERIAL/agent.env."),
    dry_run: bool = DRY_RUN,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Write new agent.env files (new init keys; the old keys stop working) without re-provisioning.

    This recovers files that never reached you, e.g. when the platform went down right after
    it provisioned a batch: one call for the whole batch, one result per serial.
    """
    wanted = _read_serials(serials or [], serials_file)
    check_output_dir(output_dir, create=False)  # refused before anything is asked or made
    client = ctx.obj.client()
    if not dry_run:
        approve(f"reissue {len(wanted)} serial(s)", yes, warning="their current init keys stop working")
        check_output_dir(output_dir)
    report = client.reissue_many(wanted, dry_run=dry_run)
    results = report["results"]
    if not dry_run:
        write_agent_envs(results, output_dir)
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
    state: DeviceState | None = typer.Option(None, "--state", help="Only devices in this state."),
    customer: str | None = typer.Option(None, "--customer", help="Only this customer's devices."),
    as_json: bool = JSON,
) -> None:
    """List devices in the registry."""
    devices = ctx.obj.client().devices(state=state, customer=customer)
    if as_json:
        emit_json(devices)
    else:
        table(f"{len(devices)} devices", _DEVICE_COLUMNS, [_device_row(d) for d in devices])


@device_app.command("show")
def device_show(ctx: typer.Context, serial: str = typer.Argument(..., help="The device's serial."),
                as_json: bool = JSON) -> None:
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
    rows.append(("firmware history", ", ".join(d.get("firmware_history", [])) or "none"))
    rows.append(("CVEs", ", ".join(f"{c['cve_id']} ({c['status']})" for c in d.get("cves", [])) or "none"))
    table(serial, ["field", "value"], rows)
