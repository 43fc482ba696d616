"""A shell session on a device's console: a login that survives what real boards print, then
`run(cmd) -> (output, exit code)`.

What a board prints on its console between power-up and a usable shell, and how `login()` copes:

* garbage bytes (invalid UTF-8) before the UART settles: matched around, never decoded;
* U-Boot's autoboot countdown, which any key stops: the login does not press a key on purpose,
  but its poke (a newline when nothing matched for a while) may land there, and a `=> ` prompt
  gets `boot`;
* kernel messages after the login prompt: the user name is sent anyway (getty is reading);
* "Login incorrect": `LoginFailed` naming the user at once, not a wait until the timeout;
* CRLF line ends and echo: the session turns echo off (`stty -echo`) and sets its own prompt.

`run()` works as labgrid's ShellDriver does: the command is framed by random markers, each written
split in two quoted halves (`'ab''cd'`) so that an echoed command line never matches them, and
the exit code is printed after the end marker. Kernel messages also interleave with command output
until the console log level is lowered: the session runs `dmesg -n 1` after login, and only where
that failed does it remove kernel lines (`[    1.234567] ...`) from the output.
"""

from __future__ import annotations

import re
import secrets
import time
from enum import Enum

from harness.drivers.console import TAIL_BYTES, Console, ConsoleError, ConsoleTimeout

#: A shell prompt at the end of what arrived, before the session sets its own.
DEFAULT_PROMPT = rb"[#$] $"
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] .*(?:\n|$)", re.MULTILINE)
#: The longest end-marker line: marker, "E", an exit code, CRLF.
END_MARKER_WINDOW = 64
#: How long the login waits for a known prompt before it pokes the board with a newline.
POKE_S = 2.0


class ShellState(Enum):
    LOGGED_OUT = "logged out"
    READY = "ready"
    STUCK = "stuck"


class ShellError(ConsoleError):
    pass


class LoginFailed(ShellError):
    """The board refused the credentials."""


class Shell:
    """A login session as `user` on `console`."""

    def __init__(self, console: Console, user: str, password: str, *, prompt: bytes | str | None = None,
                 login_timeout: float = 60.0, quiet_kernel: bool = True) -> None:
        self.console = console
        self.user = user
        self.password = password
        initial = prompt.encode() if isinstance(prompt, str) else prompt
        self._initial_prompt = initial or DEFAULT_PROMPT
        self.login_timeout = login_timeout
        self.quiet_kernel = quiet_kernel
        #: whether `dmesg -n 1` took: kernel lines are then left in the output as printed
        self.kernel_quiet = False
        self.state = ShellState.LOGGED_OUT
        token = secrets.token_hex(4)
        self._prompt = f"fr{token}# "
        self._prompt_typed = f"'fr{token[:4]}''{token[4:]}# '"

    def __repr__(self) -> str:
        return f"Shell({self.user!r} on {self.console.name}, {self.state.value})"

    def _require_ready(self) -> None:
        if self.state is ShellState.READY:
            return
        hint = "a command timed out: call login() to recover" if self.state is ShellState.STUCK \
            else "call login() first"
        raise ShellError(f"shell on console {self.console.name} is {self.state.value}: {hint}")

    def login(self) -> None:
        """From wherever the board is (booting, at U-Boot, at a login prompt, a stuck command) to a
        ready session; LoginFailed on refused credentials, ConsoleTimeout after login_timeout."""
        console = self.console
        if self.state is ShellState.STUCK:
            console.write(b"\x03")
        self.state = ShellState.LOGGED_OUT
        alternatives = re.compile(
            rb"(?P<uboot>\n=> )|(?P<login>(?<!Last )login: )|(?P<password>Password: )"
            rb"|(?P<incorrect>Login incorrect)|(?P<prompt>" + self._initial_prompt + rb")")
        deadline = _Deadline(self.login_timeout)
        sent_password = False
        while True:
            try:
                match = console.expect(alternatives, timeout=min(POKE_S, deadline.left()))
            except ConsoleTimeout:
                if deadline.left() <= 0:
                    raise self._timeout(f"login as {self.user!r}", "gave no shell", self.login_timeout,
                                        alternatives) from None
                console.write(b"\n")
                continue
            kind = match.lastgroup
            if kind == "uboot":
                console.write(b"boot\n")
            elif kind == "login":
                console.write(self.user.encode() + b"\n")
                sent_password = False
            elif kind == "password":
                console.write(self.password.encode() + b"\n")
                sent_password = True
            elif kind == "incorrect" and sent_password:
                raise LoginFailed(f"login as {self.user!r} on console {self.console.name} failed: the board "
                                  "answered 'Login incorrect' (check the login password in the lab inventory)")
            elif kind == "prompt":
                break
        console.write(f"stty -echo; PS1={self._prompt_typed}\n".encode())
        console.expect(re.escape(self._prompt.encode()), timeout=max(deadline.left(), 5))
        self.state = ShellState.READY
        if self.quiet_kernel:
            self.kernel_quiet = self.run("dmesg -n 1 2>/dev/null", timeout=10)[1] == 0

    def _timeout(self, what: str, failed: str, seconds: float, pattern: re.Pattern[bytes]) -> ConsoleTimeout:
        tail = bytes(self.console.buffer[-TAIL_BYTES:])
        return ConsoleTimeout(f"{what} on console {self.console.name} {failed} within {seconds:g} s; "
                              f"last {len(tail)} bytes: {tail!r}; full log: {self.console.log_files[0]}",
                              pattern=pattern, tail=tail)

    def run(self, cmd: str, timeout: float = 30.0) -> tuple[str, int]:
        """The command's output (stdout and stderr, as printed, LF line ends) and its exit code."""
        self._require_ready()
        marker = secrets.token_hex(5)
        typed = f"'{marker[:4]}''{marker[4:]}"
        self.console.write(f"echo {typed}S'; {cmd}; echo {typed}E' $?\n".encode())
        deadline = _Deadline(timeout)
        end = re.compile(re.escape(f"{marker}E ".encode()) + rb"(\d+)\r\n")
        try:
            self.console.expect(re.escape(f"{marker}S\r\n".encode()), timeout=timeout)
            match = self.console.expect(end, timeout=deadline.left(), window=END_MARKER_WINDOW)
            self.console.expect(re.escape(self._prompt.encode()), timeout=10)
        except ConsoleTimeout as e:
            self.state = ShellState.STUCK
            shown = cmd if len(cmd) <= 200 else cmd[:200] + "..."
            raise self._timeout(repr(shown), "did not finish", timeout, e.pattern) from None
        printed = match.string[:match.start()]
        output = printed.replace(b"\r\n", b"\n").decode(errors="backslashreplace")
        if not self.kernel_quiet:
            output = KERNEL_LINE.sub("", output)
        return output, int(match.group(1))


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())
