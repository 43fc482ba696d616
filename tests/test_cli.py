"""The `fleetrig` command line against a `fleetrig serve` process: exit codes, files, JSON."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

FLEETRIG = [sys.executable, "-m", "harness.cli.main"]


def run(*args: str, data_dir: Path | None = None, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    cmd = [*FLEETRIG, *(["--data-dir", str(data_dir)] if data_dir else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("serve") / "data"
    proc = subprocess.Popen(
        [*FLEETRIG, "serve", "--data-dir", str(data_dir), "--http-port", "0", "--mqtts-port", "0", "--repo-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "operator token" in line or proc.poll() is not None:
            break
    assert any("fleetrig platform ready" in line for line in lines), lines
    assert any("mqtts://" in line for line in lines)
    assert run("pms", "customer", "add", "ACME", "--tenant-id", "acme-1", data_dir=data_dir).returncode == 0
    assert run("pms", "part", "add", "evk", data_dir=data_dir).returncode == 0
    assert run("pms", "model", "add", "evk-a", "--part", "evk", data_dir=data_dir).returncode == 0
    try:
        yield data_dir
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_provision_boot_claim_dispose_through_the_cli(served, tmp_path):
    out = tmp_path / "out"
    done = run("pms", "provisioning", "provision", "CLI-001", "CLI-002", "--customer", "ACME", "--part", "evk",
               "--output-dir", str(out), "--json", data_dir=served)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["provisioned"] == 2 and "agent_env" not in report["results"][0]
    env_file = out / "CLI-001" / "agent.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "INIT_KEY=" in env_file.read_text()

    state = tmp_path / "state"
    booted = run("sim", "device", "--agent-env", str(env_file), "--state-dir", str(state), "--family", "photon",
                 "--until", "registered", "--timeout", "60")
    assert booted.returncode == 0, booted.stderr
    assert "CLI-001 registered and live" in booted.stdout
    # Rebooting with stored credentials works.
    again = run("sim", "device", "--agent-env", str(env_file), "--state-dir", str(state), "--family", "photon",
                "--until", "registered")
    assert again.returncode == 0, again.stderr
    # The spent init key alone does not.
    spent = run("sim", "device", "--agent-env", str(env_file), "--state-dir", str(tmp_path / "wiped"),
                "--until", "registered", "--timeout", "30")
    assert spent.returncode == 1
    assert spent.stderr.count("\n") == 1 and "refused the init key" in spent.stderr

    shown = json.loads(run("pms", "device", "show", "CLI-001", "--json", data_dir=served).stdout)
    assert shown["state"] == "registered" and shown["facts"]["product"] == "Photon NX"

    dry = run("fleet", "claim", "--all", "--dry-run", "--json", data_dir=served)
    assert dry.returncode == 0 and json.loads(dry.stdout)["claimed"] >= 2
    claimed = run("fleet", "claim", "CLI-001", "CLI-002", "--json", data_dir=served)
    assert claimed.returncode == 0, claimed.stderr
    assert [r["result"] for r in json.loads(claimed.stdout)["results"]] == ["claimed", "claimed"]
    listed = json.loads(run("fleet", "list", "--json", data_dir=served).stdout)
    assert {"CLI-001", "CLI-002"} <= {d["serial"] for d in listed}
    table = run("fleet", "list", data_dir=served)
    assert table.returncode == 0 and "CLI-001" in table.stdout

    refused = run("eol", "dispose", "CLI-002", "--reason", "end of test", data_dir=served)
    assert refused.returncode == 1 and "confirm with --yes" in refused.stderr
    disposed = run("eol", "dispose", "CLI-002", "--reason", "end of test", "--yes", data_dir=served)
    assert disposed.returncode == 0, disposed.stderr
    gone = run("pms", "device", "show", "CLI-002", data_dir=served)
    assert gone.returncode == 1 and "unknown serial 'CLI-002'" in gone.stderr


def test_refusals_exit_1_with_one_line(served, tmp_path):
    out = tmp_path / "out"
    base = ["pms", "provisioning", "provision", "--part", "evk", "--output-dir", str(out)]
    unknown = run(*base, "R-001", "--customer", "NOBODY", data_dir=served)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().count("\n") == 0 and "unknown customer 'NOBODY'" in unknown.stderr
    assert not out.exists() or not any(out.iterdir())

    assert run(*base, "R-002", "--customer", "ACME", data_dir=served).returncode == 0
    dup = run(*base, "R-002", "R-003", "--customer", "ACME", data_dir=served)
    assert dup.returncode == 1 and "R-002: serial R-002 is already provisioned" in dup.stderr
    assert (out / "R-003" / "agent.env").exists()  # the valid serial still went through

    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    unwritable = run(*base[:-1], str(blocker / "sub"), "R-004", "--customer", "ACME", data_dir=served)
    assert unwritable.returncode == 1 and "output dir" in unwritable.stderr
    assert run("pms", "device", "show", "R-004", data_dir=served).returncode == 1  # nothing provisioned

    bad_env = tmp_path / "agent.env"
    bad_env.write_text("SERIAL=X-1\nBROKER_URL=http://nowhere\n")
    sim = run("sim", "device", "--agent-env", str(bad_env), "--state-dir", str(tmp_path / "s"))
    assert sim.returncode == 1 and "agent.env refused" in sim.stderr and "missing" in sim.stderr

    wrong_token = run("--api", _api(served), "--token", "nope", "pms", "device", "list")
    assert wrong_token.returncode == 1 and "operator token" in wrong_token.stderr


def test_dry_run_writes_no_files(served, tmp_path):
    out = tmp_path / "dry"
    dry = run("pms", "provisioning", "provision", "DRY-001", "--customer", "ACME", "--part", "evk",
              "--output-dir", str(out), "--dry-run", data_dir=served)
    assert dry.returncode == 0 and "would provision 1" in dry.stdout
    assert not out.exists()
    assert run("pms", "device", "show", "DRY-001", data_dir=served).returncode == 1


def test_serials_file_and_reissue(served, tmp_path):
    serials = tmp_path / "serials.txt"
    serials.write_text("# line comment\nSF-001\nSF-002\n\nSF-003\n")
    out = tmp_path / "out"
    done = run("pms", "provisioning", "provision", "--serials-file", str(serials), "--customer", "ACME",
               "--part", "evk", "--output-dir", str(out), "--yes", data_dir=served)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["SF-001", "SF-002", "SF-003"]
    old = (out / "SF-001" / "agent.env").read_text()
    unconfirmed = run("pms", "provisioning", "reissue", "SF-001", "--output-dir", str(out), data_dir=served)
    assert unconfirmed.returncode == 1 and "confirm with --yes" in unconfirmed.stderr
    assert (out / "SF-001" / "agent.env").read_text() == old  # the old key still works
    reissued = run("pms", "provisioning", "reissue", "SF-001", "--output-dir", str(out), "--yes", data_dir=served)
    assert reissued.returncode == 0, reissued.stderr
    assert (out / "SF-001" / "agent.env").read_text() != old
    listing = json.loads(run("pms", "device", "list", "--json", data_dir=served).stdout)
    assert {"SF-001", "SF-002", "SF-003"} <= {d["serial"] for d in listing}


def test_usage_errors_exit_2(served):
    assert run("pms", "provisioning", "provision", "X-1", "--part", "evk", data_dir=served).returncode == 2
    assert run("fleet", "claim", data_dir=served).returncode == 2
    assert run("fleet", "claim", "A-1", "--all", data_dir=served).returncode == 2
    assert run("no-such-command").returncode == 2


def _api(data_dir: Path) -> str:
    return json.loads((data_dir / "platform.json").read_text())["api_url"]


def test_device_management_through_the_cli(served, tmp_path):
    out = tmp_path / "out"
    assert run("pms", "provisioning", "provision", "MGT-001", "--customer", "ACME", "--part", "evk",
               "--output-dir", str(out), data_dir=served).returncode == 0
    device = subprocess.Popen(
        [*FLEETRIG, "sim", "device", "--agent-env", str(out / "MGT-001" / "agent.env"), "--state-dir",
         str(tmp_path / "state"), "--family", "x86"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shown = run("pms", "device", "show", "MGT-001", "--json", data_dir=served)
            if json.loads(shown.stdout).get("connectivity") == "online":
                break
            time.sleep(0.3)
        done = run("config", "set", "MGT-001", "--path", "maxCacheSize:149", "--wait", data_dir=served)
        assert done.returncode == 0, done.stderr
        line = json.loads(done.stdout.strip().splitlines()[0])
        assert line["serial"] == "MGT-001" and line["status"] == 200 and line["job_id"]
        got = run("config", "get", "MGT-001", "--path", "maxCacheSize", "--wait", data_dir=served)
        assert json.loads(got.stdout)["data"] == {"maxCacheSize": "149"}
        bad = run("config", "set", "MGT-001", "--path", "maxCacheSize:many", "--wait", data_dir=served)
        assert bad.returncode == 1 and "whole number" in bad.stderr

        package = tmp_path / "fw.bin"
        package.write_bytes(b"\x7f" * 4096)
        url = run("repo", "add", str(package), data_dir=served)
        assert url.returncode == 0 and url.stdout.strip().startswith("https://")
        key = tmp_path / "signer.key"
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        signature = run("sign", str(package), "--key", str(key))
        assert signature.returncode == 0 and len(signature.stdout.strip()) == 768  # 3072 bits, hex

        job = run("power", "reboot", "MGT-001", "--json", data_dir=served)
        assert job.returncode == 0
        job_id = json.loads(job.stdout)["id"]
        shown = json.loads(run("job", "show", job_id, "--wait", "--json", data_dir=served).stdout)
        assert shown["done"] and shown["results"][0]["status"] == 200
        events = json.loads(run("events", "MGT-001", "--json", data_dir=served).stdout)
        assert any(e["kind"] == "job.succeeded" for e in events)
        telemetry = json.loads(run("telemetry", "MGT-001", "--json", data_dir=served).stdout)
        assert telemetry["static"]["product"] == "NUC8i5BEK"
        refused = run("decommission", "MGT-001", data_dir=served)
        assert refused.returncode == 1 and "confirm with --yes" in refused.stderr
    finally:
        device.send_signal(signal.SIGTERM)
        output, _ = device.communicate(timeout=30)
    assert "MGT-001 rebooting" in output and output.count("powered on") == 2
