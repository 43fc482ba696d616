"""The lab inventory, `lab.yaml`: which devices a lab has and how to reach, power and flash them.

The file is hand-written by whoever wires the bench, so every mistake is reported against the
key it is in (`lab.yaml: devices.bench-imx8-1.console.baudrate: must be a positive integer, got
'fast'`) before any relay clicks, and a misspelt key is refused with the keys that are known:
a silently ignored `baudrat:` would otherwise surface as garbage on a console an hour later.

YAML 1.1 reads the bare words `on`, `off`, `yes` and `no` as booleans; `power: {on: ..., off:
...}` is the natural way to write a relay's commands, so this loader takes only `true`/`false`
as booleans. The rest is PyYAML's safe loader, on a file capped in size.

Where it is looked for (`find_lab`): `--lab FILE`, else `$FLEETRIG_LAB`, else `./lab.yaml`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.state import DEFAULT_ENV_FILE

ENV_VAR = "FLEETRIG_LAB"
DEFAULT_NAME = "lab.yaml"
#: A lab file is a page of YAML; a megabyte is a wrong file, not a big lab.
MAX_FILE_BYTES = 1024 * 1024
#: A sim entry makes this many devices at most (the load tests go to 100 000).
MAX_SIM_COUNT = 100_000

KINDS = ("board", "qemu", "sim")
FAMILIES = ("imx", "photon", "x86")
POWER_DRIVERS = ("external", "manual", "sim", "qmp")
FLASH_DRIVERS = ("uuu", "image", "sim")
DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

#: The keys a device of each kind may carry.
DEVICE_KEYS: dict[str, tuple[str, ...]] = {
    "board": ("kind", "family", "console", "login", "power", "flash"),
    "qemu": ("kind", "family", "board", "login", "power", "flash"),
    "sim": ("kind", "family", "count", "power", "flash"),
}
CONSOLE_KEYS = ("url", "baudrate")
LOGIN_KEYS = ("user", "password", "prompt")
POWER_KEYS: dict[str, tuple[str, ...]] = {
    "external": ("driver", "on", "off", "cycle", "delay", "timeout"),
    "manual": ("driver",),
    "sim": ("driver",),
    "qmp": ("driver",),
}
FLASH_KEYS: dict[str, tuple[str, ...]] = {
    "uuu": ("driver", "bootloader", "image", "script", "partition", "env_path", "timeout"),
    "image": ("driver", "image", "target", "partition", "env_path"),
    "sim": ("driver",),
}


class LabError(Exception):
    """The lab file is missing or wrong; the message names the file, the key path and the fault."""


@dataclass(frozen=True)
class ConsoleSpec:
    url: str
    baudrate: int = 115200


@dataclass(frozen=True)
class LoginSpec:
    user: str
    password: str = field(repr=False)
    prompt: str | None = None


@dataclass(frozen=True)
class PowerSpec:
    driver: str
    on: str | None = None
    off: str | None = None
    cycle: str | None = None
    delay: float = 2.0
    timeout: float = 30.0


@dataclass(frozen=True)
class FlashSpec:
    driver: str
    image: Path | None = None
    bootloader: Path | None = None
    script: Path | None = None
    target: Path | None = None
    partition: int | None = None
    env_path: str = str(DEFAULT_ENV_FILE)
    timeout: float = 600.0


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str
    family: str
    board: str | None = None
    count: int = 1
    console: ConsoleSpec | None = None
    login: LoginSpec | None = None
    power: PowerSpec | None = None
    flash: FlashSpec | None = None


@dataclass(frozen=True)
class Lab:
    path: Path
    devices: dict[str, DeviceSpec] = field(default_factory=dict)

    def device(self, name: str) -> DeviceSpec:
        try:
            return self.devices[name]
        except KeyError:
            known = ", ".join(sorted(self.devices)) or "none"
            raise LabError(f"{self.path}: no device {name!r} (devices: {known})") from None


class _LabLoader(yaml.SafeLoader):
    """The safe loader with YAML 1.2 booleans: `on`/`off`/`yes`/`no` stay strings."""


_LabLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LabLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


class _Reader:
    """Typed reads from one mapping, each fault reported with the file and the key path."""

    def __init__(self, source: str, path: str, mapping: Any, known: tuple[str, ...] | None) -> None:
        """`known` None takes any key: for reading the key that decides which keys are known."""
        self.source, self.path = source, path
        if not isinstance(mapping, dict):
            self.fail(f"must be a mapping, got {_show(mapping)}")
        unknown = [str(k) for k in mapping if known is not None and k not in known]
        if unknown:
            self.fail(f"unknown key {unknown[0]!r} (known: {', '.join(known or ())})")
        self.mapping: dict[str, Any] = mapping

    def fail(self, what: str, key: str | None = None) -> None:
        where = f"{self.path}.{key}" if key else self.path
        raise LabError(f"{self.source}: {where}: {what}")

    def child(self, key: str, known: tuple[str, ...]) -> _Reader:
        return _Reader(self.source, f"{self.path}.{key}", self.mapping[key], known)

    def need(self, key: str, *, choices: tuple[str, ...] = ()) -> str:
        value = self.text(key, required=True, choices=choices)
        assert value is not None
        return value

    def text(self, key: str, *, required: bool = False, choices: tuple[str, ...] = ()) -> str | None:
        value = self.mapping.get(key)
        if value is None:
            if required:
                self.fail("missing" + (f" (one of: {', '.join(choices)})" if choices else ""), key)
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(f"must be a non-empty string, got {_show(value)}", key)
        if choices and value not in choices:
            self.fail(f"must be one of {', '.join(choices)}, got {_show(value)}", key)
        return value

    def positive(self, key: str, default: Any, *, integer: bool, limit: float | None = None) -> Any:
        value = self.mapping.get(key, default)
        number = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, number) or value <= 0:
            self.fail(f"must be a positive {'integer' if integer else 'number'}, got {_show(value)}", key)
        if limit is not None and value > limit:
            self.fail(f"must be at most {limit}, got {value}", key)
        return value

    def path_(self, key: str, base: Path) -> Path | None:
        value = self.text(key)
        return None if value is None else (base / value).resolve()


def _console(dev: _Reader) -> ConsoleSpec:
    r = dev.child("console", CONSOLE_KEYS)
    return ConsoleSpec(url=r.need("url"), baudrate=r.positive("baudrate", 115200, integer=True))


def _login(dev: _Reader) -> LoginSpec:
    r = dev.child("login", LOGIN_KEYS)
    user = r.need("user")
    password = r.mapping.get("password")
    if not isinstance(password, str):   # an empty password is a real (bad) bench setting
        r.fail("missing or not a string (write password: \"\" for none)", "password")
    assert isinstance(password, str)
    return LoginSpec(user=user, password=password, prompt=r.text("prompt"))


def _power(dev: _Reader) -> PowerSpec:
    driver = _Reader(dev.source, f"{dev.path}.power", dev.mapping["power"], None).need("driver", choices=POWER_DRIVERS)
    r = dev.child("power", POWER_KEYS[driver])
    if driver != "external":
        return PowerSpec(driver=driver)
    return PowerSpec(driver=driver, on=r.need("on"), off=r.need("off"),
                     cycle=r.text("cycle"), delay=r.positive("delay", 2.0, integer=False),
                     timeout=r.positive("timeout", 30.0, integer=False))


def _flash(dev: _Reader, base: Path) -> FlashSpec:
    driver = _Reader(dev.source, f"{dev.path}.flash", dev.mapping["flash"], None).need("driver", choices=FLASH_DRIVERS)
    r = dev.child("flash", FLASH_KEYS[driver])
    env_path = r.text("env_path") or str(DEFAULT_ENV_FILE)
    if not env_path.startswith("/"):
        r.fail(f"must be an absolute path inside the device's root file system, got {_show(env_path)}",
               "env_path")
    partition = r.positive("partition", 1, integer=True, limit=128) if "partition" in r.mapping else None
    if driver == "image" and r.mapping.get("target") is None:
        r.fail("missing (the disk image file to write)", "target")
    if driver == "uuu" and (r.mapping.get("bootloader") is None) == (r.mapping.get("script") is None):
        r.fail("needs exactly one of 'bootloader' (the boot loader uuu loads over USB, e.g. flash.bin; the "
               "harness writes the script) or 'script' (the lab's own uuu script, taking _image)")
    return FlashSpec(driver=driver, image=r.path_("image", base), bootloader=r.path_("bootloader", base),
                     script=r.path_("script", base), target=r.path_("target", base), partition=partition,
                     env_path=env_path,
                     timeout=r.positive("timeout", 600.0, integer=False) if driver == "uuu" else 600.0)


def _family_of_qemu_board(board: str) -> str | None:
    return "imx" if board.startswith("imx") else None


def _device(source: str, base: Path, name: Any, raw: Any) -> DeviceSpec:
    path = f"devices.{name}"
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise LabError(f"{source}: devices: device name {_show(name)} must be 1-63 letters, digits, '.', '_' or "
                       "'-', starting with a letter or digit")
    kind = _Reader(source, path, raw, None).need("kind", choices=KINDS)
    dev = _Reader(source, path, raw, DEVICE_KEYS[kind])
    board = dev.text("board", required=kind == "qemu")
    family = dev.text("family", choices=FAMILIES) or (_family_of_qemu_board(board) if board else None)
    if family is None:
        dev.fail(f"missing (one of: {', '.join(FAMILIES)})", "family")
    assert family is not None
    m = dev.mapping
    return DeviceSpec(
        name=name, kind=kind, family=family, board=board,
        count=dev.positive("count", 1, integer=True, limit=MAX_SIM_COUNT),
        console=_console(dev) if m.get("console") is not None else None,
        login=_login(dev) if m.get("login") is not None else None,
        power=_power(dev) if m.get("power") is not None else None,
        flash=_flash(dev, base) if m.get("flash") is not None else None,
    )


def parse_lab(text: str, path: Path) -> Lab:
    """Validate the text of a lab file; relative paths in it are taken from the file's folder."""
    source = str(path)
    try:
        data = yaml.load(text, Loader=_LabLoader)  # a SafeLoader subclass: no object tags
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise LabError(f"{source}: not valid YAML{where}: {problem}") from None
    top = _Reader(source, "(top)", data if data is not None else {}, ("devices",))
    devices = top.mapping.get("devices")
    if not isinstance(devices, dict) or not devices:
        raise LabError(f"{source}: devices: must be a mapping of device names to devices, got {_show(devices)}")
    base = path.resolve().parent
    return Lab(path=path, devices={str(n): _device(source, base, n, raw) for n, raw in devices.items()})


def load_lab(path: Path) -> Lab:
    """Read and validate a lab file."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise LabError(f"{path}: not a regular file; a lab inventory is a YAML file")
        if size > MAX_FILE_BYTES:
            raise LabError(f"{path}: {size} bytes, larger than {MAX_FILE_BYTES}; not a lab inventory")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise LabError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise LabError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_lab(text, path)


def find_lab(explicit: Path | None = None, *, environ: dict[str, str] | None = None,
             cwd: Path | None = None) -> Path:
    """The lab file to use: `--lab FILE`, else $FLEETRIG_LAB, else ./lab.yaml."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        if not explicit.exists():
            raise LabError(f"{explicit}: no such file (given with --lab)")
        return explicit
    if env.get(ENV_VAR):
        named = Path(env[ENV_VAR])
        if not named.exists():
            raise LabError(f"{named}: no such file (named by ${ENV_VAR})")
        return named
    here = (cwd or Path.cwd()) / DEFAULT_NAME
    if here.exists():
        return here
    raise LabError(f"no lab inventory: give --lab FILE, set ${ENV_VAR}, or create ./{DEFAULT_NAME} "
                   "(fixtures/lab.example.yaml shows the keys)")
