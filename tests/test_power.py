"""Power drivers: real commands switch a (file) relay; failures name the device, command, code and stderr."""

from __future__ import annotations

import io
import os
import shlex
from pathlib import Path

import pytest

from harness.drivers.command import STDERR_TAIL_CHARS
from harness.drivers.power import (
    OFF,
    ON,
    UNKNOWN,
    ExternalPower,
    ManualPower,
    PowerError,
    SimPower,
    power_from_spec,
)
from harness.lab.inventory import PowerSpec


def relay(log: Path, word: str) -> str:
    """A relay command: appends `word` to the relay's log file, as a real relay tool flips a pin."""
    return f"sh -c {shlex.quote(f'echo {word} >> {shlex.quote(str(log))}')}"


def switched(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_on_off_run_the_commands_and_record_the_state(tmp_path):
    log = tmp_path / "relay"
    power = ExternalPower("bench-1", relay(log, "on"), relay(log, "off"))
    assert power.state == UNKNOWN
    power.on()
    assert (switched(log), power.state) == (["on"], ON)
    power.off()
    assert (switched(log), power.state) == (["on", "off"], OFF)


def test_cycle_without_a_cycle_command_is_off_pause_on(tmp_path):
    log, pauses = tmp_path / "relay", []
    power = ExternalPower("bench-1", relay(log, "on"), relay(log, "off"), delay=1.5, sleep=pauses.append)
    power.cycle()
    assert (switched(log), pauses, power.state) == (["off", "on"], [1.5], ON)


def test_cycle_uses_the_labs_cycle_command(tmp_path):
    log, pauses = tmp_path / "relay", []
    power = ExternalPower("bench-1", relay(log, "on"), relay(log, "off"), relay(log, "cycle"), sleep=pauses.append)
    power.cycle()
    assert (switched(log), pauses, power.state) == (["cycle"], [], ON)


def test_a_failing_command_names_device_command_code_and_stderr_tail(tmp_path):
    log = tmp_path / "relay"
    power = ExternalPower("bench-1", "sh -c 'echo relay R1 busy >&2; exit 3'", relay(log, "off"))
    power.off()
    with pytest.raises(PowerError) as caught:
        power.on()
    message = str(caught.value)
    assert message.startswith("bench-1: power on: `sh -c 'echo relay R1 busy >&2; exit 3'` exited with 3")
    assert message.endswith("relay R1 busy")
    assert power.state == UNKNOWN   # the plug is in doubt after a failed switch


def test_a_long_stderr_is_cut_to_its_tail():
    noisy = "sh -c 'i=0; while [ $i -lt 500 ]; do echo line $i >&2; i=$((i+1)); done; echo THE CAUSE >&2; exit 1'"
    with pytest.raises(PowerError) as caught:
        ExternalPower("bench-1", noisy, "true").on()
    message = str(caught.value)
    assert message.endswith("THE CAUSE") and "line 0 " not in message
    assert len(message) < STDERR_TAIL_CHARS + 300


def test_a_missing_tool_and_a_hung_tool_are_named():
    with pytest.raises(PowerError, match=r"bench-1: power on: command not found: 'no-such-relay-tool'"):
        ExternalPower("bench-1", "no-such-relay-tool 1 on", "true").on()
    with pytest.raises(PowerError, match=r"bench-1: power off: `sleep 30` did not finish within 0.3 s"):
        ExternalPower("bench-1", "true", "sleep 30", timeout=0.3).off()


def test_bad_commands_are_refused_when_the_driver_is_made():
    with pytest.raises(PowerError, match=r"bench-1: power on command .*No closing quotation"):
        ExternalPower("bench-1", "relay 'on", "relay off")
    with pytest.raises(PowerError, match="bench-1: power off command is empty"):
        ExternalPower("bench-1", "relay on", "   ")


def test_manual_power_without_a_terminal_refuses_and_says_what_to_do():
    power = ManualPower("bench-2", stdin=io.StringIO("\n"), stdout=io.StringIO())
    with pytest.raises(PowerError) as caught:
        power.on()
    message = str(caught.value)
    assert "bench-2: power driver 'manual' needs an operator at a terminal" in message
    assert "switch power of bench-2 ON by hand" in message and "'external' power driver in lab.yaml" in message
    assert power.state == UNKNOWN


def test_manual_power_asks_at_a_terminal_and_waits_for_enter():
    master, slave = os.openpty()
    try:
        with open(slave, closefd=False) as tty:
            out = io.StringIO()
            power = ManualPower("bench-2", stdin=tty, stdout=out)
            os.write(master, b"\n")
            power.cycle()
            assert power.state == ON
            assert "bench-2: switch power of bench-2 OFF, wait a few seconds, and switch it ON again" in out.getvalue()
            os.write(master, b"done\n")
            power.off()
            assert power.state == OFF
    finally:
        os.close(master)
        os.close(slave)


def test_sim_power_calls_the_simulators_callables():
    calls: list[str] = []
    power = SimPower("sim-1", lambda: calls.append("on"), lambda: calls.append("off"))
    power.on()
    power.cycle()
    power.off()
    assert (calls, power.state) == (["on", "off", "on", "off"], OFF)


def test_power_from_spec_builds_the_named_driver(tmp_path):
    log = tmp_path / "relay"
    external = power_from_spec("bench-1", PowerSpec(driver="external", on=relay(log, "on"), off=relay(log, "off")))
    external.on()
    assert switched(log) == ["on"]
    assert isinstance(power_from_spec("bench-2", PowerSpec(driver="manual")), ManualPower)
    calls: list[str] = []
    sim = power_from_spec("sim-1", PowerSpec(driver="sim"), sim=(lambda: calls.append("on"), lambda: None))
    sim.on()
    assert calls == ["on"]
    with pytest.raises(PowerError, match="sim-1: power driver 'sim' works only on a simulated device"):
        power_from_spec("sim-1", PowerSpec(driver="sim"))
    with pytest.raises(PowerError, match=r"qemu-1: power driver 'qmp' .* not available yet"):
        power_from_spec("qemu-1", PowerSpec(driver="qmp"))
    with pytest.raises(PowerError, match="bench-1: power driver 'external' needs both"):
        power_from_spec("bench-1", PowerSpec(driver="external", on="relay on"))
