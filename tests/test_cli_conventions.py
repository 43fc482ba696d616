"""The CLI's conventions on every command (seed 000, "Automating provisioning").

Every command that changes something takes --dry-run and --yes, and a dry run changes no row
and no file; commands that destroy or reach several devices refuse without a terminal unless
--yes; every option has help and every flag reads as a flag; closed option sets refuse unknown
values and equal their sources; --api/--token come as a pair; serve honours the global data dir.
The command tree is walked, so a new command is held to the same rules without a new test line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from harness.cli import choices
from harness.cli.main import app
from harness.client.files import write_agent_envs
from tests.conftest import boot, provision, table_dump

FLEETRIG = [sys.executable, "-m", "harness.cli.main"]
#: Commands that only read.
READ_ONLY = {
    ("pms", "customer", "list"), ("pms", "part", "list"), ("pms", "device", "list"), ("pms", "device", "show"),
    ("fleet", "list"), ("eol", "list"), ("cve", "list"), ("job", "show"), ("repo", "list"),
    ("events",), ("telemetry",), ("audit",), ("sign",),
}
#: Commands that run a platform or devices in the foreground; they change no platform's records.
RUNNERS = {("serve",), ("demo",), ("sim", "device"), ("sim", "fleet")}


def command_tree() -> Iterator[tuple[tuple[str, ...], typing.Any]]:
    def walk(cmd: typing.Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], typing.Any]]:
        subcommands = getattr(cmd, "commands", None)
        if subcommands is None:
            yield path, cmd
            return
        for name, sub in subcommands.items():
            yield from walk(sub, (*path, name))

    yield from walk(typer.main.get_command(app), ())


def changing_commands() -> set[tuple[str, ...]]:
    return {path for path, _ in command_tree()} - READ_ONLY - RUNNERS


def test_the_tree_is_walked():
    paths = {path for path, _ in command_tree()}
    assert {("pms", "provisioning", "provision"), ("eol", "dispose"), ("config", "set"), ("sim", "fleet")} <= paths
    assert paths >= READ_ONLY | RUNNERS, (READ_ONLY | RUNNERS) - paths


def test_every_changing_command_takes_dry_run_and_yes():
    for path, cmd in command_tree():
        if path in changing_commands():
            names = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
            assert {"--dry-run", "--yes"} <= names, f"fleetrig {' '.join(path)} lacks --dry-run or --yes"


def test_every_parameter_has_help_and_flags_read_as_flags():
    runner = CliRunner()
    for param in typer.main.get_command(app).params:  # the global options
        assert (param.help or "").strip(), f"fleetrig {param.name} has no help"
    for path, cmd in command_tree():
        for param in cmd.params:
            assert (param.help or "").strip(), f"fleetrig {' '.join(path)}: {param.name} has no help"
            if param.type_descriptor.annotation is bool:
                assert param.is_flag, f"fleetrig {' '.join(path)}: {param.name} is a bool but not a flag"
        shown = runner.invoke(app, [*path, "--help"])
        assert shown.exit_code == 0, (path, shown.output)
        assert "<bool>" not in shown.output, f"fleetrig {' '.join(path)} --help:\n{shown.output}"


def _values(literal: typing.Any) -> set[str]:
    return set(typing.get_args(literal))


def test_closed_option_sets_equal_their_sources():
    from agent import rpc_forms, wire
    from harness.platform import models, tracking
    from simulators.families import FAMILY_NAMES

    assert _values(choices.DeviceState) == {models.PROVISIONED, models.REGISTERED, models.CLAIMED,
                                            models.DECOMMISSIONED}
    assert _values(choices.AuthMode) == set(wire.AUTH_MODES)
    assert _values(choices.CveStatus) == set(tracking.CVE_STATES)
    assert _values(choices.Family) == set(FAMILY_NAMES)
    assert _values(choices.AotaApp) == set(rpc_forms._AOTA_APPS.values())
    assert _values(choices.AotaCommand) == set(rpc_forms._AOTA_VERBS.values())
    assert _values(choices.SotaCommand) == set(rpc_forms._SOTA_VERBS.values())
    assert _values(choices.SotaMode) == set(rpc_forms._SOTA_MODES.values())
    assert _values(choices.QueryOption) == set(rpc_forms._QUERY_OPTIONS.values())
    assert _values(choices.YesNo) == set(rpc_forms._YES_NO.values())


@pytest.mark.parametrize("args", [
    ["pms", "device", "list", "--state", "bogus"],
    ["pms", "provisioning", "provision", "X-001", "--customer", "A", "--output-dir", "o", "--auth", "password"],
    ["ota", "aota", "X-001", "--app", "snap", "--cmd", "up"],
    ["ota", "sota", "X-001", "--mode", "everything"],
    ["ota", "fota", "X-001", "--fetch", "u", "--biosversion", "1", "--vendor", "v", "--manufacturer", "m",
     "--product", "p", "--releasedate", "2030-01-01", "--sigversion", "512"],
    ["sign", "f", "--key", "k", "--sigversion", "512"],
    ["query", "X-001", "--option", "everything"],
    ["cve", "add", "X-001", "CVE-2024-0001", "--status", "ignored"],
    ["sim", "device", "--agent-env", "a", "--state-dir", "s", "--family", "arm"],
])
def test_unknown_values_of_closed_options_are_usage_errors(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "is not one of" in result.output


# -- against a platform ---------------------------------------------------------------------------


def _invoke(platform, *args: str) -> typing.Any:
    api = ["--api", platform.platform.api_url, "--token", platform.platform.token]
    return CliRunner().invoke(app, [*api, *args])


def _files(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in sorted(root.rglob("*"))}


@pytest.fixture
async def registered(fleetrig_platform, fleetrig_catalog, tmp_path):
    """DRY-001 and DRY-002 registered (booted once, then off), a package in the repository."""
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["DRY-001", "DRY-002"])
    fleet = await boot(envs, tmp_path / "devices")
    await fleet.stop()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        devices = await asyncio.to_thread(fleetrig_platform.client.devices)
        if all(d["connectivity"] == "offline" for d in devices):
            break
        await asyncio.sleep(0.1)
    work = tmp_path / "work"
    work.mkdir()
    (work / "pkg.bin").write_bytes(b"\x01" * 1024)
    (work / "new.bin").write_bytes(b"\x02" * 1024)
    (work / "manifest.xml").write_text('<?xml version="1.0" encoding="utf-8"?><manifest><type>cmd</type>'
                                       "<cmd>query</cmd><query><option>hw</option></query></manifest>")
    url = (await asyncio.to_thread(fleetrig_platform.client.add_package, work / "pkg.bin"))["url"]
    return fleetrig_platform, work, url


def _dry_runs(work: Path, url: str) -> dict[tuple[str, ...], list[list[str]]]:
    fota = ["--fetch", url, "--biosversion", "2", "--vendor", "v", "--manufacturer", "m", "--product", "p",
            "--releasedate", "2030-01-01"]
    return {
        ("pms", "customer", "add"): [["NEWCO", "--tenant-id", "newco-1"]],
        ("pms", "part", "add"): [["newpart"]],
        ("pms", "model", "add"): [["newmodel", "--part", "evk"]],
        ("pms", "provisioning", "provision"): [["NEW-001", "NEW-002", "--customer", "ACME",
                                                "--output-dir", str(work / "out" / "new")]],
        ("pms", "provisioning", "reissue"): [["DRY-001", "--output-dir", str(work / "out")]],
        ("fleet", "claim"): [["--all"], ["DRY-001", "DRY-002"]],
        ("eol", "dispose"): [["DRY-001", "--reason", "test"]],
        ("cve", "add"): [["DRY-001", "CVE-2024-3094"]],
        ("ota", "manifest"): [["DRY-001", "--file", str(work / "manifest.xml")]],
        ("ota", "aota"): [["--all", "--app", "compose", "--cmd", "up", "--container-tag", "web", "--fetch", url]],
        ("ota", "fota"): [["DRY-001", "DRY-002", *fota, "--sigversion", "256", "--signature", "ab"]],
        ("ota", "sota"): [["--customer", "ACME", "--mode", "download-only"]],
        ("config", "get"): [["DRY-001", "--path", "maxCacheSize"]],
        ("config", "set"): [["--all", "--path", "maxCacheSize:149"]],
        ("config", "append"): [["DRY-001", "--path", "trustedRepositories:https://example.com/"]],
        ("config", "remove"): [["DRY-001", "--path", "trustedRepositories:https://example.com/"]],
        ("config", "load"): [["--customer", "ACME", "--fetch", url]],
        ("power", "reboot"): [["--all"]],
        ("power", "shutdown"): [["DRY-001"]],
        ("decommission",): [["DRY-001", "DRY-002"]],
        ("query",): [["DRY-001", "--option", "hw"]],
        ("repo", "add"): [[str(work / "pkg.bin")], [str(work / "new.bin")]],
        ("agent", "bundle"): [["--out", str(work / "agent.pyz")]],
    }


async def test_a_dry_run_of_each_changing_command_changes_no_row_and_no_file(registered):
    platform, work, url = registered
    runs = _dry_runs(work, url)
    assert set(runs) == changing_commands(), "every changing command needs a dry run here"
    rows, files = table_dump(platform), _files(work, platform.data_dir)
    for path, variants in runs.items():
        for args in variants:
            result = await asyncio.to_thread(_invoke, platform, *path, *args, "--dry-run")
            assert result.exit_code == 0, f"fleetrig {' '.join([*path, *args])} --dry-run: {result.output}"
            assert "would" in result.output, result.output
    assert table_dump(platform) == rows
    assert _files(work, platform.data_dir) == files


async def test_a_dry_run_refuses_what_the_real_run_would(registered):
    platform, _work, url = registered
    rows = table_dump(platform)
    bad = [
        (["pms", "model", "add", "m2", "--part", "nopart"], "unknown part 'nopart'"),
        (["pms", "customer", "add", "ACME", "--tenant-id", "other"], "exists already"),
        (["eol", "dispose", "NOPE-001", "--reason", "x"], "unknown serial 'NOPE-001'"),
        (["cve", "add", "DRY-001", "CVE-24"], "is not a CVE id"),
        (["config", "set", "DRY-001", "--path", ""], "path"),
        (["ota", "fota", "DRY-001", "--fetch", url, "--biosversion", "2", "--vendor", "v", "--manufacturer", "m",
          "--product", "p", "--releasedate", "soon"], "field 'releasedate' must be a date"),
        (["power", "reboot", "NOPE-001"], "unknown serial 'NOPE-001'"),
    ]
    for args, needle in bad:
        result = await asyncio.to_thread(_invoke, platform, *args, "--dry-run")
        assert result.exit_code == 1, (args, result.output)
        assert needle in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)
    assert table_dump(platform) == rows


async def test_destroying_or_reaching_many_needs_yes_without_a_terminal(registered):
    platform, work, _url = registered
    rows, files = table_dump(platform), _files(work, platform.data_dir)
    unconfirmed = [
        ["pms", "provisioning", "reissue", "DRY-001", "--output-dir", str(work / "out")],
        ["eol", "dispose", "DRY-001", "--reason", "test"],
        ["decommission", "DRY-001"],
        ["power", "shutdown", "DRY-001"],
        ["power", "reboot", "--all"],
        ["config", "set", "--customer", "ACME", "--path", "maxCacheSize:149"],
        ["query", "DRY-001", "DRY-002"],
        ["repo", "add", str(work / "pkg.bin")],
    ]
    for args in unconfirmed:
        result = await asyncio.to_thread(_invoke, platform, *args)
        assert result.exit_code == 1, (args, result.output)
        assert "confirm with --yes" in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)
    assert table_dump(platform) == rows
    assert _files(work, platform.data_dir) == files
    # With --yes they go ahead: the device is gone, the disposal is listed.
    done = await asyncio.to_thread(_invoke, platform, "eol", "dispose", "DRY-001", "--reason", "test", "--yes")
    assert done.exit_code == 0, done.output
    listed = await asyncio.to_thread(_invoke, platform, "eol", "list", "--json")
    assert [d["serial"] for d in json.loads(listed.stdout)] == ["DRY-001"]
    history = await asyncio.to_thread(_invoke, platform, "audit", "DRY-001", "--json")
    actions = [e["action"] for e in json.loads(history.stdout)]
    assert actions[0] == "device.dispose" and "device.provision" in actions


async def test_cve_records_through_the_cli(registered):
    platform, _, _ = registered
    for args in (["cve", "add", "DRY-001", "CVE-2024-3094"], ["cve", "add", "DRY-002", "CVE-2023-44487",
                                                              "--status", "mitigated"]):
        assert (await asyncio.to_thread(_invoke, platform, *args)).exit_code == 0
    listed = json.loads((await asyncio.to_thread(_invoke, platform, "cve", "list", "--json")).stdout)
    assert {(r["serial"], r["cve_id"], r["status"]) for r in listed} == {
        ("DRY-001", "CVE-2024-3094", "open"), ("DRY-002", "CVE-2023-44487", "mitigated")}
    mitigated = await asyncio.to_thread(_invoke, platform, "cve", "list", "--status", "mitigated", "--json")
    assert [r["serial"] for r in json.loads(mitigated.stdout)] == ["DRY-002"]
    await asyncio.to_thread(_invoke, platform, "eol", "dispose", "DRY-001", "--reason", "test", "--yes")
    after = json.loads((await asyncio.to_thread(_invoke, platform, "cve", "list", "--json")).stdout)
    assert [r["serial"] for r in after] == ["DRY-002"]  # the disposal removed DRY-001's record


def test_part_may_be_left_out_only_when_there_is_one(fleetrig_platform, fleetrig_catalog, tmp_path):
    out = tmp_path / "out"
    one = _invoke(fleetrig_platform, "pms", "provisioning", "provision", "LOOP-001", "--customer", "ACME",
                  "--output-dir", str(out))
    assert one.exit_code == 0, one.output
    assert (out / "LOOP-001" / "agent.env").exists()
    assert fleetrig_platform.client.device("LOOP-001")["part"] == fleetrig_catalog.part
    fleetrig_platform.client.add_part("other")
    two = _invoke(fleetrig_platform, "pms", "provisioning", "provision", "LOOP-002", "--customer", "ACME",
                  "--output-dir", str(out))
    assert two.exit_code == 2 and "evk, other" in two.stderr and "--part" in two.stderr
    assert not (out / "LOOP-002").exists()


def test_api_and_token_are_a_pair_and_win_over_a_data_dir(fleetrig_platform, tmp_path, monkeypatch):
    for name in ("FLEETRIG_API", "FLEETRIG_TOKEN", "FLEETRIG_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    api, token = fleetrig_platform.platform.api_url, fleetrig_platform.platform.token
    half = runner.invoke(app, ["--api", api, "pms", "customer", "list"])
    assert half.exit_code == 1 and "--token" in half.stderr and "FLEETRIG_TOKEN" in half.stderr
    other_half = runner.invoke(app, ["pms", "customer", "list"], env={"FLEETRIG_TOKEN": token})
    assert other_half.exit_code == 1 and "--api" in other_half.stderr
    bogus = tmp_path / "not-a-platform"
    both = runner.invoke(app, ["--data-dir", str(bogus), "--api", api, "--token", token, "pms", "customer", "list"])
    assert both.exit_code == 0, both.output
    from_env = runner.invoke(app, ["pms", "customer", "list"], env={"FLEETRIG_API": api, "FLEETRIG_TOKEN": token})
    assert from_env.exit_code == 0, from_env.output
    dir_only = runner.invoke(app, ["--data-dir", str(fleetrig_platform.data_dir), "pms", "customer", "list"])
    assert dir_only.exit_code == 0, dir_only.output


def _serve(args: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    """Start `fleetrig ... serve`, read its banner, stop it; return the banner lines."""
    proc = subprocess.Popen([*FLEETRIG, *args, "--http-port", "0", "--mqtts-port", "0", "--repo-port", "0"],
                            cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            lines.append(proc.stdout.readline())
            if "operator token" in lines[-1]:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return lines


def test_serve_honours_the_global_data_dir_and_its_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETRIG_")}
    flag = tmp_path / "by-flag"
    banner = _serve(["--data-dir", str(flag), "serve"], env, tmp_path)
    assert any(f"data dir:       {flag}" in line for line in banner), banner
    assert (flag / "platform.json").exists() and not (tmp_path / ".fleetrig").exists()
    variable = tmp_path / "by-variable"
    banner = _serve(["serve"], {**env, "FLEETRIG_DATA_DIR": str(variable)}, tmp_path)
    assert (variable / "platform.json").exists() and not (tmp_path / ".fleetrig").exists(), banner


def test_serve_help_documents_every_port():
    from harness.platform.process import DEFAULT_HTTP_PORT, DEFAULT_MQTTS_PORT, DEFAULT_REPO_PORT

    shown = " ".join(CliRunner().invoke(app, ["serve", "--help"]).output.split())
    for option, port in (("--http-port", DEFAULT_HTTP_PORT), ("--mqtts-port", DEFAULT_MQTTS_PORT),
                         ("--repo-port", DEFAULT_REPO_PORT)):
        assert option in shown and str(port) in shown
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f":{DEFAULT_REPO_PORT}" in readme and "--repo-port" in readme


def test_sim_fleet_runs_every_agent_env_and_stops_by_itself(fleetrig_platform, fleetrig_catalog, tmp_path):
    report = fleetrig_platform.client.provision(["FLT-001", "FLT-002", "FLT-003"], customer="ACME", part="evk")
    write_agent_envs(report["results"], tmp_path / "out")
    empty = subprocess.run([*FLEETRIG, "sim", "fleet", "--agent-env-dir", str(tmp_path / "none")],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "no SERIAL/agent.env" in empty.stderr
    ran = subprocess.run([*FLEETRIG, "sim", "fleet", "--agent-env-dir", str(tmp_path / "out"), "--state-dir",
                          str(tmp_path / "dev"), "--duration", "8"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "fleet ready: 3 of 3 devices live" in ran.stdout and "fleet stopped" in ran.stdout
    devices = {d["serial"]: d for d in fleetrig_platform.client.devices()}
    assert all(devices[s]["state"] == "registered" for s in ("FLT-001", "FLT-002", "FLT-003"))
    assert {devices[s]["family"] for s in devices} == {"imx", "photon", "x86"}  # the families take turns
