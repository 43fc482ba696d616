"""The typed manifest model: one frozen dataclass per command, and how each reads from and
writes to manifest XML.

Split out of agent/manifest.py, which re-exports every name here; import them from there.
parse_manifest() (in agent/manifest.py) builds these from a schema-valid manifest, and
agent/rpc_forms.py builds them from cloud RPC calls. Writing uses xml.etree, never string
pasting, so user values cannot inject elements.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

from agent.wire import ResultCode, WireError


class ManifestError(WireError):
    """A manifest (or RPC call) that cannot be executed. `status` is the result code to answer
    with (300 unless stated), the message names what is wrong, and `path` is the XML path of the
    offending element when the schema found it."""

    def __init__(self, message: str, status: int = ResultCode.XML_FAILURE, *, path: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.path = path


# Value kinds of manifest fields, and how each is read from / written to XML text.
_STR = "str"  # xs:string: whitespace kept exactly
_URI = "uri"  # xs:anyURI: whitespace collapsed
_DEC = "decimal"  # xs:decimal -> Decimal
_INT = "int"  # sigversion (a decimal enumeration of 256 / 384) -> int
_DATE = "date"  # xs:date -> datetime.date

_DATE_LEXICAL = re.compile(r"^(-?\d{4,})-(\d{2})-(\d{2})(?:Z|[+-]\d{2}:\d{2})?$")


def _read_value(text: str, kind: str, where: str) -> Any:
    if kind == _STR:
        return text
    collapsed = " ".join(text.split())
    if kind == _URI:
        return collapsed
    if kind == _DEC:
        return Decimal(collapsed)
    if kind == _INT:
        return int(Decimal(collapsed))
    match = _DATE_LEXICAL.match(collapsed)
    year = int(match.group(1)) if match else 0
    if not match or not 1 <= year <= 9999:
        raise ManifestError(f"{where}: date {collapsed!r} is outside the years 1 to 9999", path=where)
    try:
        return dt.date(year, int(match.group(2)), int(match.group(3)))
    except ValueError as exc:  # pragma: no cover - the schema has checked the calendar already
        raise ManifestError(f"{where}: {exc}", path=where) from None


def _write_value(value: Any) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


# One field spec: (dataclass attribute, XML tag, value kind).
_Spec = tuple[tuple[str, str, str], ...]


def _read_fields(elem: ET.Element, spec: _Spec, where: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attr, tag, kind in spec:
        child = elem.find(tag)
        if child is not None:
            values[attr] = _read_value(child.text or "", kind, f"{where}/{tag}")
    return values


def _write_fields(parent: ET.Element, obj: Any, spec: _Spec) -> None:
    for attr, tag, _kind in spec:
        value = getattr(obj, attr)
        if value is not None:
            ET.SubElement(parent, tag).text = _write_value(value)


class Command:
    """Base of the model classes. `kind` is the manifest <type> the command travels in."""

    kind: ClassVar[str]

    def blocks(self) -> list[ET.Element]:
        """The elements this command puts under <manifest>, after <type>."""
        raise NotImplementedError

    def to_xml(self) -> str:
        """A complete manifest carrying this command (OTA: with a default remote header)."""
        return Manifest(command=self).to_xml()


class OtaCommand(Command):
    """Base of the OTA commands; `ota_type` is the header <type> and the payload's tag."""

    kind: ClassVar[str] = "ota"
    ota_type: ClassVar[str]

    def payload(self) -> ET.Element:
        """The update element that goes under <ota><type>."""
        raise NotImplementedError

    def blocks(self) -> list[ET.Element]:
        return [_ota_block(self, OtaHeader(ota_type=self.ota_type), None)]


_AOTA_SPEC: _Spec = (
    ("cmd", "cmd", _STR), ("app", "app", _STR), ("fetch", "fetch", _URI), ("file", "file", _STR),
    ("version", "version", _DEC), ("container_tag", "containerTag", _STR),
    ("config_params", "configParams", _STR), ("device_reboot", "deviceReboot", _STR),
    ("signature", "signature", _STR), ("sigversion", "sigversion", _INT),
    ("username", "username", _STR), ("password", "password", _STR),
    ("docker_registry", "dockerRegistry", _STR), ("docker_username", "dockerUsername", _STR),
    ("docker_password", "dockerPassword", _STR),
)


@dataclass(frozen=True, kw_only=True)
class AotaCommand(OtaCommand):
    """Application OTA: docker import/load/pull/remove/stats, compose up/down/pull/list/remove,
    application (package) update. `username`/`password` are for the server holding `fetch`;
    the docker_* fields for a private registry."""

    ota_type: ClassVar[str] = "aota"

    cmd: str
    app: str
    fetch: str | None = None
    file: str | None = None
    version: Decimal | None = None
    container_tag: str | None = None
    config_params: str | None = None
    device_reboot: str | None = None
    signature: str | None = None
    sigversion: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    docker_registry: str | None = None
    docker_username: str | None = None
    docker_password: str | None = field(default=None, repr=False)
    name: str | None = None

    @classmethod
    def from_element(cls, elem: ET.Element, where: str) -> AotaCommand:
        return cls(name=elem.get("name"), **_read_fields(elem, _AOTA_SPEC, where))

    def payload(self) -> ET.Element:
        elem = ET.Element("aota", {} if self.name is None else {"name": self.name})
        _write_fields(elem, self, _AOTA_SPEC)
        return elem


_FOTA_SPEC: _Spec = (
    ("fetch", "fetch", _URI), ("biosversion", "biosversion", _STR), ("vendor", "vendor", _STR),
    ("manufacturer", "manufacturer", _STR), ("product", "product", _STR),
    ("releasedate", "releasedate", _DATE), ("path", "path", _STR),
    ("productversion", "productversion", _STR), ("signature", "signature", _STR),
    ("sigversion", "sigversion", _INT), ("tooloptions", "tooloptions", _STR), ("boot", "boot", _STR),
    ("guid", "guid", _STR), ("size", "size", _STR), ("username", "username", _STR),
    ("password", "password", _STR), ("device_reboot", "deviceReboot", _STR),
)


@dataclass(frozen=True, kw_only=True)
class FotaCommand(OtaCommand):
    """Firmware OTA. vendor, biosversion, manufacturer and product must match the platform and
    releasedate must be newer than the running firmware's."""

    ota_type: ClassVar[str] = "fota"

    biosversion: str
    vendor: str
    manufacturer: str
    product: str
    releasedate: dt.date
    fetch: str | None = None
    path: str | None = None
    productversion: str | None = None
    signature: str | None = None
    sigversion: int | None = None
    tooloptions: str | None = None
    boot: str | None = None
    guid: str | None = None
    size: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    device_reboot: str | None = None
    name: str = "sample"

    @classmethod
    def from_element(cls, elem: ET.Element, where: str) -> FotaCommand:
        return cls(name=elem.get("name", ""), **_read_fields(elem, _FOTA_SPEC, where))

    def payload(self) -> ET.Element:
        elem = ET.Element("fota", {"name": self.name})
        _write_fields(elem, self, _FOTA_SPEC)
        return elem


_SOTA_SPEC: _Spec = (
    ("mode", "mode", _STR), ("package_list", "package_list", _STR), ("fetch", "fetch", _URI),
    ("release_date", "release_date", _DATE), ("path", "path", _STR),
    ("signature", "signature", _STR), ("username", "username", _STR),
    ("password", "password", _STR), ("device_reboot", "deviceReboot", _STR),
)


@dataclass(frozen=True, kw_only=True)
class SotaCommand(OtaCommand):
    """OS OTA: an apt update/upgrade (mode full, no-download, download-only, or cancel), or an
    image (e.g. a mender artifact) at `fetch`. `log_to_file` is the raw Y/N flag."""

    ota_type: ClassVar[str] = "sota"

    cmd: str
    log_to_file: str | None = None
    mode: str | None = None
    package_list: str | None = None
    fetch: str | None = None
    release_date: dt.date | None = None
    path: str | None = None
    signature: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    device_reboot: str | None = None

    @property
    def logs_to_file(self) -> bool:
        return (self.log_to_file or "N").upper().startswith("Y")

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(p for p in (self.package_list or "").split(",") if p)

    @classmethod
    def from_element(cls, elem: ET.Element, where: str) -> SotaCommand:
        cmd = elem.find("cmd")
        assert cmd is not None  # the schema requires it
        return cls(cmd=cmd.text or "", log_to_file=cmd.get("logtofile"), **_read_fields(elem, _SOTA_SPEC, where))

    def payload(self) -> ET.Element:
        elem = ET.Element("sota")
        cmd = ET.SubElement(elem, "cmd", {} if self.log_to_file is None else {"logtofile": self.log_to_file})
        cmd.text = self.cmd
        _write_fields(elem, self, _SOTA_SPEC)
        return elem


@dataclass(frozen=True, kw_only=True)
class PotaCommand(OtaCommand):
    """Platform OTA: a firmware update, then an OS update."""

    ota_type: ClassVar[str] = "pota"

    fota: FotaCommand
    sota: SotaCommand

    def payload(self) -> ET.Element:
        elem = ET.Element("pota")
        elem.append(self.fota.payload())
        elem.append(self.sota.payload())
        return elem


# The config verb in <cmd>, and the element under <configtype> that goes with it.
CONFIG_ELEMENT = {"get_element": "get", "set_element": "set", "load": "load", "append": "append",
                   "remove": "remove"}


@dataclass(frozen=True, kw_only=True)
class ConfigCommand(Command):
    """Configuration: get_element / set_element / append / remove take `path` ("key",
    "key:value", several joined by ';'); load takes `fetch` (optionally `path`, `signature`)."""

    kind: ClassVar[str] = "config"

    cmd: str
    path: str | None = None
    fetch: str | None = None
    signature: str | None = None

    def blocks(self) -> list[ET.Element]:
        config = ET.Element("config")
        ET.SubElement(config, "cmd").text = self.cmd
        operation = ET.SubElement(ET.SubElement(config, "configtype"), CONFIG_ELEMENT.get(self.cmd, self.cmd))
        if self.cmd == "load":
            _write_fields(operation, self, (("fetch", "fetch", _URI), ("path", "path", _STR),
                                            ("signature", "signature", _STR)))
        else:
            ET.SubElement(operation, "path").text = self.path or ""
        return [config]


@dataclass(frozen=True, kw_only=True)
class PowerCommand(Command):
    """Reboot (`restart`) or power off (`shutdown`)."""

    kind: ClassVar[str] = "cmd"

    action: str  # "restart" | "shutdown"

    def blocks(self) -> list[ET.Element]:
        return [_text_element("cmd", self.action)]


@dataclass(frozen=True, kw_only=True)
class DecommissionCommand(Command):
    """Remove every credential, then shut down for good."""

    kind: ClassVar[str] = "cmd"

    def blocks(self) -> list[ET.Element]:
        return [_text_element("cmd", "decommission")]


@dataclass(frozen=True, kw_only=True)
class QueryCommand(Command):
    """Report device information: all, hw, fw, os, status, version, security, guid, swbom."""

    kind: ClassVar[str] = "cmd"

    option: str

    def blocks(self) -> list[ET.Element]:
        query = ET.Element("query")
        ET.SubElement(query, "option").text = self.option
        return [_text_element("cmd", "query"), query]


@dataclass(frozen=True, kw_only=True)
class SourceCommand(Command):
    """Package sources. target "os" edits the OS apt sources (add/update/remove take `sources`
    lines); target "application" edits one file under sources.list.d named `filename` (add may
    fetch a GPG key from `gpg_uri` saved as `gpg_keyname`; remove may delete `gpg_keyname`).
    action "list" takes nothing."""

    kind: ClassVar[str] = "source"

    target: str  # "application" | "os"
    action: str  # "add" | "update" | "remove" | "list"
    sources: tuple[str, ...] = ()
    filename: str | None = None
    gpg_uri: str | None = None
    gpg_keyname: str | None = None

    def blocks(self) -> list[ET.Element]:
        block = ET.Element("osSource" if self.target == "os" else "applicationSource")
        action = ET.SubElement(block, self.action)
        if self.action == "list":
            return [block]
        if self.target == "os":
            repos = ET.SubElement(action, "repos")
            for line in self.sources:
                ET.SubElement(repos, "source_pkg").text = line
            return [block]
        if self.action in ("add", "remove") and (self.gpg_uri is not None or self.gpg_keyname is not None):
            gpg = ET.SubElement(action, "gpg")
            if self.action == "add" and self.gpg_uri is not None:
                ET.SubElement(gpg, "uri").text = self.gpg_uri
            if self.gpg_keyname is not None:
                ET.SubElement(gpg, "keyname").text = self.gpg_keyname
        repo = ET.SubElement(action, "repo")
        if self.action != "remove":
            repos = ET.SubElement(repo, "repos")
            for line in self.sources:
                ET.SubElement(repos, "source_pkg").text = line
        ET.SubElement(repo, "filename").text = self.filename or ""
        return [block]


@dataclass(frozen=True, kw_only=True)
class OtaHeader:
    """The <header> of an OTA manifest."""

    ota_type: str
    repo: str = "remote"
    id: str | None = None
    name: str | None = None
    description: str | None = None


@dataclass(frozen=True, kw_only=True)
class OtaBundle:
    """The optional <bundle> of an OTA manifest (a package bundle and its signature)."""

    name: str
    version: Decimal
    signature: str


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """One parsed manifest: exactly one command, plus the OTA header/bundle for OTA manifests."""

    command: Command
    header: OtaHeader | None = None
    bundle: OtaBundle | None = None

    @property
    def kind(self) -> str:
        return self.command.kind

    def to_xml(self) -> str:
        """The manifest as UTF-8 XML text (with an XML declaration)."""
        root = ET.Element("manifest")
        ET.SubElement(root, "type").text = self.kind
        command = self.command
        if isinstance(command, OtaCommand):
            header = self.header or OtaHeader(ota_type=command.ota_type)
            root.append(_ota_block(command, header, self.bundle))
        else:
            root.extend(command.blocks())
        return '<?xml version="1.0" encoding="utf-8"?>' + ET.tostring(root, encoding="unicode")


def _text_element(tag: str, text: str) -> ET.Element:
    elem = ET.Element(tag)
    elem.text = text
    return elem


def _ota_block(command: OtaCommand, header: OtaHeader, bundle: OtaBundle | None) -> ET.Element:
    ota = ET.Element("ota")
    head = ET.SubElement(ota, "header")
    for tag in ("id", "name", "description"):
        if getattr(header, tag) is not None:
            ET.SubElement(head, tag).text = getattr(header, tag)
    ET.SubElement(head, "type").text = header.ota_type
    ET.SubElement(head, "repo").text = header.repo
    ET.SubElement(ota, "type").append(command.payload())
    if bundle is not None:
        block = ET.SubElement(ota, "bundle")
        ET.SubElement(block, "name").text = bundle.name
        ET.SubElement(block, "version").text = str(bundle.version)
        ET.SubElement(block, "signature").text = bundle.signature
    return ota
