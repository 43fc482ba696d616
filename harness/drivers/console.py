"""A device's serial console over any pyserial URL: bytes in and out, `expect()`, a log per device.

The transport is pyserial's (`serial.serial_for_url`): a tty path (`/dev/ttyUSB0`, a pty),
`socket://host:port` (a serial-over-network server), `rfc2217://` (ser2net). A pty has no modem
lines: pyserial's posix port ignores the ENOTTY/EINVAL its DTR/RTS ioctls get there, so a pty path
opens as it is; over RFC 2217, add `?ign_set_control` to the URL for the same reason.

As pytest-embedded does, `expect()` returns the match, and a timeout says what was awaited, what
came instead (the buffer's tail, invalid UTF-8 shown escaped) and where the whole log is. As
labgrid's drivers do, the state is explicit and checked at each public method. USB adapters go
away (a board's power cycle can take a hub port with it) and come back under the same name: a
failed read or write reopens the URL for a bounded time before giving up with its name.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from enum import Enum
from pathlib import Path

import serial

#: Bytes of the buffer an error shows: enough for a prompt and the lines before it.
TAIL_BYTES = 500
#: How long one read waits for a first byte; bounds how late expect() notices its deadline.
READ_SLICE_S = 0.05
DEFAULT_RECONNECT_S = 10.0
#: The most one read takes in, so a flood still lets expect() search between reads.
READ_MAX = 1 << 20

Pattern = bytes | str | re.Pattern[bytes] | re.Pattern[str]


class ConsoleState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    LOST = "lost"


class ConsoleError(Exception):
    """A console operation failed; the message names the console."""


class ConsoleStateError(ConsoleError):
    pass


class ConsoleLost(ConsoleError):
    """The port went away and did not come back in time."""


class ConsoleTimeout(ConsoleError, TimeoutError):
    def __init__(self, message: str, *, pattern: re.Pattern[bytes], tail: bytes) -> None:
        super().__init__(message)
        self.pattern = pattern
        self.tail = tail


def compile_pattern(pattern: Pattern) -> re.Pattern[bytes]:
    """A bytes regex from a bytes or str regex (str is taken as UTF-8) or a compiled one."""
    if isinstance(pattern, re.Pattern):
        if isinstance(pattern.pattern, bytes):
            return pattern  # type: ignore[return-value]
        return re.compile(pattern.pattern.encode(), pattern.flags & ~re.UNICODE)
    return re.compile(pattern.encode() if isinstance(pattern, str) else pattern)


class ConsoleLog:
    """The log of one device's console: `NAME.raw` (bytes as received) and `NAME.log` (timestamped
    lines, invalid UTF-8 escaped, plus the console's own events)."""

    def __init__(self, stem: Path) -> None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        self.raw_path = stem.with_name(stem.name + ".raw")
        self.path = stem.with_name(stem.name + ".log")
        self._raw = self.raw_path.open("ab")
        self._lines = self.path.open("a", encoding="utf-8")
        self._partial = b""

    @staticmethod
    def _now() -> str:
        return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")

    def received(self, data: bytes) -> None:
        self._raw.write(data)
        self._raw.flush()
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._line(line.rstrip(b"\r").decode(errors="backslashreplace"))
        self._lines.flush()

    def event(self, text: str) -> None:
        self._line(f"--- {text}")
        self._lines.flush()

    def _line(self, text: str) -> None:
        self._lines.write(f"{self._now()} {text}\n")

    def close(self) -> None:
        if self._partial:
            self._line(self._partial.rstrip(b"\r").decode(errors="backslashreplace"))
            self._partial = b""
        self._raw.close()
        self._lines.close()


class Console:
    """One device's console. `log_path` is the stem of its log files (`<stem>.raw`, `<stem>.log`)."""

    def __init__(self, url: str, *, log_path: Path, baudrate: int = 115200, name: str | None = None,
                 reconnect_timeout: float = DEFAULT_RECONNECT_S) -> None:
        self.url = url
        self.baudrate = baudrate
        self.name = name or log_path.name
        self.log_path = log_path
        self.reconnect_timeout = reconnect_timeout
        self.state = ConsoleState.CLOSED
        self.buffer = bytearray()
        self._port: serial.SerialBase | None = None
        self._log: ConsoleLog | None = None

    def __repr__(self) -> str:
        return f"Console({self.name!r}, {self.url!r}, {self.state.value})"

    # -- state --------------------------------------------------------------------------------

    def _require_open(self) -> serial.SerialBase:
        if self.state is ConsoleState.OPEN and self._port is not None:
            return self._port
        if self.state is ConsoleState.LOST:
            raise ConsoleStateError(f"console {self.name} is lost ({self.url} went away): call open() to retry")
        raise ConsoleStateError(f"console {self.name} is {self.state.value}: call open() first")

    def open(self) -> None:
        if self.state is ConsoleState.OPEN:
            return
        if self._log is None:
            self._log = ConsoleLog(self.log_path)
        try:
            self._port = self._connect()
        except (serial.SerialException, OSError, ValueError) as e:
            self.state = ConsoleState.CLOSED
            raise ConsoleError(f"console {self.name}: cannot open {self.url}: {e}") from e
        self.state = ConsoleState.OPEN
        self._log.event(f"opened {self.url}")

    def _connect(self) -> serial.SerialBase:
        return serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=READ_SLICE_S, write_timeout=5)

    def close(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None
        if self._log is not None:
            self._log.event("closed")
            self._log.close()
            self._log = None
        self.state = ConsoleState.CLOSED

    def __enter__(self) -> Console:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def log_files(self) -> tuple[Path, Path]:
        """(the timestamped lines, the raw bytes)."""
        return (self.log_path.with_name(self.log_path.name + ".log"),
                self.log_path.with_name(self.log_path.name + ".raw"))

    # -- reconnect ----------------------------------------------------------------------------

    def _reconnect(self, cause: Exception) -> serial.SerialBase:
        """Reopen the URL until reconnect_timeout; ConsoleLost naming it if it does not come back."""
        assert self._log is not None
        self.state = ConsoleState.LOST
        self._log.event(f"lost {self.url}: {cause}")
        if self._port is not None:
            self._port.close()
            self._port = None
        deadline = time.monotonic() + self.reconnect_timeout
        last: Exception = cause
        while time.monotonic() < deadline:
            try:
                self._port = self._connect()
            except (serial.SerialException, OSError) as e:
                last = e
                time.sleep(0.2)
                continue
            self.state = ConsoleState.OPEN
            self._log.event(f"reconnected {self.url}")
            return self._port
        raise ConsoleLost(f"console {self.name}: {self.url} went away and did not come back within "
                          f"{self.reconnect_timeout:g} s (last error: {last})") from cause

    # -- bytes --------------------------------------------------------------------------------

    def write(self, data: bytes | str) -> None:
        port = self._require_open()
        payload = data.encode() if isinstance(data, str) else data
        try:
            port.write(payload)
            port.flush()
        except (serial.SerialException, OSError) as e:
            self._reconnect(e).write(payload)

    def _read(self) -> bytes:
        """What arrives within one read slice (reconnecting if the port went away)."""
        port = self._require_open()
        try:
            data = port.read(1)
            if data:
                # then what is there without waiting: socket:// reports in_waiting as 0 or 1, so
                # reading in_waiting bytes would go byte by byte (100,000 lines took 7.5 s)
                port.timeout = 0
                try:
                    while len(data) < READ_MAX and (chunk := port.read(READ_MAX)):
                        data += chunk
                finally:
                    port.timeout = READ_SLICE_S
        except (serial.SerialException, OSError) as e:
            self._reconnect(e)
            return b""
        if data:
            assert self._log is not None
            self._log.received(data)
            self.buffer += data
        return data

    def read_available(self) -> bytes:
        """Everything buffered plus what arrives within one read slice; the buffer is left empty."""
        self._read()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def expect(self, pattern: Pattern, timeout: float = 30.0, *, window: int | None = None) -> re.Match[bytes]:
        """The first match of pattern in what arrives; the buffer is consumed through its end.

        `window`, for a pattern whose matches are at most that long, makes each search start that
        far before the end of what was already searched, instead of at the buffer's start: a
        command's long output is then searched once, not once per read (100,000 lines over TCP
        took over 60 s without it). `match.string[:match.start()]` is what came before the match.
        """
        self._require_open()
        regex = compile_pattern(pattern)
        deadline = time.monotonic() + timeout
        searched = 0
        while True:
            start = 0 if window is None else max(0, searched - window)
            searched = len(self.buffer)
            if regex.search(self.buffer, start) is not None:
                # matched again on a bytes copy: a match on the bytearray would change under the
                # caller as the buffer is consumed
                match = regex.search(bytes(self.buffer), start)
                assert match is not None
                del self.buffer[:match.end()]
                return match
            if time.monotonic() >= deadline:
                tail = bytes(self.buffer[-TAIL_BYTES:])
                lines, _ = self.log_files
                raise ConsoleTimeout(
                    f"console {self.name}: {regex.pattern!r} did not appear within {timeout:g} s; "
                    f"last {len(tail)} bytes: {tail!r}; full log: {lines}", pattern=regex, tail=tail)
            self._read()
