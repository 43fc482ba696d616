"""agent.env: what provisioning writes, the agent reads back; bad files are refused by line.

A device flashed with a broken file must say so on its console in one line that names the
file and the problem, and stop: a traceback, a hang on a named pipe, an endless read of a
link to /dev/zero, or silent retries against a garbage CA are all ways of not saying it.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.env import MAX_FILE_BYTES, AgentEnv, AgentEnvError, load_agent_env, parse_agent_env
from tests.agent_helpers import certificate

ROOT = Path(__file__).resolve().parent.parent


CA = certificate("test CA", ca=True)
GOOD = AgentEnv("SN-0001", "acme-1", "mqtts://127.0.0.1:8883", "k" * 32, CA)
B64_CA = base64.b64encode(CA.encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_round_trip():
    text = GOOD.render()
    assert parse_agent_env(text) == GOOD
    assert parse_agent_env(text.replace("SERIAL=SN-0001", 'export SERIAL="SN-0001"')) == GOOD
    env = parse_agent_env(text)
    assert (env.broker_host, env.broker_port, env.uses_tls) == ("127.0.0.1", 8883, True)
    v6 = parse_agent_env(_with("BROKER_URL=mqtts://127.0.0.1:8883", "BROKER_URL=mqtts://[::1]:8883"))
    assert (v6.broker_host, v6.broker_port) == ("::1", 8883)


def _with(line_from: str, line_to: str) -> str:
    text = GOOD.render()
    assert line_from in text
    return text.replace(line_from, line_to)


GARBAGE_PEM = "-----BEGIN CERTIFICATE-----\nMIIBnotreallyacertificate\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "missing SERIAL, TENANT_ID, BROKER_URL, INIT_KEY, CA_CERT"),
        ("SERIAL\n", "agent.env:1: expected KEY=VALUE"),
        (_with("SERIAL=SN-0001", "SERIAL=bad serial"), "SERIAL: malformed serial"),
        (_with("SERIAL=SN-0001", "SERIAL=SN-0001\nSERIAL=SN-0002"), "SERIAL is set twice"),
        (_with("SERIAL=SN-0001", "SERIAL=SN-0001\nPASSWORD=x"), "unknown key PASSWORD"),
        (_with("BROKER_URL=mqtts://127.0.0.1:8883", "BROKER_URL=http://x"), "must look like mqtts://HOST:PORT"),
        (_with("BROKER_URL=mqtts://127.0.0.1:8883", "BROKER_URL=mqtts://x:99999"), "BROKER_URL .* not a valid URL"),
        (_with("BROKER_URL=mqtts://127.0.0.1:8883", "BROKER_URL=mqtts://[::1:8883"),
         r"agent.env: BROKER_URL 'mqtts://\[::1:8883' is not a valid URL: Invalid IPv6 URL"),
        (_with("BROKER_URL=mqtts://127.0.0.1:8883", "BROKER_URL=mqtts://[zz::1]:8883"), "is not a valid URL"),
        (_with("SERIAL=SN-0001", "SERIAL=SN-0001\nREPO_URL=https://[::1/repo/"), "REPO_URL .* not a valid URL"),
        (_with("INIT_KEY=" + "k" * 32, "INIT_KEY=short"), "INIT_KEY is not a key"),
        (_with("AUTH=x509", "AUTH=psk"), "AUTH must be one of"),
        (_with("TENANT_ID=acme-1", "TENANT_ID=a b"), "TENANT_ID"),
        (_with(B64_CA, "%%%"), "agent.env: CA_CERT: not base64"),
        (_with(B64_CA, b64("hello")), "CA_CERT: decodes to text without"),
        (_with(B64_CA, b64(GARBAGE_PEM)), "agent.env: CA_CERT: not a valid certificate"),
        (_with(B64_CA, b64(certificate("a device", ca=False))), "CA_CERT: the certificate is not a CA certificate"),
        (_with("SERIAL=SN-0001", f"SERIAL=SN-0001\nSIGNATURE_CERT={b64(GARBAGE_PEM)}"),
         "SIGNATURE_CERT: not a valid certificate"),
    ],
)
def test_malformed_files_are_refused_with_the_reason(text, message):
    with pytest.raises(AgentEnvError, match=message):
        parse_agent_env(text)


def test_unreadable_files(tmp_path):
    with pytest.raises(AgentEnvError, match="no such file"):
        load_agent_env(tmp_path / "missing.env")
    big = tmp_path / "big.env"
    big.write_text("#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(AgentEnvError, match="larger than"):
        load_agent_env(big)
    binary = tmp_path / "bin.env"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(AgentEnvError, match="cannot read: not UTF-8 text"):
        load_agent_env(binary)
    with pytest.raises(AgentEnvError, match="is a directory, not a regular file"):
        load_agent_env(tmp_path)


def test_special_files_are_refused_before_a_byte_is_read(tmp_path):
    zero = tmp_path / "zero.env"
    zero.symlink_to("/dev/zero")  # never ends: a read until EOF would fill the memory
    with pytest.raises(AgentEnvError, match=r"zero.env: is a character device, not a regular file"):
        load_agent_env(zero)
    fifo = tmp_path / "fifo.env"
    os.mkfifo(fifo)  # no writer: a blocking open would hang the boot for ever
    with pytest.raises(AgentEnvError, match=r"fifo.env: is a named pipe, not a regular file"):
        load_agent_env(fifo)
    good = tmp_path / "link.env"
    (tmp_path / "real.env").write_text(GOOD.render())
    good.symlink_to(tmp_path / "real.env")  # a link to a plain file is fine
    assert load_agent_env(good) == GOOD


def _agent_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize("kind", ["zero", "fifo", "ipv6", "garbage-ca", "missing"])
def test_the_agent_says_what_is_wrong_in_one_line_and_exits_1(tmp_path, kind):
    path = tmp_path / "agent.env"
    if kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "ipv6":
        path.write_text(_with("BROKER_URL=mqtts://127.0.0.1:8883", "BROKER_URL=mqtts://[::1:8883"))
    elif kind == "garbage-ca":
        path.write_text(_with(B64_CA, b64(GARBAGE_PEM)))
    done = _agent_cli("--env", str(path), "--state", str(tmp_path / "state"), "--until", "registered",
                      "--timeout", "5")
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"fleetrig-agent: error: agent.env refused: {path}"), lines
    assert not (tmp_path / "state").exists()  # refused before anything was written


def test_usage_errors_exit_2():
    done = _agent_cli("--until", "forever")
    assert done.returncode == 2 and "invalid choice: 'forever'" in done.stderr
    assert _agent_cli("--help").returncode == 0


def test_until_registered_gives_up_with_the_last_error(tmp_path):
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        path = tmp_path / "agent.env"
        path.write_text(_with("BROKER_URL=mqtts://127.0.0.1:8883", f"BROKER_URL=mqtts://127.0.0.1:{port}"))
        done = _agent_cli("--env", str(path), "--state", str(tmp_path / "state"), "--until", "registered",
                          "--timeout", "2", "--max-backoff", "0.5")
    assert done.returncode == 1, done
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("fleetrig-agent: error: SN-0001 not live after 2s: MqttError:"), done.stderr
    assert "Connection refused" in last and "Traceback" not in done.stderr
