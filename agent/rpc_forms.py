"""Manifests from cloud RPC calls: the ThingsBoard method names and OTA form fields of the INBM
user guide, turned into manifest XML.

manifest_from_rpc() builds the typed model (agent/manifest_model.py) from the form fields and
writes it with xml.etree, never by pasting user values into strings, then checks its own output
with parse_manifest(); a refusal names the form field at fault, not the XML element. Split out of
agent/manifest.py, which stays the parser and the result vocabulary.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from agent.manifest import ManifestError, parse_manifest
from agent.manifest_model import (
    AotaCommand,
    Command,
    ConfigCommand,
    DecommissionCommand,
    FotaCommand,
    PowerCommand,
    QueryCommand,
    SotaCommand,
)
from agent.wire import (
    DECOMMISSION_DEVICE,
    REBOOT_DEVICE,
    RPC_METHODS,
    SHUTDOWN_DEVICE,
    TRIGGER_AOTA,
    TRIGGER_CONFIG,
    TRIGGER_FOTA,
    TRIGGER_OTA,
    TRIGGER_QUERY,
    TRIGGER_SOTA,
    ResultCode,
)

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
                            status=ResultCode.COMMAND_FAILURE)
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
