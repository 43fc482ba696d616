"""The lab inventory: the example loads, and every mistake names the file, the device and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.lab.inventory import ENV_VAR, MAX_FILE_BYTES, LabError, find_lab, load_lab, parse_lab

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "fixtures" / "lab.example.yaml"


def refusal(text: str) -> str:
    with pytest.raises(LabError) as caught:
        parse_lab(text, Path("lab.yaml"))
    return str(caught.value)


def test_the_example_from_the_design_loads():
    lab = load_lab(EXAMPLE)
    assert set(lab.devices) == {"bench-imx8-1", "qemu-imx6ul-1", "sims"}
    board = lab.device("bench-imx8-1")
    assert (board.kind, board.family) == ("board", "imx")
    assert board.console is not None and (board.console.url, board.console.baudrate) == ("/dev/ttyUSB0", 115200)
    assert board.login is not None and (board.login.user, board.login.password) == ("root", "secret")
    assert board.power is not None and (board.power.on, board.power.off) == ("usbrelay R1_1=1", "usbrelay R1_1=0")
    assert board.flash is not None and board.flash.script == EXAMPLE.parent / "flash.uuu"
    assert board.flash.env_path == "/etc/fleetrig/agent.env"
    qemu = lab.device("qemu-imx6ul-1")
    assert (qemu.kind, qemu.board, qemu.family) == ("qemu", "imx6ul", "imx")
    assert (lab.device("sims").kind, lab.device("sims").count) == ("sim", 100)


def test_the_password_stays_out_of_the_repr():
    assert "secret" not in repr(load_lab(EXAMPLE))


def test_bare_on_and_off_keys_are_commands_not_booleans():
    lab = parse_lab("devices:\n  b:\n    kind: board\n    family: x86\n    power:\n      driver: external\n"
                    "      on: relay 1 on\n      off: relay 1 off\n      cycle: relay 1 cycle\n", Path("lab.yaml"))
    power = lab.device("b").power
    assert power is not None and (power.on, power.off, power.cycle) == ("relay 1 on", "relay 1 off", "relay 1 cycle")


@pytest.mark.parametrize("text, message", [
    ("devices:\n  bench-imx8-1: {kind: board, family: imx, console: {url: /dev/ttyUSB0, baudrate: fast}}\n",
     "lab.yaml: devices.bench-imx8-1.console.baudrate: must be a positive integer, got 'fast'"),
    ("devices:\n  b1: {kind: board, family: imx, console: {url: /dev/ttyUSB0, baudrat: 9600}}\n",
     "lab.yaml: devices.b1.console: unknown key 'baudrat' (known: url, baudrate)"),
    ("devices:\n  b1: {kind: board, family: imx, colour: red}\n",
     "lab.yaml: devices.b1: unknown key 'colour' (known: kind, family, console, login, power, flash)"),
    ("devices:\n  b1: {kind: robot, family: imx}\n",
     "lab.yaml: devices.b1.kind: must be one of board, qemu, sim, got 'robot'"),
    ("devices:\n  b1: {family: imx}\n", "lab.yaml: devices.b1.kind: missing (one of: board, qemu, sim)"),
    ("devices:\n  b1: {kind: board}\n", "lab.yaml: devices.b1.family: missing (one of: imx, photon, x86)"),
    ("devices:\n  q: {kind: qemu}\n", "lab.yaml: devices.q.board: missing"),
    ("devices:\n  s: {kind: sim, family: photon, count: 0}\n",
     "lab.yaml: devices.s.count: must be a positive integer, got 0"),
    ("devices:\n  s: {kind: sim, family: photon, count: true}\n",
     "lab.yaml: devices.s.count: must be a positive integer, got True"),
    ("devices:\n  s: {kind: sim, family: photon, count: 1000000}\n",
     "lab.yaml: devices.s.count: must be at most 100000"),
    ("devices:\n  s: {kind: sim, family: photon, console: {url: x}}\n",
     "lab.yaml: devices.s: unknown key 'console' (known: kind, family, count, power, flash)"),
    ("devices:\n  b: {kind: board, family: imx, power: {driver: external, on: relay-on}}\n",
     "lab.yaml: devices.b.power.off: missing"),
    ("devices:\n  b: {kind: board, family: imx, power: {driver: relay}}\n",
     "lab.yaml: devices.b.power.driver: must be one of external, manual, sim, qmp, got 'relay'"),
    ("devices:\n  b: {kind: board, family: imx, power: {driver: manual, on: x}}\n",
     "lab.yaml: devices.b.power: unknown key 'on' (known: driver)"),
    ("devices:\n  b: {kind: board, family: imx, flash: {driver: uuu}}\n",
     "lab.yaml: devices.b.flash: needs exactly one of 'bootloader'"),
    ("devices:\n  b: {kind: board, family: imx, flash: {driver: image, image: a.img}}\n",
     "lab.yaml: devices.b.flash.target: missing"),
    ("devices:\n  b: {kind: board, family: imx, flash: {driver: image, target: t.img, env_path: etc/a.env}}\n",
     "lab.yaml: devices.b.flash.env_path: must be an absolute path"),
    ("devices:\n  b: {kind: board, family: imx, login: {user: root}}\n",
     "lab.yaml: devices.b.login.password: missing or not a string"),
    ("devices:\n  b: {kind: board, family: imx, console: /dev/ttyUSB0}\n",
     "lab.yaml: devices.b.console: must be a mapping, got '/dev/ttyUSB0'"),
    ("devices:\n  'bad name': {kind: sim, family: x86}\n", "lab.yaml: devices: device name 'bad name' must be"),
    ("devices: []\n", "lab.yaml: devices: must be a mapping of device names to devices, got []"),
    ("hosts: {}\n", "lab.yaml: (top): unknown key 'hosts' (known: devices)"),
    ("devices:\n  b: {kind: board\n", "lab.yaml: not valid YAML at line 3"),
    ("- just\n- a list\n", "lab.yaml: (top): must be a mapping, got ['just', 'a list']"),
])
def test_a_mistake_is_named_by_file_device_and_key(text, message):
    assert refusal(text).startswith(message)


def test_a_huge_value_is_not_echoed_whole():
    message = refusal("devices:\n  b: {kind: board, family: " + "x" * 5000 + "}\n")
    assert message.startswith("lab.yaml: devices.b.family: must be one of imx, photon, x86, got 'xxx")
    assert len(message) < 200


def test_relative_paths_are_taken_from_the_lab_files_folder(tmp_path):
    lab_file = tmp_path / "bench" / "lab.yaml"
    lab_file.parent.mkdir()
    lab_file.write_text("devices:\n  b: {kind: board, family: imx, flash: {driver: image, image: img/os.img, "
                        "target: /srv/b.img, partition: 2}}\n")
    flash = load_lab(lab_file).device("b").flash
    assert flash is not None
    assert (flash.image, flash.target, flash.partition) == (lab_file.parent / "img/os.img", Path("/srv/b.img"), 2)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(LabError, match="no such file"):
        load_lab(tmp_path / "absent.yaml")
    with pytest.raises(LabError, match="not a regular file"):
        load_lab(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_text("#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(LabError, match="larger than"):
        load_lab(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00devices")
    with pytest.raises(LabError, match="not UTF-8"):
        load_lab(binary)


def test_an_unknown_device_is_named_with_the_known_ones():
    with pytest.raises(LabError, match=r"no device 'bench-9' \(devices: bench-imx8-1, qemu-imx6ul-1, sims\)"):
        load_lab(EXAMPLE).device("bench-9")


def test_find_lab_takes_the_option_then_the_environment_then_the_current_folder(tmp_path):
    given, named, here = tmp_path / "given.yaml", tmp_path / "named.yaml", tmp_path / "lab.yaml"
    for f in (given, named, here):
        f.write_text("devices: {s: {kind: sim, family: x86}}\n")
    assert find_lab(given, environ={ENV_VAR: str(named)}, cwd=tmp_path) == given
    assert find_lab(None, environ={ENV_VAR: str(named)}, cwd=tmp_path) == named
    assert find_lab(None, environ={}, cwd=tmp_path) == here
    with pytest.raises(LabError, match=r"given with --lab"):
        find_lab(tmp_path / "nope.yaml", environ={}, cwd=tmp_path)
    with pytest.raises(LabError, match=rf"named by \${ENV_VAR}"):
        find_lab(None, environ={ENV_VAR: str(tmp_path / "nope.yaml")}, cwd=tmp_path)
    here.unlink()
    with pytest.raises(LabError, match=rf"no lab inventory: give --lab FILE, set \${ENV_VAR}, or create ./lab.yaml"):
        find_lab(None, environ={}, cwd=tmp_path)
