"""agent.env: what provisioning writes, the agent reads back; bad files are refused by line."""

from __future__ import annotations

import base64

import pytest

from agent.env import AgentEnv, AgentEnvError, load_agent_env, parse_agent_env

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
GOOD = AgentEnv("SN-0001", "acme-1", "mqtts://127.0.0.1:8883", "k" * 32, CA)


def test_round_trip():
    text = GOOD.render()
    assert parse_agent_env(text) == GOOD
    assert parse_agent_env(text.replace("SERIAL=SN-0001", 'export SERIAL="SN-0001"')) == GOOD
    env = parse_agent_env(text)
    assert (env.broker_host, env.broker_port, env.uses_tls) == ("127.0.0.1", 8883, True)


def _with(line_from: str, line_to: str) -> str:
    text = GOOD.render()
    assert line_from in text
    return text.replace(line_from, line_to)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "missing SERIAL, TENANT_ID, BROKER_URL, INIT_KEY, CA_CERT"),
        ("SERIAL\n", "agent.env:1: expected KEY=VALUE"),
        (_with("SERIAL=SN-0001", "SERIAL=bad serial"), "SERIAL: malformed serial"),
        (_with("SERIAL=SN-0001", "SERIAL=SN-0001\nSERIAL=SN-0002"), "SERIAL is set twice"),
        (_with("SERIAL=SN-0001", "SERIAL=SN-0001\nPASSWORD=x"), "unknown key PASSWORD"),
        (_with("BROKER_URL=mqtts://127.0.0.1:8883", "BROKER_URL=http://x"), "must look like mqtts://HOST:PORT"),
        (_with("BROKER_URL=mqtts://127.0.0.1:8883", "BROKER_URL=mqtts://x:99999"), "invalid port"),
        (_with("INIT_KEY=" + "k" * 32, "INIT_KEY=short"), "INIT_KEY is not a key"),
        (_with("AUTH=x509", "AUTH=psk"), "AUTH must be one of"),
        (_with("TENANT_ID=acme-1", "TENANT_ID=a b"), "TENANT_ID"),
        (_with(base64.b64encode(CA.encode()).decode(), "%%%"), "CA_CERT: not base64"),
        (_with(base64.b64encode(CA.encode()).decode(), base64.b64encode(b"hello").decode()),
         "CA_CERT: decodes to text without"),
    ],
)
def test_malformed_files_are_refused_with_the_reason(text, message):
    with pytest.raises(AgentEnvError, match=message):
        parse_agent_env(text)


def test_unreadable_files(tmp_path):
    with pytest.raises(AgentEnvError, match="no such file"):
        load_agent_env(tmp_path / "missing.env")
    big = tmp_path / "big.env"
    big.write_text("#" * 70_000)
    with pytest.raises(AgentEnvError, match="larger than"):
        load_agent_env(big)
    binary = tmp_path / "bin.env"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(AgentEnvError, match="cannot read"):
        load_agent_env(binary)
