"""Power: switch a device on, off, or cycle it, whatever is in the lab between the harness and its plug.

One small protocol (labgrid's PowerProtocol has the same three verbs) and one class per way a lab
switches power:

* `ExternalPower` runs the lab's own commands (a USB relay, a PDU's CLI, `uhubctl`), as labgrid's
  ExternalPowerDriver does; `cycle` is the lab's cycle command where it has one, else off, a
  pause so the board's capacitors drain, and on.
* `ManualPower` asks the operator at a terminal and waits for Enter. Without a terminal (CI, a
  pipe) it refuses at once, naming the device and what to do, instead of blocking on a read
  nobody will answer.
* `SimPower` calls the simulator's own on/off callables.

Every driver records the state it last put the device in (`state`: "on", "off" or "unknown"
before the first switch), so a caller can check it.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

from harness.drivers.command import CommandError, run

ON, OFF, UNKNOWN = "on", "off", "unknown"


class PowerError(CommandError):
    """Power could not be switched; the message names the device and why."""


class Power(Protocol):
    state: str

    def on(self) -> None: ...

    def off(self) -> None: ...

    def cycle(self) -> None: ...


class ExternalPower:
    """Power switched by shell-free commands from lab.yaml (split as a POSIX shell would)."""

    def __init__(self, device: str, on: str, off: str, cycle: str | None = None, *, delay: float = 2.0,
                 timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.device = device
        self.commands = {ON: self._split(on, ON), OFF: self._split(off, OFF)}
        self.cycle_command = self._split(cycle, "cycle") if cycle else None
        if delay < 0 or timeout <= 0:
            raise PowerError(f"{device}: power delay must be >= 0 and timeout > 0, got {delay}, {timeout}")
        self.delay, self.timeout, self._sleep = delay, timeout, sleep
        self.state = UNKNOWN

    def _split(self, command: str, action: str) -> list[str]:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise PowerError(f"{self.device}: power {action} command {command[:80]!r}: {exc}") from None
        if not argv:
            raise PowerError(f"{self.device}: power {action} command is empty")
        return argv

    def _run(self, argv: list[str], action: str) -> None:
        self.state = UNKNOWN   # a relay command that failed half-way leaves the plug in doubt
        run(argv, timeout=self.timeout, what=f"{self.device}: power {action}", error=PowerError)

    def on(self) -> None:
        self._run(self.commands[ON], ON)
        self.state = ON

    def off(self) -> None:
        self._run(self.commands[OFF], OFF)
        self.state = OFF

    def cycle(self) -> None:
        if self.cycle_command is not None:
            self._run(self.cycle_command, "cycle")
        else:
            self.off()
            self._sleep(self.delay)
            self._run(self.commands[ON], ON)
        self.state = ON


class ManualPower:
    """Power switched by a person at the bench, asked at the terminal the harness runs in."""

    def __init__(self, device: str, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        self.device = device
        self._in = stdin if stdin is not None else sys.stdin
        self._out = stdout if stdout is not None else sys.stdout
        self.state = UNKNOWN

    def _ask(self, what: str) -> None:
        if self._in is None or not self._in.isatty():
            raise PowerError(
                f"{self.device}: power driver 'manual' needs an operator at a terminal and there is none "
                f"(stdin is not a tty): {what} by hand and rerun at a terminal, or give {self.device} an "
                "'external' power driver in lab.yaml")
        self._out.write(f"\n>>> {self.device}: {what}, then press Enter: ")
        self._out.flush()
        try:
            answered = bool(self._in.readline())
        except OSError:         # the terminal went away (a pty's other end closed)
            answered = False
        if not answered:
            raise PowerError(f"{self.device}: the terminal closed before the operator confirmed: {what}")

    def on(self) -> None:
        self._ask(f"switch power of {self.device} ON")
        self.state = ON

    def off(self) -> None:
        self._ask(f"switch power of {self.device} OFF")
        self.state = OFF

    def cycle(self) -> None:
        self._ask(f"switch power of {self.device} OFF, wait a few seconds, and switch it ON again")
        self.state = ON


class SimPower:
    """Power of a simulated device: the simulator's own callables."""

    def __init__(self, device: str, on: Callable[[], None], off: Callable[[], None],
                 cycle: Callable[[], None] | None = None) -> None:
        self.device, self._on, self._off, self._cycle = device, on, off, cycle
        self.state = UNKNOWN

    def on(self) -> None:
        self._on()
        self.state = ON

    def off(self) -> None:
        self._off()
        self.state = OFF

    def cycle(self) -> None:
        if self._cycle is not None:
            self._cycle()
        else:
            self._off()
            self._on()
        self.state = ON


class PowerFields(Protocol):
    """What a power driver is built from: harness.lab's PowerSpec has these fields."""

    driver: str
    on: str | None
    off: str | None
    cycle: str | None
    delay: float
    timeout: float


def power_from_spec(device: str, spec: PowerFields, *,
                    sim: tuple[Callable[[], None], Callable[[], None]] | None = None,
                    stdin: TextIO | None = None, stdout: TextIO | None = None) -> Power:
    """The power driver a lab entry names; `sim` is the simulator's (on, off) for driver 'sim'."""
    if spec.driver == "external":
        if not spec.on or not spec.off:
            raise PowerError(f"{device}: power driver 'external' needs both an 'on' and an 'off' command")
        return ExternalPower(device, spec.on, spec.off, spec.cycle, delay=spec.delay, timeout=spec.timeout)
    if spec.driver == "manual":
        return ManualPower(device, stdin=stdin, stdout=stdout)
    if spec.driver == "sim":
        if sim is None:
            raise PowerError(f"{device}: power driver 'sim' works only on a simulated device (none given)")
        return SimPower(device, *sim)
    if spec.driver == "qmp":
        raise PowerError(f"{device}: power driver 'qmp' (QEMU) is not available yet")
    raise PowerError(f"{device}: unknown power driver {spec.driver!r} (known: external, manual, sim, qmp)")
