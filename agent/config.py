"""The agent's configuration file, intel_manageability.conf: read, change, keep.

It is XML as on an INBM device, with the defaults of the user guide (seed 002, "Default
Configuration Parameters"). Paths address elements by tag name, as the guide's forms do:
`get` takes `minStorageMB;minMemoryMB`, `set` takes `minStorageMB:10;minMemoryMB:250`, and
`append`/`remove` take `trustedRepositories:URL` and work only on the three list elements
(trustedRepositories, sotaSW, ubuntuAptSource). Every change is checked against the element's
type before anything is written, written atomically, and announced to listeners so it takes
effect live (telemetry intervals, diagnostics thresholds, trusted repositories).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from agent.hardware import HardwareError
from agent.state import write_atomic

FILE_NAME = "intel_manageability.conf"
MAX_CONFIG_BYTES = 64 * 1024
LIST_KEYS = ("trustedRepositories", "sotaSW", "ubuntuAptSource")


@dataclass(frozen=True)
class Key:
    section: str
    kind: str  # int | bool | str | list
    minimum: int = 0
    maximum: int = 10**9


KEYS: dict[str, Key] = {
    "dbs": Key("all", "str"),
    "collectionIntervalSeconds": Key("telemetry", "int", 1, 86400),
    "publishIntervalSeconds": Key("telemetry", "int", 1, 86400),
    "maxCacheSize": Key("telemetry", "int", 1, 100000),
    "containerHealthIntervalSeconds": Key("telemetry", "int", 1, 86400),
    "enableSwBom": Key("telemetry", "bool"),
    "swBomIntervalHours": Key("telemetry", "int", 1, 8760),
    "minStorageMB": Key("diagnostic", "int", 0, 10**7),
    "minMemoryMB": Key("diagnostic", "int", 0, 10**7),
    "minPowerPercent": Key("diagnostic", "int", 0, 100),
    "sotaSW": Key("diagnostic", "list"),
    "dockerBenchSecurityIntervalSeconds": Key("diagnostic", "int", 1, 86400),
    "networkCheck": Key("diagnostic", "bool"),
    "dbsRemoveImageOnFailedContainer": Key("dispatcher", "bool"),
    "trustedRepositories": Key("dispatcher", "list"),
    "ubuntuAptSource": Key("sota", "list"),
    "proceedWithoutRollback": Key("sota", "bool"),
}

DEFAULTS: dict[str, str | list[str]] = {
    "dbs": "WARN",
    "collectionIntervalSeconds": "60",
    "publishIntervalSeconds": "300",
    "maxCacheSize": "100",
    "containerHealthIntervalSeconds": "600",
    "enableSwBom": "true",
    "swBomIntervalHours": "24",
    "minStorageMB": "100",
    "minMemoryMB": "200",
    "minPowerPercent": "20",
    "sotaSW": ["docker", "trtl", "inbm-telemetry"],
    "dockerBenchSecurityIntervalSeconds": "900",
    "networkCheck": "true",
    "dbsRemoveImageOnFailedContainer": "false",
    "trustedRepositories": [],
    "ubuntuAptSource": ["http://archive.ubuntu.com/ubuntu/"],
    "proceedWithoutRollback": "true",
}
SECTIONS = ("all", "telemetry", "diagnostic", "dispatcher", "sota")


class ConfigError(HardwareError):
    """A configuration change refused; nothing was written."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


def _check(key: str, value: str) -> str:
    spec = KEYS.get(key)
    if spec is None:
        raise ConfigError(f"unknown configuration key {key!r}")
    value = value.strip()
    if spec.kind == "int":
        if not value.isdigit():
            raise ConfigError(f"{key} takes a whole number, got {value!r}")
        number = int(value)
        if not spec.minimum <= number <= spec.maximum:
            raise ConfigError(f"{key} must be between {spec.minimum} and {spec.maximum}, got {number}")
        return str(number)
    if spec.kind == "bool":
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"{key} takes true or false, got {value!r}")
        return value.lower()
    if spec.kind == "list":
        raise ConfigError(f"{key} is a list: use append or remove")
    if not value or len(value) > 256:
        raise ConfigError(f"{key} takes 1-256 characters")
    return value


def _split_pairs(path: str) -> list[tuple[str, str]]:
    pairs = []
    for part in (path or "").split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition(":")
        if not sep:
            raise ConfigError(f"{part!r} is not key:value")
        pairs.append((key.strip(), value.strip()))
    if not pairs:
        raise ConfigError("no key:value pairs given")
    return pairs


class AgentConfig:
    """intel_manageability.conf in the agent's state dir, with change listeners."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / FILE_NAME
        self.values: dict[str, str | list[str]] = {}
        self._listeners: list[Callable[[set[str]], None]] = []
        self.reload()

    # -- reading ------------------------------------------------------------------------------------

    def reload(self) -> None:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            # Shared until the first change: every change builds a new dict (see _commit), and
            # no list in it is ever changed in place.
            self.values = DEFAULTS
            return
        try:
            self.values = parse_config(text)
        except ConfigError:
            # A damaged file must not brick the device: fall back to the defaults.
            self.values = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items()}

    def int(self, key: str) -> int:
        return int(str(self.values[key]))

    def bool(self, key: str) -> bool:
        return str(self.values[key]) == "true"

    def list(self, key: str) -> list[str]:
        value = self.values[key]
        return list(value) if isinstance(value, list) else [value]

    def on_change(self, listener: Callable[[set[str]], None]) -> None:
        self._listeners.append(listener)

    # -- the five commands --------------------------------------------------------------------------

    def get(self, path: str) -> dict[str, str | list[str]]:
        keys = [k.strip() for k in (path or "").split(";") if k.strip()]
        if not keys:
            raise ConfigError("no keys given")
        unknown = [k for k in keys if k not in KEYS]
        if unknown:
            raise ConfigError(f"unknown configuration key {unknown[0]!r}")
        return {k: self.values[k] for k in keys}

    def set(self, path: str) -> dict[str, str | list[str]]:
        changes = {key: _check(key, value) for key, value in _split_pairs(path)}
        return self._commit({**self.values, **changes}, set(changes))

    def append(self, path: str) -> dict[str, str | list[str]]:
        new = dict(self.values)
        changed = set()
        for key, value in _split_pairs(path):
            if key not in LIST_KEYS:
                raise ConfigError(f"append works only on {', '.join(LIST_KEYS)}, not {key!r}")
            if not value or len(value) > 512 or any(c.isspace() for c in value):
                raise ConfigError(f"{key}: value must be 1-512 characters without spaces")
            items = list(new[key])
            if value not in items:
                items.append(value)
            new[key] = items
            changed.add(key)
        return self._commit(new, changed)

    def remove(self, path: str) -> dict[str, str | list[str]]:
        new = dict(self.values)
        changed = set()
        for key, value in _split_pairs(path):
            if key not in LIST_KEYS:
                raise ConfigError(f"remove works only on {', '.join(LIST_KEYS)}, not {key!r}")
            items = list(new[key])
            if value not in items:
                raise ConfigError(f"{key} does not contain {value!r}")
            items.remove(value)
            new[key] = items
            changed.add(key)
        return self._commit(new, changed)

    def load(self, content: bytes) -> dict[str, str | list[str]]:
        values = parse_config(content)
        changed = {k for k in KEYS if values.get(k) != self.values.get(k)}
        return self._commit(values, changed)

    def _commit(self, values: dict[str, str | list[str]], changed: set[str]) -> dict[str, str | list[str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, render_config(values), 0o644)
        self.values = values
        for listener in self._listeners:
            listener(changed)
        return {k: values[k] for k in sorted(changed)}


def render_config(values: dict[str, str | list[str]]) -> str:
    root = ET.Element("configurations")
    sections = {name: ET.SubElement(root, name) for name in SECTIONS}
    for key, spec in KEYS.items():
        element = ET.SubElement(sections[spec.section], key)
        value = values.get(key, DEFAULTS[key])
        if isinstance(value, list):
            element.text = "".join(f"\n            {item}" for item in value) + ("\n        " if value else "")
        else:
            element.text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def parse_config(content: bytes | str) -> dict[str, str | list[str]]:
    """Parse and check a whole configuration file (the `load` command, and the stored file)."""
    raw = content.encode() if isinstance(content, str) else content
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"configuration file larger than {MAX_CONFIG_BYTES} bytes")
    try:
        root = SafeET.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise ConfigError(
            f"configuration file refused: {type(exc).__name__} (DTDs and entities are not allowed)"
        ) from None
    except ET.ParseError as exc:
        raise ConfigError(f"configuration file is not well-formed XML: {exc}") from None
    if root.tag != "configurations":
        raise ConfigError(f"configuration root element must be <configurations>, got <{root.tag}>")
    values: dict[str, str | list[str]] = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items()}
    for section in root:
        for element in section:
            spec = KEYS.get(element.tag)
            if spec is None or spec.section != section.tag:
                continue  # sections this agent does not use (e.g. orchestrator) are kept out
            text = element.text or ""
            if spec.kind == "list":
                values[element.tag] = [line.strip() for line in text.split() if line.strip()]
            else:
                values[element.tag] = _check(element.tag, text)
    return values
