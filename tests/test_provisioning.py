"""Provisioning: bulk, dry run, refusals, reissue (one device, and a whole lost batch)."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess

import pytest

from agent.env import parse_agent_env
from harness.client.files import check_output_dir, write_agent_envs
from harness.errors import Refused
from harness.platform.identities import digest
from tests.conftest import boot, connect_refused, free_port, mqtt_client, provision, table_dump
from tests.serve_process import FLEETRIG


def test_bulk_provisioning_of_1000_serials_in_one_request(fleetrig_platform, fleetrig_catalog, tmp_path):
    serials = [f"BULK-{i:05d}" for i in range(1000)]
    report = fleetrig_platform.client.provision(serials, customer="ACME", part="evk")
    assert report["provisioned"] == 1000 and report["refused"] == 0
    assert [r["serial"] for r in report["results"]] == serials
    written = write_agent_envs(report["results"], tmp_path / "out")
    assert len(written) == 1000
    keys = set()
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        env = parse_agent_env(path.read_text())
        assert env.serial == path.parent.name
        assert env.tenant_id == "acme-0001"
        assert env.broker_url == fleetrig_platform.platform.broker_url
        assert "BEGIN CERTIFICATE" in env.ca_cert_pem
        assert len(env.init_key) >= 22  # >= 128 bits of URL-safe base64
        keys.add(env.init_key)
    assert len(keys) == 1000
    devices = fleetrig_platform.client.devices()
    assert len(devices) == 1000 and {d["state"] for d in devices} == {"provisioned"}
    dump = table_dump(fleetrig_platform)
    assert len(dump["init_keys"]) == 1000
    # Only digests are stored: no key appears anywhere in the registry.
    flat = repr(dump)
    assert not any(k in flat for k in list(keys)[:50])
    assert digest(next(iter(keys))) in flat
    # One bulk request is one audit event.
    audit = fleetrig_platform.client.audit()
    assert [e["detail"]["count"] for e in audit if e["action"] == "device.provision"] == [1000]


def test_dry_run_changes_no_rows_and_no_files(fleetrig_platform, fleetrig_catalog, tmp_path):
    provision(fleetrig_platform, fleetrig_catalog, ["EXIST-001"])
    before = table_dump(fleetrig_platform)
    report = fleetrig_platform.client.provision(
        ["NEW-001", "NEW-002", "EXIST-001"], customer="ACME", part="evk", dry_run=True
    )
    assert report["dry_run"] is True
    assert [r["ok"] for r in report["results"]] == [True, True, False]
    assert all(r["agent_env"] == "" for r in report["results"])
    assert table_dump(fleetrig_platform) == before
    assert fleetrig_platform.ctx.identities.get("NEW-001") is None


def test_refusals_name_the_culprit(fleetrig_platform, fleetrig_catalog):
    client = fleetrig_platform.client
    with pytest.raises(Refused, match="unknown customer 'NOPE'") as info:
        client.provision(["A-001"], customer="NOPE", part="evk")
    assert info.value.status == 404
    with pytest.raises(Refused, match="unknown part 'nopart'"):
        client.provision(["A-001"], customer="ACME", part="nopart")
    client.add_part("bare")
    with pytest.raises(Refused, match="part 'bare' has no model assigned"):
        client.provision(["A-001"], customer="ACME", part="bare")
    with pytest.raises(Refused, match="customer 'ACME' exists already"):
        client.add_customer("ACME", "other-tenant")
    with pytest.raises(Refused, match="tenant id 'acme-0001' belongs to another customer"):
        client.add_customer("Other", "acme-0001")
    with pytest.raises(Refused, match="tenant id"):
        client.add_customer("Other", "bad tenant!")

    provision(fleetrig_platform, fleetrig_catalog, ["DUP-001"])
    report = client.provision(["DUP-001", "OK-001", "bad serial!", "OK-002", "OK-002"], customer="ACME", part="evk")
    errors = {r["serial"]: r["error"] for r in report["results"] if not r["ok"]}
    assert errors["DUP-001"] == ("serial DUP-001 is already provisioned; if its agent.env was lost, get a new one "
                                 "with 'fleetrig pms provisioning reissue DUP-001'")
    assert "malformed serial 'bad serial!'" in errors["bad serial!"]
    assert errors["OK-002"] == "serial OK-002 appears twice in the request"
    assert report["provisioned"] == 2  # OK-001 and the first OK-002 still went through
    assert {d["serial"] for d in client.devices()} == {"DUP-001", "OK-001", "OK-002"}


def test_atomic_request_refuses_all_on_one_refusal(fleetrig_platform, fleetrig_catalog):
    provision(fleetrig_platform, fleetrig_catalog, ["AT-001"])
    before = table_dump(fleetrig_platform)
    report = fleetrig_platform.client.provision(["AT-002", "AT-001", "AT-003"], customer="ACME", part="evk",
                                                atomic=True)
    assert report["provisioned"] == 0 and report["refused"] == 3
    assert "another serial of this atomic request" in report["results"][0]["error"]
    assert table_dump(fleetrig_platform) == before


def test_unwritable_output_dir_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    (tmp_path / "file").write_text("x")
    try:
        with pytest.raises(Refused, match=r"is not a directory|not writable|cannot create"):
            check_output_dir(tmp_path / "file")
        if not _running_as_root():
            with pytest.raises(Refused, match=r"not writable|cannot create"):
                check_output_dir(locked / "sub")
    finally:
        locked.chmod(0o700)


def _running_as_root() -> bool:
    import os

    return os.geteuid() == 0


def test_several_models_need_a_choice(fleetrig_platform, fleetrig_catalog):
    client = fleetrig_platform.client
    client.add_model("evk-rev-b", "evk")
    with pytest.raises(Refused, match=r"several models \(evk-rev-a, evk-rev-b\); choose one with --model"):
        client.provision(["M-001"], customer="ACME", part="evk")
    report = client.provision(["M-001"], customer="ACME", part="evk", model="evk-rev-b")
    assert report["provisioned"] == 1
    assert client.device("M-001")["model"] == "evk-rev-b"


async def test_reissue_kills_the_old_key(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["RE-001"])
    old = envs["RE-001"]
    result = await asyncio.to_thread(fleetrig_platform.client.reissue, "RE-001")
    new = parse_agent_env(result["agent_env"])
    assert new.init_key != old.init_key and new.serial == old.serial
    shown = await asyncio.to_thread(fleetrig_platform.client.device, "RE-001")
    assert [k["revoked_at"] is not None for k in shown["init_keys"]] == [True, False]

    refused = await connect_refused(
        mqtt_client(old, client_id="RE-001", username="RE-001", password="init:" + old.init_key)
    )
    assert "authori" in refused.lower()
    fleet = await boot({"RE-001": new}, tmp_path / "devices")
    assert (await asyncio.to_thread(fleetrig_platform.client.device, "RE-001"))["state"] == "registered"
    await fleet.stop()
    with pytest.raises(Refused, match="unknown serial 'NOPE-1'"):
        await asyncio.to_thread(fleetrig_platform.client.reissue, "NOPE-1")


async def test_a_batch_whose_files_were_lost_is_recovered_by_one_bulk_reissue(fleetrig_platform, fleetrig_catalog,
                                                                              tmp_path):
    """A kill right after the provisioning commit: 500 rows, no agent.env file anywhere."""
    serials = [f"LOST-{i:04d}" for i in range(500)]
    lost = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, serials)  # never written
    retry = await asyncio.to_thread(fleetrig_platform.client.provision, serials, customer="ACME", part="evk")
    assert retry["refused"] == 500
    assert all(r["error"].endswith(f"get a new one with 'fleetrig pms provisioning reissue {r['serial']}'")
               for r in retry["results"])

    serials_file = tmp_path / "serials.txt"
    serials_file.write_text("# the lost batch\n" + "\n".join(serials) + "\n")
    out = tmp_path / "out"
    done = await asyncio.to_thread(run_cli, fleetrig_platform, "pms", "provisioning", "reissue", "--serials-file",
                                   str(serials_file), "--output-dir", str(out), "--json", "--yes")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["reissued"] == 500 and report["refused"] == 0
    assert [r["serial"] for r in report["results"]] == serials
    files = sorted(out.glob("*/agent.env"))
    assert len(files) == 500 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    envs = {f.parent.name: parse_agent_env(f.read_text()) for f in files}
    assert {e.init_key for e in envs.values()}.isdisjoint(e.init_key for e in lost.values())
    assert len({e.init_key for e in envs.values()}) == 500
    audit = await asyncio.to_thread(fleetrig_platform.client.audit, None, 1000)
    assert sum(e["action"] == "device.reissue" for e in audit) == 500

    # The lost keys are dead; the new files boot devices over the real broker.
    old = lost[serials[0]]
    refused = await connect_refused(
        mqtt_client(old, client_id=old.serial, username=old.serial, password="init:" + old.init_key))
    assert "authori" in refused.lower()
    chosen = serials[::125]
    fleet = await boot({s: envs[s] for s in chosen}, tmp_path / "devices")
    states = {d["serial"]: d["state"] for d in await asyncio.to_thread(fleetrig_platform.client.devices)}
    assert [states[s] for s in chosen] == ["registered"] * len(chosen)
    assert sum(state == "provisioned" for state in states.values()) == 500 - len(chosen)
    await fleet.stop()


def test_bulk_reissue_refuses_per_serial_and_a_dry_run_changes_nothing(fleetrig_platform, fleetrig_catalog, tmp_path):
    provision(fleetrig_platform, fleetrig_catalog, ["RB-001", "RB-002"])
    client = fleetrig_platform.client
    before = table_dump(fleetrig_platform)
    dry = client.reissue_many(["RB-001", "RB-002"], dry_run=True)
    assert dry["dry_run"] and dry["reissued"] == 2 and all(r["agent_env"] == "" for r in dry["results"])
    assert table_dump(fleetrig_platform) == before

    client.dispose("RB-002", "broken", confirm=True)
    report = client.reissue_many(["RB-001", "NOPE-9", "RB-001", "bad serial!", "RB-002"])
    assert [(r["serial"], r["ok"]) for r in report["results"]] == [
        ("RB-001", True), ("NOPE-9", False), ("RB-001", False), ("bad serial!", False), ("RB-002", False)]
    errors = [r["error"] for r in report["results"]]
    assert errors[1] == "unknown serial 'NOPE-9': provision it first"
    assert errors[2] == "serial RB-001 appears twice in the request"
    assert "malformed serial" in errors[3]
    assert errors[4] == "serial RB-002 was disposed; end of life is permanent"
    assert report["reissued"] == 1 and parse_agent_env(report["results"][0]["agent_env"]).serial == "RB-001"

    out = tmp_path / "out"
    done = run_cli(fleetrig_platform, "pms", "provisioning", "reissue", "RB-001", "NOPE-9", "--output-dir", str(out),
                   "--yes")
    assert done.returncode == 1
    assert done.stderr == ("fleetrig: error: 1 of 2 serial(s) refused; NOPE-9: unknown serial 'NOPE-9': "
                           "provision it first\n")
    assert [p.parent.name for p in out.glob("*/agent.env")] == ["RB-001"]  # the good one is written
    with pytest.raises(Refused, match="serials: List should have at least 1 item"):
        client.reissue_many([])


def test_provisioning_that_loses_the_platform_says_how_to_recover(tmp_path):
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [*FLEETRIG, "--api", f"http://127.0.0.1:{port}", "--token", "t", "pms", "provisioning", "provision", "X-1",
         "--customer", "ACME", "--part", "evk", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert f"cannot reach the platform at http://127.0.0.1:{port}" in done.stderr
    hint = f"'fleetrig pms provisioning reissue --serials-file FILE --output-dir {tmp_path / 'out'} --yes'"
    assert hint in done.stderr


def run_cli(platform, *args: str) -> subprocess.CompletedProcess:
    """The fleetrig CLI against the test's platform."""
    return subprocess.run([*FLEETRIG, "--api", platform.platform.api_url, "--token", platform.platform.token, *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
