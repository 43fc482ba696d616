"""Device manifests: the XML commands a device executes, and the results it answers with.

This is the manifest half of the wire contract (agent/wire.py is the MQTT half). A manifest is
an XML document in the language of Intel In-Band Manageability (INBM) devices: OTA updates
(aota, fota, sota, pota), configuration (get/set/load/append/remove), device commands (restart,
shutdown, decommission, query) and package sources. The grammar is agent/manifest_schema.xsd;
this module adds what a schema cannot say:

- parse_manifest() refuses oversize, non-UTF-8 and hostile XML (DTDs, entities, external
  references) before anything else reads it, validates against the schema, checks that the
  manifest carries exactly the block its <type> calls for, and returns a typed model;
- Result is the JSON answer {"status": N, "message": "...", "job_id": "..."}, with the status
  codes of the INBM user guide.

The typed model (the command dataclasses) lives in agent/manifest_model.py and is re-exported
here, so `from agent.manifest import AotaCommand` keeps working. agent/rpc_forms.py turns the
cloud's RPC calls into manifests (manifest_from_rpc()).

Only the standard library, defusedxml and xmlschema are used: both are pure Python and packaged
by Debian, so the agent still runs on a board's own python3.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

import defusedxml.ElementTree as DefusedET
import xmlschema
from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden

from agent.manifest_model import (
    CONFIG_ELEMENT,
    AotaCommand,
    Command,
    ConfigCommand,
    DecommissionCommand,
    FotaCommand,
    Manifest,
    ManifestError,
    OtaBundle,
    OtaCommand,
    OtaHeader,
    PotaCommand,
    PowerCommand,
    QueryCommand,
    SotaCommand,
    SourceCommand,
)
from agent.wire import ResultCode, WireError, decode

__all__ = [
    "BUSY_STATUSES",
    "MAX_DEPTH",
    "MAX_MANIFEST_BYTES",
    "MESSAGES",
    "SCHEMA_PATH",
    "AotaCommand",
    "Command",
    "ConfigCommand",
    "DecommissionCommand",
    "FotaCommand",
    "Manifest",
    "ManifestError",
    "OtaBundle",
    "OtaCommand",
    "OtaHeader",
    "PotaCommand",
    "PowerCommand",
    "QueryCommand",
    "Result",
    "ResultCode",
    "SotaCommand",
    "SourceCommand",
    "parse_manifest",
    "schema",
]

# ---------------------------------------------------------------------------------------------
# Status codes and results


#: The upstream message for each status.
MESSAGES: dict[int, str] = {
    ResultCode.COMMAND_SUCCESS: "COMMAND SUCCESS",
    ResultCode.XML_FAILURE: "FAILED TO PARSE/VALIDATE MANIFEST",
    ResultCode.COMMAND_FAILURE: "COMMAND FAILURE",
    ResultCode.OTA_IN_PROGRESS: "OTA IN PROGRESS, TRY LATER",
    ResultCode.OTA_FAILURE: "OTA IN PROGRESS, TRY LATER",
    ResultCode.INSTALL_FAILURE: "FAILED TO INSTALL",
    ResultCode.IMAGE_IMPORT_FAILURE: "FAILED IMAGE IMPORT, IMAGE ALREADY PRESENT",
    ResultCode.FILE_NOT_FOUND: "FILE NOT FOUND",
}

#: Statuses meaning "busy: another OTA is in progress, try later".
BUSY_STATUSES = frozenset({ResultCode.OTA_IN_PROGRESS, ResultCode.OTA_FAILURE})

_JOB_ID_MAX = 128
_RESULT_MESSAGE_MAX = 4096


@dataclass(frozen=True)
class Result:
    """What a device answers to a manifest: {"status": N, "message": "...", "job_id": "..."}."""

    status: int
    message: str
    job_id: str = ""

    @classmethod
    def success(cls, job_id: str = "", detail: str = "") -> Result:
        return cls.failure(ResultCode.COMMAND_SUCCESS, detail, job_id=job_id)

    @classmethod
    def refused(cls, error: ManifestError, job_id: str = "") -> Result:
        """The answer to a manifest or RPC call that cannot be executed."""
        return cls.failure(error.status, str(error), job_id=job_id)

    @classmethod
    def failure(cls, status: int, detail: str = "", *, job_id: str = "") -> Result:
        """The upstream message for `status`, followed by `detail` when there is one."""
        base = MESSAGES.get(status, "")
        message = f"{base}: {detail}" if base and detail else (base or detail)
        return cls(status=status, message=message, job_id=job_id)

    @property
    def ok(self) -> bool:
        return self.status == ResultCode.COMMAND_SUCCESS

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
    if operation.tag != CONFIG_ELEMENT[verb]:
        raise ManifestError(f"config command {verb!r} goes with <{CONFIG_ELEMENT[verb]}>, not <{operation.tag}>",
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
