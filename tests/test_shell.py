"""The shell driver logs into the board emulator (garbage, U-Boot, kernel noise, a real sh) and runs
commands over its console, on the pty path and over socket://."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.drivers.console import Console, ConsoleTimeout
from harness.drivers.shell import LoginFailed, Shell, ShellError
from simulators.board import BoardConfig, BoardEmulator

#: a kernel line after every 97 lines of shell output until `dmesg -n 1`
NOISY = BoardConfig(user="root", password="s3cret", tick_s=0.05, noise_every_lines=97)


@pytest.fixture(params=["pty", "tcp"])
def board(request: pytest.FixtureRequest) -> Iterator[BoardEmulator]:
    with BoardEmulator(NOISY, tcp=request.param == "tcp") as emulator:
        yield emulator


@pytest.fixture
def console(board: BoardEmulator, tmp_path: Path) -> Iterator[Console]:
    with Console(board.url, log_path=tmp_path / "bench-1") as opened:
        board.power_on()
        yield opened


def logged_in(console: Console, **kwargs) -> Shell:
    shell = Shell(console, "root", "s3cret", login_timeout=30, **kwargs)
    shell.login()
    return shell


def test_login_through_garbage_autoboot_and_kernel_lines(console: Console):
    shell = logged_in(console)
    assert shell.kernel_quiet
    raw = console.log_files[1].read_bytes()
    assert b"\xff\xfe" in raw and b"Hit any key to stop autoboot" in raw and b"eth0: Link is Up" in raw
    assert shell.run("echo hello") == ("hello\n", 0)


def test_login_from_the_uboot_prompt(board: BoardEmulator, console: Console):
    console.expect("Hit any key", timeout=10)
    console.write(b" ")
    console.expect("=> ", timeout=10)
    shell = logged_in(console)
    assert shell.run("echo $((6 * 7))") == ("42\n", 0)


def test_exit_codes_stderr_and_output_without_a_final_newline(console: Console):
    shell = logged_in(console)
    assert shell.run("sh -c 'exit 3'") == ("", 3)
    assert shell.run("echo oops >&2; false") == ("oops\n", 1)
    assert shell.run("printf 'a\\tb'") == ("a\tb", 0)
    assert shell.run("printf '\\377\\n'") == ("\\xff\n", 0)


def test_a_long_output_is_exact_with_kernel_noise_running(console: Console):
    shell = logged_in(console, quiet_kernel=False)
    started = time.monotonic()
    output, code = shell.run("seq 1 5000", timeout=30)
    elapsed = time.monotonic() - started
    assert code == 0
    assert output == "".join(f"{i}\n" for i in range(1, 5001)), f"{elapsed:.2f} s"
    noise = console.log_files[1].read_bytes().count(b"random: crng reseeded")
    assert noise >= 5000 // 97, "the emulator injected too little kernel noise: the filter went untested"


def test_kernel_lines_stay_when_the_log_level_was_lowered(console: Console):
    shell = logged_in(console)
    output, code = shell.run("seq 1 3000; dmesg")
    assert code == 0
    assert output.splitlines()[:3000] == [str(i) for i in range(1, 3001)]
    assert output.splitlines()[3000].startswith("[    0.000000] Booting Linux")
    assert "random: crng" not in output


def test_wrong_password_fails_naming_the_user(board: BoardEmulator, console: Console):
    # LoginFailed, not the ConsoleTimeout the login raises at its deadline: no wait for the timeout
    shell = Shell(console, "root", "wrong", login_timeout=30)
    with pytest.raises(LoginFailed, match=r"login as 'root' on console bench-1 failed.*Login incorrect"):
        shell.login()
    assert shell.state.value == "logged out"


def test_run_before_login_names_the_state(console: Console):
    shell = Shell(console, "root", "s3cret")
    with pytest.raises(ShellError, match="shell on console bench-1 is logged out: call login\\(\\) first"):
        shell.run("true")


def test_the_shell_is_isolated_and_reboot_power_cycles_the_board(board: BoardEmulator, console: Console):
    shell = logged_in(console)
    home, _ = shell.run("pwd")
    assert shell.run("ls -A") == ("", 0)
    env, _ = shell.run("env | cut -d= -f1 | sort")
    assert set(env.split()) <= {"HOME", "PATH", "PS1", "PWD", "TERM", "LANG", "OLDPWD", "IFS", "PPID",
                                "OPTIND", "PS2", "PS4", "_"}
    if board.isolated:
        # /proc/net shows the reader's network namespace: only a loopback there
        assert shell.run("grep -o '^ *[a-z0-9]*:' /proc/net/dev | tr -d ' '") == ("lo:\n", 0)
    console.write(b"reboot\n")
    console.expect("U-Boot", timeout=10)
    assert board.boots == 2
    again = logged_in(console)
    assert again.run("pwd") == (home, 0)


def test_a_timed_out_command_leaves_the_shell_stuck_until_login(console: Console):
    shell = logged_in(console)
    expected = r"'sleep 20' on console bench-1 did not finish within 0\.5 s; last 0 bytes: b''; full log: "
    with pytest.raises(ConsoleTimeout, match=expected):
        shell.run("sleep 20", timeout=0.5)
    with pytest.raises(ShellError, match="is stuck: a command timed out: call login"):
        shell.run("true")
    shell.login()
    assert shell.run("echo back") == ("back\n", 0)


def test_login_after_exit_pokes_a_silent_login_prompt(board: BoardEmulator, console: Console):
    logged_in(console)
    console.write(b"exit\n")
    console.expect("login: ", timeout=10)
    # the prompt is consumed: nothing more arrives until the login pokes the board with a newline
    assert logged_in(console).run("echo again") == ("again\n", 0)
    assert board.boots == 1


def test_poweroff_turns_the_board_off(board: BoardEmulator, console: Console):
    logged_in(console)
    console.write(b"poweroff\n")
    with pytest.raises(ConsoleTimeout):
        console.expect("login: ", timeout=1)
    assert not board.powered
    board.power_on()
    assert logged_in(console).run("echo on") == ("on\n", 0)


def test_a_board_that_stays_silent_times_the_login_out_naming_the_user(tmp_path: Path):
    with BoardEmulator(NOISY) as board, Console(board.url, log_path=tmp_path / "bench-2") as console:
        shell = Shell(console, "root", "s3cret", login_timeout=1)
        with pytest.raises(ConsoleTimeout, match=r"login as 'root' on console bench-2 gave no shell within 1 s"):
            shell.login()
        assert shell.state.value == "logged out"
        # the login poked the powered-off board: the newline went out, nothing came back
        assert console.log_files[1].read_bytes() == b""
