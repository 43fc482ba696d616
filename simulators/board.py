"""A board emulator: a device that speaks bytes on a serial line the way a real embedded board does.

The harness's console and shell drivers are tested against this instead of a mock of their own
API: it is a device. Its line is a pty (the harness opens the pty's slave path as a pyserial URL)
or a TCP port (the harness opens `socket://127.0.0.1:PORT`, as with a serial-over-network server).
What a board prints, it prints, nastiness included:

* a few bytes of invalid UTF-8 at power-up (a UART's garbage before the clocks settle);
* U-Boot's banner and its autoboot countdown, which any key stops at a `=> ` prompt where `boot`
  continues;
* kernel messages with CRLF line ends, one more right after the login prompt;
* `login: ` / `Password: `, "Login incorrect" and a new prompt on a wrong password;
* a real `/bin/sh` behind the login, on its own pty (whose onlcr turns LF into CRLF, and which
  echoes), isolated in a fresh empty working directory with a clean environment, and inside
  `unshare --user --map-root-user --mount --pid --fork --net` where the host permits it;
* optionally, kernel noise (`[   12.345678] random: ...`) between lines of shell output until the
  shell runs `dmesg -n 1`.

`reboot`, `poweroff` and `dmesg` are intercepted by scripts in a directory first on the shell's
PATH: they write a control sequence to the terminal, which the emulator strips from the output
and acts on (power-cycle, power off, console log level). So no command typed into the emulated
board can reboot the host, with or without the namespaces.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path

from ptyprocess import PtyProcess
from ptyprocess.ptyprocess import PtyProcessError

log = logging.getLogger(__name__)

#: What the intercepting scripts write to the terminal: ESC ] board;WORD ST. Never printed.
CONTROL = re.compile(rb"\x1b\]board;([a-z0-9 -]*)\x07")
CONTROL_PREFIX = b"\x1b]board;"
GARBAGE = b"\xff\xfe\x80\x00\xc3\x28\xa0\xa1"
UNSHARE = ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--net"]
NOISE_LINE = b"[   12.345678] random: crng reseeded on system resumption\r\n"
KERNEL_LINES = (
    b"[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd034]",
    b"[    0.000000] Linux version 6.1.55-fleetrig (build@fleetrig) #1 SMP PREEMPT",
    b"[    0.000000] Machine model: FleetRig emulated board",
    b"[    1.204518] EXT4-fs (mmcblk0p2): mounted filesystem with ordered data mode",
    b"[    2.310022] systemd[1]: Reached target Multi-User System.",
)
#: Printed right after the first login prompt, as a late driver does on a real board.
LATE_KERNEL_LINE = b"[    3.141592] fec 30be0000.ethernet eth0: Link is Up - 1Gbps/Full\r\n"
SCRIPTS = {
    "reboot": "#!/bin/sh\nprintf '\\033]board;reboot\\007' > /dev/tty\nexec sleep 30\n",
    "poweroff": "#!/bin/sh\nprintf '\\033]board;poweroff\\007' > /dev/tty\nexec sleep 30\n",
    "dmesg": ("#!/bin/sh\nif [ \"$1\" = -n ]; then printf '\\033]board;dmesg %s\\007' \"$2\" > /dev/tty; "
              "exit 0; fi\nprintf '%s\\n' '[    0.000000] Booting Linux on physical CPU 0x0' "
              "'[    1.204518] EXT4-fs (mmcblk0p2): mounted filesystem'\n"),
}
#: How long a write to the line may stall (nobody reading) before the bytes are dropped, as a
#: UART with no listener loses them.
WRITE_STALL_S = 2.0


def _kill(shell: PtyProcess) -> None:
    """End the shell (and with it its namespace); a shell already gone is fine."""
    with contextlib.suppress(OSError, PtyProcessError):
        shell.terminate(force=True)
    with contextlib.suppress(OSError, PtyProcessError):
        shell.close(force=True)


class _Off(Exception):
    """The board lost power (or was power-cycled) while a boot step ran."""


@dataclass
class BoardConfig:
    user: str = "root"
    password: str = "root"
    hostname: str = "fleetrig-board"
    countdown: int = 3
    #: seconds per autoboot countdown tick (1 on U-Boot; small in tests)
    tick_s: float = 1.0
    #: a kernel noise line after every this many lines of shell output; None: no noise
    noise_every_lines: int | None = None


def unshare_permitted() -> str | None:
    """None if the namespaces can be entered here, else the reason they cannot."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    try:
        done = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    return None if done.returncode == 0 else f"unshare refused: {done.stderr.strip()[:200]}"


class BoardEmulator:
    """One emulated board on a pty (default) or a TCP port (`tcp=True`). Starts powered off."""

    def __init__(self, config: BoardConfig | None = None, *, tcp: bool = False) -> None:
        self.config = config or BoardConfig()
        self._tcp = tcp
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._input: queue.Queue[bytes] = queue.Queue()
        self._generation = 0
        self._powered = False
        self._boot_thread: threading.Thread | None = None
        self._shell: PtyProcess | None = None
        self._noise = False
        self._lines_since_noise = 0
        self.boots = 0
        self._workdir = Path(tempfile.mkdtemp(prefix="fleetrig-board-"))
        self._bindir = self._workdir / "bin"
        self._bindir.mkdir()
        for name, text in SCRIPTS.items():
            (self._bindir / name).write_text(text)
            (self._bindir / name).chmod(0o755)
        why_not = unshare_permitted()
        if why_not:
            log.warning("board shell runs without namespaces: %s", why_not)
        self.isolated = why_not is None
        self._master: int | None = None
        self._slave: int | None = None
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self.port = 0
        if tcp:
            self._listen()
        else:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)
            os.set_blocking(self._master, False)
        self._reader = threading.Thread(target=self._read_line, name="board-line", daemon=True)
        self._reader.start()

    # -- the line -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The pyserial URL the harness opens."""
        return f"socket://127.0.0.1:{self.port}" if self._tcp else os.ttyname(self._slave)  # type: ignore[arg-type]

    def _listen(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(1)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]

    def drop_connection(self) -> None:
        """TCP mode: close the current client, as a serial server does when its adapter goes away."""
        with self._lock:
            client, self._conn = self._conn, None
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()

    def unplug(self) -> None:
        """TCP mode: drop the client and stop accepting: the adapter is gone."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.drop_connection()

    def plug(self) -> None:
        """TCP mode: accept clients again on the same port."""
        with self._lock:
            if self._listener is None:
                self._listen()

    def _accept_pending(self) -> socket.socket | None:
        """A client that connected and is not accepted yet (so bytes sent right after its connect
        reach it); None if there is none."""
        with self._lock:
            listener = self._listener
            if listener is None or self._conn is not None:
                return self._conn
            with contextlib.suppress(OSError):
                if select.select([listener], [], [], 0)[0]:
                    self._conn, _ = listener.accept()
                    self._conn.setblocking(True)
            return self._conn

    def _read_line(self) -> None:
        while not self._stop.is_set():
            data = self._read_once()
            if data:
                with self._lock:
                    shell = self._shell
                if shell is not None:
                    with contextlib.suppress(OSError):
                        os.write(shell.fd, data)
                else:
                    self._input.put(data)

    def _read_once(self) -> bytes:
        if not self._tcp:
            ready, _, _ = select.select([self._master], [], [], 0.1)
            if ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    return os.read(self._master, 4096)  # type: ignore[arg-type]
            return b""
        with self._lock:
            client, listener = self._conn, self._listener
        sock = client or listener
        if sock is None:
            time.sleep(0.1)
            return b""
        try:
            ready, _, _ = select.select([sock], [], [], 0.1)
            if not ready:
                return b""
            if client is None:
                self._accept_pending()
                return b""
            data = client.recv(4096)
        except OSError:
            data = b""
        if not data:
            self.drop_connection()
        return data

    def send(self, data: bytes) -> None:
        """Bytes onto the line; dropped when nobody reads for WRITE_STALL_S (or no client is there)."""
        if self._tcp:
            client = self._conn or self._accept_pending()
            if client is not None:
                with contextlib.suppress(OSError):
                    client.sendall(data)
            return
        view = memoryview(data)
        stalled_since = time.monotonic()
        while view and not self._stop.is_set():
            _, ready, _ = select.select([], [self._master], [], 0.1)
            if ready:
                try:
                    n = os.write(self._master, view)  # type: ignore[arg-type]
                except (BlockingIOError, OSError):
                    n = 0
                if n:
                    view = view[n:]
                    stalled_since = time.monotonic()
                    continue
            if time.monotonic() - stalled_since > WRITE_STALL_S:
                return

    # -- power --------------------------------------------------------------------------------

    @property
    def powered(self) -> bool:
        return self._powered

    def power_on(self) -> None:
        with self._lock:
            if self._powered:
                return
            self._powered = True
            self._generation += 1
            generation = self._generation
        self._boot_thread = threading.Thread(target=self._run, args=(generation,), name="board-boot", daemon=True)
        self._boot_thread.start()

    def power_off(self) -> None:
        with self._lock:
            self._powered = False
            self._generation += 1
            shell, self._shell = self._shell, None
        if shell is not None:
            _kill(shell)
        thread = self._boot_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def power_cycle(self) -> None:
        self.power_off()
        self.power_on()

    def close(self) -> None:
        """Power off and release the line and the working directory."""
        self.power_off()
        self._stop.set()
        self._reader.join(timeout=5)
        if self._tcp:
            self.unplug()
        else:
            for fd in (self._master, self._slave):
                with contextlib.suppress(OSError):
                    os.close(fd)  # type: ignore[arg-type]
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> BoardEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- firmware: the boot, the login, the shell ---------------------------------------------

    def _check(self, generation: int) -> None:
        if self._generation != generation or self._stop.is_set():
            raise _Off

    def _key(self, generation: int, timeout: float) -> bytes:
        """The next input from the line within timeout (b"" if none)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check(generation)
            left = deadline - time.monotonic()
            if left <= 0:
                return b""
            try:
                return self._input.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue

    def _readline(self, generation: int, *, echo: bool) -> bytes:
        line = bytearray()
        while True:
            data = self._key(generation, 0.5)
            for byte in data:
                if byte in b"\r\n":
                    if echo:
                        self.send(b"\r\n")
                    return bytes(line)
                if byte in (0x7F, 0x08):
                    del line[-1:]
                    continue
                line.append(byte)
                if echo:
                    self.send(bytes([byte]))

    def _run(self, generation: int) -> None:
        try:
            self.boots += 1
            self._noise = self.config.noise_every_lines is not None
            self._lines_since_noise = 0
            self._drain()
            self.send(GARBAGE)
            self._uboot(generation)
            for line in KERNEL_LINES:
                self._check(generation)
                self.send(line + b"\r\n")
            first = True
            while True:
                self._login(generation, late_line=first)
                first = False
                if self._shell_session(generation) == "reboot":
                    threading.Thread(target=self.power_cycle, daemon=True).start()
                    return
        except _Off:
            return

    def _drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._input.get_nowait()

    def _uboot(self, generation: int) -> None:
        self.send(b"\r\n\r\nU-Boot 2023.04-fleetrig (Oct 01 2026 - 12:00:00 +0000)\r\n\r\n"
                  b"CPU:   Emulated ARMv8 @ 1.2 GHz\r\nDRAM:  2 GiB\r\nMMC:   FSL_SDHC: 0, FSL_SDHC: 1\r\n"
                  b"Net:   eth0: ethernet@30be0000\r\n")
        stopped = False
        for n in range(self.config.countdown, 0, -1):
            self.send(f"\rHit any key to stop autoboot: {n} ".encode())
            if self._key(generation, self.config.tick_s):
                stopped = True
                break
        self.send(b"\rHit any key to stop autoboot: 0 \r\n")
        while stopped:
            self.send(b"=> ")
            command = self._readline(generation, echo=True).strip()
            if command == b"boot":
                break
            if command:
                self.send(b"Unknown command '" + command.split()[0] + b"' - try 'help'\r\n")
        self.send(b"Starting kernel ...\r\n\r\n")

    def _login(self, generation: int, *, late_line: bool) -> None:
        while True:
            self.send(f"\r\n{self.config.hostname} login: ".encode())
            if late_line:
                self.send(LATE_KERNEL_LINE)
                late_line = False
            user = self._readline(generation, echo=True)
            if not user:
                continue
            self.send(b"Password: ")
            password = self._readline(generation, echo=False)
            self.send(b"\r\n")
            if user.decode(errors="replace") == self.config.user \
                    and password.decode(errors="replace") == self.config.password:
                return
            self._key(generation, 0.2)
            self.send(b"\r\nLogin incorrect\r\n")

    def _spawn_shell(self) -> PtyProcess:
        home = self._workdir / "home"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        env = {"PATH": f"{self._bindir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "TERM": "vt100",
               "PS1": "# ", "LANG": "C"}
        argv = [*UNSHARE, "/bin/sh", "-i"] if self.isolated else ["/bin/sh", "-i"]
        return PtyProcess.spawn(argv, cwd=str(home), env=env, echo=True, dimensions=(24, 200))

    def _shell_session(self, generation: int) -> str:
        """Relay the shell until it exits ("exit"), the board reboots ("reboot") or loses power."""
        shell = self._spawn_shell()
        with self._lock:
            if self._generation != generation:
                _kill(shell)
                raise _Off
            self._shell = shell
        pending = b""
        try:
            while True:
                self._check(generation)
                ready, _, _ = select.select([shell.fd], [], [], 0.1)
                if not ready:
                    continue
                try:
                    data = os.read(shell.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    return "exit"
                data = pending + data
                pending = b""
                for match in CONTROL.finditer(data):
                    word = match.group(1).decode()
                    if word == "reboot":
                        return "reboot"
                    if word == "poweroff":
                        threading.Thread(target=self.power_off, daemon=True).start()
                        raise _Off
                    if word.startswith("dmesg "):
                        self._noise = word.split()[1] not in ("0", "1")
                data = CONTROL.sub(b"", data)
                cut = data.rfind(b"\x1b")
                if cut != -1 and CONTROL_PREFIX.startswith(data[cut:cut + len(CONTROL_PREFIX)]) \
                        and b"\x07" not in data[cut:]:
                    data, pending = data[:cut], data[cut:]
                if self._noise:
                    data = self._with_noise(data)
                self.send(data)
        finally:
            with self._lock:
                if self._shell is shell:
                    self._shell = None
            _kill(shell)

    def _with_noise(self, data: bytes) -> bytes:
        """A kernel line after every noise_every_lines line ends (counted across chunks)."""
        every = self.config.noise_every_lines
        assert every is not None
        out = bytearray()
        start = 0
        for match in re.finditer(rb"\n", data):
            self._lines_since_noise += 1
            if self._lines_since_noise >= every:
                out += data[start:match.end()] + NOISE_LINE
                start = match.end()
                self._lines_since_noise = 0
        out += data[start:]
        return bytes(out)
