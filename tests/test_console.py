"""The serial console driver against the board emulator, over its pty path and over socket://."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.drivers.console import Console, ConsoleLost, ConsoleStateError, ConsoleTimeout
from simulators.board import GARBAGE, BoardConfig, BoardEmulator

FAST = BoardConfig(tick_s=0.05)


@pytest.fixture(params=["pty", "tcp"])
def board(request: pytest.FixtureRequest) -> Iterator[BoardEmulator]:
    with BoardEmulator(FAST, tcp=request.param == "tcp") as emulator:
        yield emulator


def open_console(board: BoardEmulator, tmp_path: Path, **kwargs) -> Console:
    console = Console(board.url, log_path=tmp_path / "logs" / "bench-1", **kwargs)
    console.open()
    return console


def test_expect_returns_the_match_and_consumes_through_it(board: BoardEmulator, tmp_path: Path):
    console = open_console(board, tmp_path)
    board.power_on()
    match = console.expect(rb"U-Boot (\S+) ", timeout=10)
    assert match.group(1) == b"2023.04-fleetrig"
    assert console.expect(re.compile("Hit any key to stop autoboot: (\\d)"), timeout=10).group(1) == b"3"
    assert not console.buffer.startswith(b"Hit any key to stop autoboot: 3")
    assert console.expect("login: ", timeout=10).group(0) == b"login: "
    console.close()
    lines, raw = console.log_files
    assert GARBAGE in raw.read_bytes()
    text = lines.read_text()
    assert "--- opened " + board.url in text
    assert re.search(r"^\d{4}-\d\d-\d\dT[\d:.]+\+00:00 \[    0\.000000\] Booting Linux", text, re.M)
    assert "\\xff\\xfe" in text and "\r" not in text


def test_timeout_names_the_pattern_the_tail_and_the_log(board: BoardEmulator, tmp_path: Path):
    console = open_console(board, tmp_path)
    board.power_on()
    console.expect("login: ", timeout=10)
    with pytest.raises(ConsoleTimeout) as caught:
        console.expect(rb"no such \w+", timeout=0.3)
    message = str(caught.value)
    assert "no such \\\\w+" in message
    assert "eth0: Link is Up" in message
    assert str(tmp_path / "logs" / "bench-1.log") in message
    assert caught.value.tail.endswith(b"1Gbps/Full\r\n")


def test_the_tail_shows_invalid_utf8_escaped_and_is_bounded(board: BoardEmulator, tmp_path: Path):
    console = open_console(board, tmp_path)
    board.power_on()
    console.expect("Hit any key", timeout=10)
    console.buffer[:0] = GARBAGE * 200
    with pytest.raises(ConsoleTimeout) as caught:
        console.expect("never", timeout=0.1)
    assert len(caught.value.tail) == 500
    assert "\\xff\\xfe" in str(caught.value)
    assert len(str(caught.value)) < 2500


def test_state_is_checked_at_each_method(board: BoardEmulator, tmp_path: Path):
    console = Console(board.url, log_path=tmp_path / "bench-1")
    for call in (lambda: console.write(b"x"), lambda: console.expect("x", 1), console.read_available):
        with pytest.raises(ConsoleStateError, match="console bench-1 is closed: call open\\(\\) first"):
            call()
    console.open()
    console.close()
    with pytest.raises(ConsoleStateError, match="is closed"):
        console.write(b"x")


def test_write_reaches_the_board(board: BoardEmulator, tmp_path: Path):
    console = open_console(board, tmp_path)
    board.power_on()
    console.expect("Hit any key", timeout=10)
    console.write(b"\n")
    console.expect("=> ", timeout=10)
    console.write("version\n")
    assert console.expect(rb"Unknown command '(\w+)'", timeout=10).group(1) == b"version"
    console.write(b"boot\n")
    console.expect("Starting kernel", timeout=10)
    assert b"Starting" not in console.read_available()


def test_an_unreachable_url_is_named(tmp_path: Path):
    console = Console("/dev/fleetrig-no-such-tty", log_path=tmp_path / "bench-9")
    with pytest.raises(Exception, match="console bench-9: cannot open /dev/fleetrig-no-such-tty"):
        console.open()
    assert console.state.value == "closed"


def test_reconnects_after_the_socket_drops(tmp_path: Path):
    with BoardEmulator(BoardConfig(tick_s=0.3), tcp=True) as board:
        console = open_console(board, tmp_path, reconnect_timeout=5)
        board.power_on()
        console.expect("U-Boot", timeout=10)
        board.drop_connection()
        # the countdown goes on while the line is down; the console comes back and sees the login
        console.expect("login: ", timeout=15)
        assert console.state.value == "open"
        assert "--- reconnected" in console.log_files[0].read_text()


def test_gives_up_naming_the_url_when_the_adapter_stays_away(tmp_path: Path):
    with BoardEmulator(FAST, tcp=True) as board:
        console = open_console(board, tmp_path, reconnect_timeout=0.5)
        board.power_on()
        console.expect("U-Boot", timeout=10)
        board.unplug()
        with pytest.raises(ConsoleLost, match=f"{board.url} went away and did not come back within 0.5 s"):
            console.expect("login: ", timeout=10)
        with pytest.raises(ConsoleStateError, match="is lost"):
            console.write(b"x")
        board.plug()
        console.open()
        board.power_cycle()
        console.expect("login: ", timeout=10)
