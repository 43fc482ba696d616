"""Device manifests: the XML commands a device executes, and the results it answers with.

This is the manifest half of the wire contract (agent/wire.py is the MQTT half). A manifest is
an XML document in the language of Intel In-Band Manageability (INBM) devices: OTA updates
(aota, fota, sota, pota), configuration (get/set/load/append/remove), device commands (restart,
shutdown, decommission, query) and package sources. The grammar is agent/manifest_schema.xsd;
this module adds what a schema cannot say:

- parse_manifest() refuses oversize, non-UTF-8 and hostile XML (DTDs, entities, external
  references) before anything else reads it, validates against the schema, checks that the
  manifest carries exactly the block its <type> calls for, and returns a typed model;
- manifest_from_rpc() turns the cloud's RPC calls (the ThingsBoard method names and OTA form
  fields of the INBM user guide) into manifest XML built with xml.etree, never by pasting user
  values into strings, and checks its own output with parse_manifest();
- Result is the JSON answer {"status": N, "message": "...", "job_id": "..."}, with the status
  codes of the INBM user guide.

Only the standard library, defusedxml and xmlschema are used: both are pure Python and packaged
by Debian, so the agent still runs on a board's own python3.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import defusedxml.ElementTree as DefusedET
import xmlschema
from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden

from agent.wire import WireError, decode

# ---------------------------------------------------------------------------------------------
# Status codes and results

COMMAND_SUCCESS = 200
XML_FAILURE = 300  # the manifest failed to parse or validate; nothing was changed
COMMAND_FAILURE = 301
OTA_IN_PROGRESS = 302  # another OTA is running (the code INBM's dispatcher sends)
OTA_FAILURE = 303  # another OTA is running (the code the INBM ThingsBoard guide lists)
INSTALL_FAILURE = 400
IMAGE_IMPORT_FAILURE = 401
FILE_NOT_FOUND = 404

#: The upstream message for each status.
MESSAGES: dict[int, str] = {
    COMMAND_SUCCESS: "COMMAND SUCCESS",
    XML_FAILURE: "FAILED TO PARSE/VALIDATE MANIFEST",
    COMMAND_FAILURE: "COMMAND FAILURE",
    OTA_IN_PROGRESS: "OTA IN PROGRESS, TRY LATER",
    OTA_FAILURE: "OTA IN PROGRESS, TRY LATER",
    INSTALL_FAILURE: "FAILED TO INSTALL",
    IMAGE_IMPORT_FAILURE: "FAILED IMAGE IMPORT, IMAGE ALREADY PRESENT",
    FILE_NOT_FOUND: "FILE NOT FOUND",
}

#: Statuses meaning "busy: another OTA is in progress, try later".
BUSY_STATUSES = frozenset({OTA_IN_PROGRESS, OTA_FAILURE})

_JOB_ID_MAX = 128
_RESULT_MESSAGE_MAX = 4096


class ManifestError(WireError):
    """A manifest (or RPC call) that cannot be executed. `status` is the result code to answer
    with (300 unless stated), the message names what is wrong, and `path` is the XML path of the
    offending element when the schema found it."""

    def __init__(self, message: str, status: int = XML_FAILURE, *, path: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.path = path

    def result(self, job_id: str = "") -> Result:
        return Result.failure(self.status, str(self), job_id=job_id)


@dataclass(frozen=True)
class Result:
    """What a device answers to a manifest: {"status": N, "message": "...", "job_id": "..."}."""

    status: int
    message: str
    job_id: str = ""

    @classmethod
    def success(cls, job_id: str = "", detail: str = "") -> Result:
        return cls.failure(COMMAND_SUCCESS, detail, job_id=job_id)

    @classmethod
    def failure(cls, status: int, detail: str = "", *, job_id: str = "") -> Result:
        """The upstream message for `status`, followed by `detail` when there is one."""
        base = MESSAGES.get(status, "")
        message = f"{base}: {detail}" if base and detail else (base or detail)
        return cls(status=status, message=message, job_id=job_id)

    @property
    def ok(self) -> bool:
        return self.status == COMMAND_SUCCESS

    @property
    def busy(self) -> bool:
        return self.status in BUSY_STATUSES

    def to_json(self) -> str:
        return json.dumps({"status": self.status, "message": self.message, "job_id": self.job_id},
                          separators=(",", ":"))

    @classmethod
    def parse(cls, payload: str | bytes | bytearray) -> Result:
        what = "result"
        data = decode(payload, what)
        status = data.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise WireError(f"{what}: field 'status' must be an integer from 100 to 599, got {status!r}")
        message = data.get("message", "")
        if not isinstance(message, str):
            raise WireError(f"{what}: field 'message' must be str, got {type(message).__name__}")
        if len(message) > _RESULT_MESSAGE_MAX:
            raise WireError(f"{what}: field 'message' longer than {_RESULT_MESSAGE_MAX} characters")
        job_id = data.get("job_id") or ""
        if not isinstance(job_id, str):
            raise WireError(f"{what}: field 'job_id' must be str, got {type(job_id).__name__}")
        if len(job_id) > _JOB_ID_MAX:
            raise WireError(f"{what}: field 'job_id' longer than {_JOB_ID_MAX} characters")
        return cls(status=status, message=message, job_id=job_id)


# ---------------------------------------------------------------------------------------------
# The typed model

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
_CONFIG_ELEMENT = {"get_element": "get", "set_element": "set", "load": "load", "append": "append",
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
        operation = ET.SubElement(ET.SubElement(config, "configtype"), _CONFIG_ELEMENT.get(self.cmd, self.cmd))
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


# ---------------------------------------------------------------------------------------------
# Parsing

#: Largest manifest accepted, in bytes. Upstream's largest example is about 3.5 KB, and the
#: largest plausible real one (an OS source list of 25 lines of the schema's 1500-character
#: maximum) is about 40 KB of ASCII. The schema alone bounds nothing: several fields
#: (package_list, list, bundle name/signature, the name attributes) have no length limit, so
#: the cap is what keeps a hostile manifest from costing memory and validation time.
MAX_MANIFEST_BYTES = 64 * 1024

#: Deepest element nesting accepted. A schema-valid manifest nests at most 7 levels
#: (manifest/ota/type/pota/fota/releasedate), so this never refuses a valid one; it stops
#: deeply nested junk before the (recursive) schema validator sees it.
MAX_DEPTH = 16

SCHEMA_PATH = Path(__file__).with_name("manifest_schema.xsd")

_XML_DECLARED_ENCODING = re.compile(rb"^(?:\xef\xbb\xbf)?<\?xml[^>]*?\bencoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")
_ENTITY_DECLARATION = re.compile(r"<!ENTITY", re.IGNORECASE)
_EXTERNAL_ENTITY = re.compile(r"<!ENTITY[^>]*\b(?:SYSTEM|PUBLIC)\b", re.IGNORECASE)
_MESSAGE_MAX = 300


@cache
def schema() -> xmlschema.XMLSchema10:
    """agent/manifest_schema.xsd, loaded once on first use."""
    return xmlschema.XMLSchema10(str(SCHEMA_PATH))


def _clip(text: str) -> str:
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."


def _checked_bytes(xml: str | bytes | bytearray | memoryview) -> bytes:
    """The manifest as UTF-8 bytes, or ManifestError for oversize / non-UTF-8 input."""
    if isinstance(xml, str):
        if len(xml) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest of {len(xml)} characters exceeds the {MAX_MANIFEST_BYTES}-byte limit")
        try:
            data = xml.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ManifestError(f"manifest is not valid UTF-8 text: {exc.reason} at character {exc.start}") from None
    elif isinstance(xml, bytes | bytearray | memoryview):
        data = bytes(xml)
    else:
        raise ManifestError(f"manifest must be str or bytes, got {type(xml).__name__}")
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest of {len(data)} bytes exceeds the {MAX_MANIFEST_BYTES}-byte limit")
    if not data.strip():
        raise ManifestError("manifest is empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"manifest is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} ({exc.reason})"
        ) from None
    declared = _XML_DECLARED_ENCODING.match(data)
    if declared:
        encoding = declared.group(1).decode("ascii").lower()
        if encoding not in ("utf-8", "utf8") and not (encoding in ("us-ascii", "ascii") and data.isascii()):
            raise ManifestError(f"manifest declares encoding {encoding!r}; manifests must be UTF-8")
    return data


def _parse_xml(data: bytes) -> ET.Element:
    try:
        return DefusedET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DTDForbidden as exc:
        text = data.decode("utf-8")
        if exc.sysid or exc.pubid:
            ref = exc.sysid or exc.pubid
            raise ManifestError(f"manifest refused: its DOCTYPE makes an external reference ({ref!r}); "
                                "DTDs and external references are not allowed") from None
        if _EXTERNAL_ENTITY.search(text):
            raise ManifestError("manifest refused: it declares an external entity (XXE); "
                                "DTDs, entities and external references are not allowed") from None
        if _ENTITY_DECLARATION.search(text):
            raise ManifestError("manifest refused: it declares entities (entity expansion, 'billion laughs'); "
                                "DTDs and entities are not allowed") from None
        raise ManifestError(f"manifest refused: it carries a DTD (<!DOCTYPE {exc.name}>); "
                            "DTDs are not allowed") from None
    except EntitiesForbidden as exc:
        raise ManifestError(f"manifest refused: it declares the entity {exc.name!r}; "
                            "entities are not allowed") from None
    except ExternalReferenceForbidden as exc:
        raise ManifestError(f"manifest refused: external reference {exc.sysid or exc.pubid!r} "
                            "is not allowed") from None
    except ET.ParseError as exc:
        raise ManifestError(f"manifest is not well-formed XML: {exc}") from None


def _check_depth(root: ET.Element) -> None:
    stack = [(root, 1)]
    while stack:
        elem, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ManifestError(f"manifest nests elements deeper than {MAX_DEPTH} levels (at <{elem.tag}>)")
        stack.extend((child, depth + 1) for child in elem)


def _validate(root: ET.Element) -> None:
    try:
        error = next(iter(schema().iter_errors(root)), None)
    except RecursionError:  # pragma: no cover - _check_depth keeps trees shallow
        raise ManifestError("manifest is too deeply nested to validate") from None
    if error is not None:
        path = error.path or f"/{root.tag}"
        reason = error.reason or error.message
        raise ManifestError(_clip(f"manifest does not follow the schema at {path}: {reason}"), path=path)


# Blocks under <manifest>, in schema order, and which manifest <type> each belongs to.
_BLOCKS = ("cmd", "config", "query", "restart", "ota", "osSource", "applicationSource")


def _build(root: ET.Element) -> Manifest:
    """The model of a schema-valid manifest, after checking it holds one coherent command."""
    kind = root.findtext("type")
    present = {child.tag for child in root} - {"type"}

    def only(*allowed: str) -> None:
        for tag in _BLOCKS:
            if tag in present and tag not in allowed:
                raise ManifestError(f"<{tag}> does not belong in a manifest of type {kind!r}", path=f"/manifest/{tag}")

    def need(tag: str, why: str) -> ET.Element:
        elem = root.find(tag)
        if elem is None:
            raise ManifestError(f"{why} needs a <{tag}> block", path=f"/manifest/{tag}")
        return elem

    if kind == "ota":
        only("ota")
        return _build_ota(need("ota", "a manifest of type 'ota'"))
    if kind == "config":
        only("config")
        return Manifest(command=_build_config(need("config", "a manifest of type 'config'")))
    if kind == "cmd":
        verb = need("cmd", "a manifest of type 'cmd'").text
        if verb == "query":
            only("cmd", "query")
            return Manifest(command=QueryCommand(option=need("query", "a query command").findtext("option", "")))
        if verb == "restart":
            only("cmd", "restart")
            restart = root.find("restart")
            if restart is not None and len(restart):
                raise ManifestError("<restart> must not contain elements", path="/manifest/restart")
            return Manifest(command=PowerCommand(action="restart"))
        only("cmd")
        if verb == "shutdown":
            return Manifest(command=PowerCommand(action="shutdown"))
        return Manifest(command=DecommissionCommand())
    # kind == "source": the schema allows nothing else
    blocks = [tag for tag in ("osSource", "applicationSource") if tag in present]
    if len(blocks) != 1:
        raise ManifestError("a manifest of type 'source' needs exactly one of <osSource> or <applicationSource>",
                            path="/manifest")
    only(blocks[0])
    return Manifest(command=_build_source(need(blocks[0], "a source manifest")))


def _build_ota(ota: ET.Element) -> Manifest:
    head = ota.find("header")
    payload = ota.find("type")
    assert head is not None and payload is not None  # the schema requires both
    header = OtaHeader(ota_type=head.findtext("type", ""), repo=head.findtext("repo", ""), id=head.findtext("id"),
                       name=head.findtext("name"), description=head.findtext("description"))
    body = payload[0]
    if body.tag != header.ota_type:
        raise ManifestError(f"OTA header says {header.ota_type!r} but the update is <{body.tag}>",
                            path="/manifest/ota/header/type")
    where = f"/manifest/ota/type/{body.tag}"
    command: OtaCommand
    if body.tag == "aota":
        command = AotaCommand.from_element(body, where)
    elif body.tag == "fota":
        command = FotaCommand.from_element(body, where)
    elif body.tag == "sota":
        command = SotaCommand.from_element(body, where)
    else:
        fota, sota = body.find("fota"), body.find("sota")
        assert fota is not None and sota is not None  # the schema requires both
        command = PotaCommand(fota=FotaCommand.from_element(fota, f"{where}/fota"),
                              sota=SotaCommand.from_element(sota, f"{where}/sota"))
    bundle = None
    found = ota.find("bundle")
    if found is not None:
        version = Decimal(" ".join(found.findtext("version", "").split()))
        bundle = OtaBundle(name=found.findtext("name", ""), version=version, signature=found.findtext("signature", ""))
    return Manifest(command=command, header=header, bundle=bundle)


def _build_config(config: ET.Element) -> ConfigCommand:
    verb = config.findtext("cmd", "")
    configtype = config.find("configtype")
    assert configtype is not None  # the schema requires it
    operation = configtype[0]
    if operation.tag != _CONFIG_ELEMENT[verb]:
        raise ManifestError(f"config command {verb!r} goes with <{_CONFIG_ELEMENT[verb]}>, not <{operation.tag}>",
                            path=f"/manifest/config/configtype/{operation.tag}")
    fetch = operation.findtext("fetch")
    return ConfigCommand(cmd=verb, path=operation.findtext("path"),
                         fetch=None if fetch is None else " ".join(fetch.split()),
                         signature=operation.findtext("signature"))


def _build_source(block: ET.Element) -> SourceCommand:
    target = "os" if block.tag == "osSource" else "application"
    action = block[0]
    if action.tag == "list":
        return SourceCommand(target=target, action="list")
    sources = tuple(elem.text or "" for elem in action.iter("source_pkg"))
    gpg = action.find("gpg")
    return SourceCommand(target=target, action=action.tag, sources=sources,
                         filename=action.findtext("repo/filename"),
                         gpg_uri=None if gpg is None else gpg.findtext("uri"),
                         gpg_keyname=None if gpg is None else gpg.findtext("keyname"))


def parse_manifest(xml: str | bytes) -> Manifest:
    """Parse, check and model one manifest; raise ManifestError (status 300) naming the problem.

    In order: size (MAX_MANIFEST_BYTES), UTF-8, no DTD / entity / external reference (defusedxml),
    well-formed XML, nesting depth, agent/manifest_schema.xsd, then one coherent command per
    manifest (the block its <type> and <cmd> call for, and nothing else).
    """
    root = _parse_xml(_checked_bytes(xml))
    _check_depth(root)
    _validate(root)
    return _build(root)


# ---------------------------------------------------------------------------------------------
# Building manifests from cloud RPC calls

TRIGGER_OTA = "triggerota"
TRIGGER_AOTA = "triggeraota"
TRIGGER_FOTA = "triggerfota"
TRIGGER_SOTA = "triggersota"
TRIGGER_CONFIG = "triggerconfig"
TRIGGER_QUERY = "triggerquery"
REBOOT_DEVICE = "reboot_device"
SHUTDOWN_DEVICE = "shutdown_device"
DECOMMISSION_DEVICE = "decommission_device"

RPC_METHODS = (TRIGGER_OTA, TRIGGER_AOTA, TRIGGER_FOTA, TRIGGER_SOTA, TRIGGER_CONFIG, TRIGGER_QUERY,
               REBOOT_DEVICE, SHUTDOWN_DEVICE, DECOMMISSION_DEVICE)

_PLAIN_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


class _Params:
    """The params of one RPC call: typed access by form field name (with aliases), and
    refusals that name the field."""

    def __init__(self, method: str, params: Any) -> None:
        self.method = method
        if params is None or params == "":
            params = {}
        if not isinstance(params, Mapping):
            raise ManifestError(f"{method}: params must be a JSON object, got {type(params).__name__}")
        self.raw = {str(k): v for k, v in params.items()}
        self.used: set[str] = set()
        self.field_of_tag: dict[str, str] = {}

    def fail(self, name: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.method}: field {name!r} {problem}")

    def _lookup(self, names: tuple[str, ...]) -> tuple[str, Any]:
        """(the name used, its value) for the first of `names` given a non-empty value."""
        for name in names:
            if name in self.raw:
                self.used.add(name)
        given = [(name, self.raw[name]) for name in names if self.raw.get(name) not in (None, "")]
        if len(given) > 1:
            raise self.fail(given[0][0], f"is given twice (also as {given[1][0]!r})")
        return given[0] if given else (names[0], None)

    def text(self, *names: str, required: bool = False, tag: str | None = None) -> str | None:
        name, value = self._lookup(names)
        if value is None:
            if required:
                raise self.fail(names[0], "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
            raise self.fail(name, f"must be a string, got {type(value).__name__}")
        text = str(value)
        bad = _NOT_XML_CHAR.search(text)
        if bad:
            raise self.fail(name, f"contains the character U+{ord(bad.group()):04X}, which XML cannot carry")
        self.field_of_tag[tag or names[0]] = name
        return text

    def choice(
        self, *names: str, options: Mapping[str, str], required: bool = False, tag: str | None = None
    ) -> str | None:
        """A value from a fixed set, matched case-insensitively; `options` maps accepted spellings
        (lower case) to the manifest value."""
        text = self.text(*names, required=required, tag=tag)
        if text is None:
            return None
        value = options.get(text.strip().lower())
        if value is None:
            allowed = ", ".join(dict.fromkeys(options.values()))
            raise self.fail(self.field_of_tag[tag or names[0]], f"must be one of {allowed}, got {text!r}")
        return value

    def decimal(self, *names: str, tag: str | None = None) -> Decimal | None:
        text = self.text(*names, tag=tag)
        if text is None:
            return None
        try:
            value = Decimal(text.strip())
        except InvalidOperation:
            raise self.fail(self.field_of_tag[tag or names[0]], f"must be a decimal number, got {text!r}") from None
        if not value.is_finite():
            raise self.fail(self.field_of_tag[tag or names[0]], f"must be a decimal number, got {text!r}")
        return value

    def date(self, *names: str, required: bool = False, tag: str | None = None) -> dt.date | None:
        name, value = self._lookup(names)
        if isinstance(value, dt.datetime):
            value = value.date()
        if isinstance(value, dt.date):
            self.field_of_tag[tag or names[0]] = name
            return value
        text = self.text(*names, required=required, tag=tag)
        if text is None:
            return None
        try:
            if not _PLAIN_DATE.match(text.strip()):
                raise ValueError(text)
            return dt.date.fromisoformat(text.strip())
        except ValueError:
            raise self.fail(self.field_of_tag[tag or names[0]], f"must be a date as YYYY-MM-DD, got {text!r}") from None

    def finish(self) -> None:
        """Refuse any field the method does not take (blank fields, as forms send them, pass)."""
        for name, value in self.raw.items():
            if name not in self.used and value is not None and value != "":
                raise self.fail(name, "is not a field of this method")


def _options(*values: str, **aliases: str) -> dict[str, str]:
    table = {value.lower(): value for value in values}
    table.update({alias.replace("_", "-"): value for alias, value in aliases.items()})
    return table


_AOTA_APPS = _options("docker", "compose", "application", "btrfs", docker_compose="compose")
_AOTA_VERBS = _options("up", "down", "pull", "list", "remove", "import", "load", "stats", "update")
_SOTA_VERBS = _options("update", "upgrade")
_SOTA_MODES = _options("full", "no-download", "download-only", "cancel")
_YES_NO = {"y": "Y", "yes": "Y", "true": "Y", "n": "N", "no": "N", "false": "N"}
_CONFIG_VERBS = {"get": "get_element", "get_element": "get_element", "set": "set_element",
                 "set_element": "set_element", "load": "load", "append": "append", "remove": "remove"}
_QUERY_OPTIONS = _options("all", "hw", "fw", "os", "status", "version", "security", "guid", "swbom")


def _aota(p: _Params) -> Command:
    return AotaCommand(
        app=p.choice("app", options=_AOTA_APPS, required=True) or "",
        cmd=p.choice("cmd", "command", options=_AOTA_VERBS, required=True) or "",
        container_tag=p.text("containerTag", "container_tag", tag="containerTag"),
        fetch=p.text("fetch"),
        file=p.text("file", "docker_compose_file"),
        signature=p.text("signature"),
        sigversion=_sigversion(p),
        version=p.decimal("version"),
        username=p.text("username", "server_username"),
        password=p.text("password", "server_password"),
        docker_registry=p.text("dockerRegistry", "docker_registry", tag="dockerRegistry"),
        docker_username=p.text("dockerUsername", "docker_username", tag="dockerUsername"),
        docker_password=p.text("dockerPassword", "docker_password", tag="dockerPassword"),
        device_reboot=p.text("deviceReboot", "device_reboot", tag="deviceReboot"),
        config_params=p.text("configParams", "config_params", tag="configParams"),
    )


def _sigversion(p: _Params) -> int | None:
    value = p.decimal("sigversion")
    if value is None:
        return None
    if value not in (256, 384):
        raise p.fail(p.field_of_tag["sigversion"], f"must be 256 or 384, got {value}")
    return int(value)


def _fota(p: _Params) -> Command:
    return FotaCommand(
        fetch=p.text("fetch", required=True),
        biosversion=p.text("biosversion", "bios_version", required=True) or "",
        vendor=p.text("vendor", required=True) or "",
        manufacturer=p.text("manufacturer", required=True) or "",
        product=p.text("product", required=True) or "",
        releasedate=p.date("releasedate", "release_date", required=True) or dt.date.min,
        signature=p.text("signature"),
        sigversion=_sigversion(p),
        path=p.text("path"),
        tooloptions=p.text("tooloptions", "tool_options", "toolOptions"),
        username=p.text("username", "server_username"),
        password=p.text("password", "server_password"),
        productversion=p.text("productversion", "product_version"),
        boot=p.text("boot"),
        guid=p.text("guid"),
        size=p.text("size"),
        device_reboot=p.text("deviceReboot", "device_reboot", tag="deviceReboot"),
    )


def _sota(p: _Params) -> Command:
    packages = p.raw.get("package_list")
    if isinstance(packages, list | tuple):
        if not all(isinstance(item, str) for item in packages):
            raise p.fail("package_list", "must be a string or a list of strings")
        p.raw["package_list"] = ",".join(packages)
    return SotaCommand(
        cmd=p.choice("cmd", "command", options=_SOTA_VERBS, required=True) or "",
        log_to_file=_log_to_file(p),
        mode=p.choice("mode", options=_SOTA_MODES),
        package_list=p.text("package_list", "packages", tag="package_list"),
        fetch=p.text("fetch"),
        release_date=p.date("release_date", "releasedate", tag="release_date"),
        path=p.text("path"),
        signature=p.text("signature"),
        username=p.text("username", "server_username"),
        password=p.text("password", "server_password"),
        device_reboot=p.text("deviceReboot", "device_reboot", tag="deviceReboot"),
    )


def _log_to_file(p: _Params) -> str | None:
    name, value = p._lookup(("log_to_file", "logtofile"))
    if isinstance(value, bool):
        return "Y" if value else "N"
    return p.choice(name, options=_YES_NO, tag="logtofile")


def _config(p: _Params) -> Command:
    verb = p.choice("cmd", "command", options=_CONFIG_VERBS, required=True) or ""
    if verb == "load":
        return ConfigCommand(cmd=verb, fetch=p.text("fetch", required=True), signature=p.text("signature"),
                             path=p.text("path"))
    return ConfigCommand(cmd=verb, path=p.text("path", required=True))


def _query(p: _Params) -> Command:
    return QueryCommand(option=p.choice("option", options=_QUERY_OPTIONS, required=True) or "")


_BUILDERS: dict[str, Callable[[_Params], Command]] = {
    TRIGGER_AOTA: _aota,
    TRIGGER_FOTA: _fota,
    TRIGGER_SOTA: _sota,
    TRIGGER_CONFIG: _config,
    TRIGGER_QUERY: _query,
    REBOOT_DEVICE: lambda p: PowerCommand(action="restart"),
    SHUTDOWN_DEVICE: lambda p: PowerCommand(action="shutdown"),
    DECOMMISSION_DEVICE: lambda p: DecommissionCommand(),
}


def manifest_from_rpc(method: str, params: Any) -> str:
    """The manifest XML for one cloud RPC call, checked with parse_manifest().

    `method` is one of RPC_METHODS. triggerota carries a ready manifest (params {"manifest":
    "<xml>"}, or the XML string itself); the trigger* methods carry the fields of the OTA forms
    (snake_case and camelCase spellings both accepted, blank fields ignored); reboot_device,
    shutdown_device and decommission_device take nothing. Raises ManifestError: status 301 for
    an unknown method, 300 for bad params, with a message naming the field.
    """
    if method == TRIGGER_OTA:
        manifest = params.get("manifest") if isinstance(params, Mapping) else params
        if isinstance(params, Mapping) and set(params) - {"manifest"}:
            extra = sorted(set(params) - {"manifest"})[0]
            raise ManifestError(f"{method}: field {extra!r} is not a field of this method")
        if not isinstance(manifest, str) or not manifest.strip():
            raise ManifestError(f"{method}: field 'manifest' must be a non-empty XML string")
        try:
            parse_manifest(manifest)
        except ManifestError as exc:
            raise ManifestError(f"{method}: field 'manifest': {exc}", exc.status, path=exc.path) from None
        return manifest
    builder = _BUILDERS.get(method)
    if builder is None:
        raise ManifestError(f"unknown RPC method {method!r}; expected one of {', '.join(RPC_METHODS)}",
                            status=COMMAND_FAILURE)
    p = _Params(method, params)
    command = builder(p)
    p.finish()
    xml = command.to_xml()
    try:
        parse_manifest(xml)
    except ManifestError as exc:
        tag = re.sub(r"\[\d+\]", "", exc.path or "").rsplit("/", 1)[-1]
        name = p.field_of_tag.get(tag)
        if name is None:
            raise ManifestError(f"{method}: {exc}") from None
        reason = str(exc).split(": ", 1)[-1]
        raise p.fail(name, f"is not acceptable: {reason}") from None
    return xml
