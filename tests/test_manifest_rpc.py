"""Building manifests from cloud RPC calls (agent/rpc_forms.py): every form method, user values
that try to inject XML, refusals that name the form field, and builder output that upstream's
schema accepts too.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import xmlschema

from agent import manifest as m
from agent import rpc_forms
from tests.manifest_helpers import BILLION_LAUGHS, REBOOT, conformance, corpus_files, upstream_schema, xml_verdicts


@pytest.fixture(scope="module")
def upstream() -> xmlschema.XMLSchema10:
    return upstream_schema()


_TRICKY = "a<b & c>d \"quoted\" 'single' ]]> </password><cmd>remove</cmd>"


def _built(method: str, params) -> m.Manifest:
    xml = rpc_forms.manifest_from_rpc(method, params)
    assert xml.startswith('<?xml version="1.0" encoding="utf-8"?><manifest>')
    return m.parse_manifest(xml)


def test_triggeraota_docker_compose_up():
    parsed = _built("triggeraota", {
        "app": "docker-compose", "cmd": "up", "containerTag": "CPU", "fetch": "https://repo.example/CPU.tar.gz",
        "file": "custom.yml", "signature": "", "version": "", "username": "user&co", "password": _TRICKY[:50],
        "dockerRegistry": "registry.example:5000", "dockerUsername": "d<u>", "dockerPassword": "d&p\"'"})
    assert parsed.header == m.OtaHeader(ota_type="aota", repo="remote")
    assert parsed.command == m.AotaCommand(
        app="compose", cmd="up", container_tag="CPU", fetch="https://repo.example/CPU.tar.gz", file="custom.yml",
        username="user&co", password=_TRICKY[:50], docker_registry="registry.example:5000",
        docker_username="d<u>", docker_password="d&p\"'")


@pytest.mark.parametrize(("app", "cmd"), [
    ("docker-compose", "down"), ("Docker-Compose", "PULL"), ("compose", "list"), ("compose", "remove"),
    ("docker", "import"), ("docker", "load"), ("docker", "pull"), ("docker", "remove"), ("docker", "stats"),
    ("application", "update"),
])
def test_triggeraota_every_seed_operation(app, cmd):
    parsed = _built("triggeraota", {"app": app, "cmd": cmd, "container_tag": "hello-world", "version": 1.0,
                                    "device_reboot": "no"})
    assert isinstance(parsed.command, m.AotaCommand)
    assert (parsed.command.app, parsed.command.cmd) == (app.lower().replace("docker-compose", "compose"), cmd.lower())
    assert parsed.command.version == Decimal("1.0") and parsed.command.device_reboot == "no"


def test_triggerfota_with_seed_fields():
    parsed = _built("triggerfota", {
        "fetch": "http://repo.example/BIOSUPDATE.tar", "biosversion": "A..ZZZZ.B11.1", "vendor": "Intel Corp.",
        "manufacturer": "testmanufacturer", "product": "testproduct <&>", "releasedate": "2017-06-23",
        "path": "/boot/efi/", "tooloptions": "/p /b", "signature": "6f3e&<>", "username": "", "password": "pw\"'<"})
    assert parsed.command == m.FotaCommand(
        fetch="http://repo.example/BIOSUPDATE.tar", biosversion="A..ZZZZ.B11.1", vendor="Intel Corp.",
        manufacturer="testmanufacturer", product="testproduct <&>", releasedate=dt.date(2017, 6, 23),
        path="/boot/efi/", tooloptions="/p /b", signature="6f3e&<>", password="pw\"'<")
    assert _built("triggerfota", {"fetch": "http://h/b.bin", "biosversion": "1", "vendor": "v", "manufacturer": "m",
                                  "product": "p", "release_date": dt.date(2021, 2, 8)}).command.releasedate \
        == dt.date(2021, 2, 8)


@pytest.mark.parametrize(("params", "expected"), [
    ({"cmd": "update", "log_to_file": "Yes", "mode": "full"}, {"log_to_file": "Y", "mode": "full"}),
    ({"cmd": "update", "log_to_file": "No", "mode": "download-only"}, {"log_to_file": "N", "mode": "download-only"}),
    ({"cmd": "upgrade", "log_to_file": True, "mode": "No-Download", "package_list": ["vim", "curl:amd64"]},
     {"log_to_file": "Y", "mode": "no-download", "package_list": "vim,curl:amd64", "cmd": "upgrade"}),
    ({"cmd": "update", "log_to_file": "N", "fetch": "https://repo.example/core-image.mender",
      "release_date": "2021-10-10", "username": "u<", "password": _TRICKY, "signature": ""},
     {"fetch": "https://repo.example/core-image.mender", "release_date": dt.date(2021, 10, 10), "username": "u<",
      "password": _TRICKY}),
])
def test_triggersota(params, expected):
    command = _built("triggersota", params).command
    assert isinstance(command, m.SotaCommand)
    for name, value in {"cmd": "update", **expected}.items():
        assert getattr(command, name) == value, name


@pytest.mark.parametrize(("params", "expected"), [
    ({"cmd": "set", "path": "minStorageMB:10;minMemoryMB:250", "fetch": "", "signature": ""},
     m.ConfigCommand(cmd="set_element", path="minStorageMB:10;minMemoryMB:250")),
    ({"cmd": "get", "path": "minStorageMB;minMemoryMB"},
     m.ConfigCommand(cmd="get_element", path="minStorageMB;minMemoryMB")),
    ({"cmd": "load", "fetch": "http://repo.example/intel_manageability.conf", "signature": "ab&<"},
     m.ConfigCommand(cmd="load", fetch="http://repo.example/intel_manageability.conf", signature="ab&<")),
    ({"cmd": "append", "path": "trustedRepositories:https://repo.example/a?b=1&c=\"2\""},
     m.ConfigCommand(cmd="append", path="trustedRepositories:https://repo.example/a?b=1&c=\"2\"")),
    ({"cmd": "remove", "path": "trustedRepositories:https://repo.example/<x>"},
     m.ConfigCommand(cmd="remove", path="trustedRepositories:https://repo.example/<x>")),
])
def test_triggerconfig(params, expected):
    assert _built("triggerconfig", params).command == expected


@pytest.mark.parametrize("option", ["all", "hw", "fw", "os", "status", "version", "security", "guid", "swbom", "HW"])
def test_triggerquery(option):
    assert _built("triggerquery", {"option": option}).command == m.QueryCommand(option=option.lower())


@pytest.mark.parametrize(("method", "expected"), [
    ("reboot_device", m.PowerCommand(action="restart")),
    ("shutdown_device", m.PowerCommand(action="shutdown")),
    ("decommission_device", m.DecommissionCommand()),
])
@pytest.mark.parametrize("params", [None, {}, "", {"unused": ""}])
def test_power_and_decommission(method, expected, params):
    assert _built(method, params).command == expected


def test_triggerota_passes_a_raw_manifest_through():
    assert rpc_forms.manifest_from_rpc("triggerota", {"manifest": REBOOT}) == REBOOT
    assert rpc_forms.manifest_from_rpc("triggerota", REBOOT) == REBOOT
    with pytest.raises(m.ManifestError, match=r"triggerota: field 'manifest'.*DTD") as info:
        rpc_forms.manifest_from_rpc("triggerota", {"manifest": BILLION_LAUGHS})
    assert info.value.status == 300


def test_triggerota_with_every_valid_corpus_manifest():
    conformance()
    for path in corpus_files("valid"):
        text = path.read_text()
        assert rpc_forms.manifest_from_rpc("triggerota", {"manifest": text}) == text


def test_user_values_cannot_inject_elements():
    parsed = _built("triggeraota", {"app": "docker", "cmd": "pull", "containerTag": "</containerTag><cmd>remove</cmd>"})
    assert isinstance(parsed.command, m.AotaCommand)
    assert parsed.command.cmd == "pull" and parsed.command.container_tag == "</containerTag><cmd>remove</cmd>"
    parsed = _built("triggerconfig", {"cmd": "get", "path": "]]><![CDATA[x"})
    assert parsed.command == m.ConfigCommand(cmd="get_element", path="]]><![CDATA[x")


@pytest.mark.parametrize(("method", "params", "field", "message"), [
    ("triggeraota", {"cmd": "up"}, "app", "is required"),
    ("triggeraota", {"app": "docker"}, "cmd", "is required"),
    ("triggeraota", {"app": "podman", "cmd": "up"}, "app", "must be one of"),
    ("triggeraota", {"app": "docker", "cmd": "start"}, "cmd", "must be one of"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "containerTag": "t" * 201}, "containerTag", "200"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "container_tag": "t" * 201}, "container_tag", "200"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "username": "u" * 51}, "username", "50"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "version": "one"}, "version", "decimal"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "version": "-1"}, "version", "greater or equal"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "fetch": "http://h/" + "f" * 700}, "fetch", "700"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "containerTag": ["a"]}, "containerTag", "must be a string"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "containerTag": True}, "containerTag", "must be a string"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "sigversion": 512}, "sigversion", "256 or 384"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "colour": "blue"}, "colour", "not a field"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "file": "a\x00b"}, "file", "U+0000"),
    ("triggeraota", {"app": "docker", "cmd": "pull", "containerTag": "a", "container_tag": "b"}, "containerTag",
     "given twice"),
    ("triggerfota", {"biosversion": "1", "vendor": "v", "manufacturer": "m", "product": "p",
                     "releasedate": "2017-06-23"}, "fetch", "is required"),
    ("triggerfota", {"fetch": "http://h/b", "biosversion": "1", "vendor": "v", "manufacturer": "m", "product": "p"},
     "releasedate", "is required"),
    ("triggerfota", {"fetch": "http://h/b", "biosversion": "1", "vendor": "v", "manufacturer": "m", "product": "p",
                     "releasedate": "06/23/2017"}, "releasedate", "YYYY-MM-DD"),
    ("triggerfota", {"fetch": "http://h/b", "biosversion": "1", "vendor": "v", "manufacturer": "m", "product": "p",
                     "release_date": "2017-02-30"}, "release_date", "YYYY-MM-DD"),
    ("triggerfota", {"fetch": "http://h/b", "biosversion": "1", "vendor": "v" * 51, "manufacturer": "m",
                     "product": "p", "releasedate": "2017-06-23"}, "vendor", "50"),
    ("triggerfota", {"fetch": "http://h/b", "biosversion": "1", "vendor": "v", "manufacturer": "m", "product": "p",
                     "releasedate": "2017-06-23", "guid": "not-a-guid"}, "guid", "pattern"),
    ("triggersota", {"log_to_file": "Y"}, "cmd", "is required"),
    ("triggersota", {"cmd": "install"}, "cmd", "must be one of"),
    ("triggersota", {"cmd": "update", "log_to_file": "maybe"}, "log_to_file", "must be one of"),
    ("triggersota", {"cmd": "update", "mode": "partial"}, "mode", "must be one of"),
    ("triggersota", {"cmd": "update", "version": "1.0"}, "version", "not a field"),
    ("triggersota", {"cmd": "update", "package_list": "bad package"}, "package_list", "pattern"),
    ("triggersota", {"cmd": "update", "package_list": ["ok", 3]}, "package_list", "list of strings"),
    ("triggersota", {"cmd": "update", "password": "p" * 5001}, "password", "5000"),
    ("triggerconfig", {"path": "x"}, "cmd", "is required"),
    ("triggerconfig", {"cmd": "delete", "path": "x"}, "cmd", "must be one of"),
    ("triggerconfig", {"cmd": "set"}, "path", "is required"),
    ("triggerconfig", {"cmd": "load", "path": "/x"}, "fetch", "is required"),
    ("triggerconfig", {"cmd": "get", "path": "minStorageMB", "fetch": "http://h/c"}, "fetch", "not a field"),
    ("triggerconfig", {"cmd": "set", "path": "p" * 1501}, "path", "1500"),
    ("triggerquery", {}, "option", "is required"),
    ("triggerquery", {"option": "network"}, "option", "must be one of"),
    ("reboot_device", {"force": True}, "force", "not a field"),
    ("triggerota", {}, "manifest", "non-empty XML string"),
    ("triggerota", {"manifest": 5}, "manifest", "non-empty XML string"),
    ("triggerota", {"manifest": REBOOT, "extra": 1}, "extra", "not a field"),
    ("triggerota", {"manifest": "<manifest><type>cmd</type></manifest>"}, "manifest", "needs a <cmd> block"),
])
def test_bad_params_are_refused_naming_the_field(method, params, field, message):
    with pytest.raises(m.ManifestError) as info:
        rpc_forms.manifest_from_rpc(method, params)
    assert info.value.status == 300
    assert f"{method}: field {field!r}" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("params", [[1, 2], 5, "text"])
def test_params_must_be_an_object(params):
    with pytest.raises(m.ManifestError, match="params must be a JSON object") as info:
        rpc_forms.manifest_from_rpc("triggeraota", params)
    assert info.value.status == 300


def test_unknown_method_is_refused_with_301():
    with pytest.raises(m.ManifestError, match="unknown RPC method 'file_upload'") as info:
        rpc_forms.manifest_from_rpc("file_upload", {})
    assert info.value.status == 301
    assert set(rpc_forms.RPC_METHODS) == {"triggerota", "triggeraota", "triggerfota", "triggersota", "triggerconfig",
                                          "triggerquery", "reboot_device", "shutdown_device", "decommission_device"}


def test_every_builder_output_validates_against_upstream_too(upstream):
    calls = [
        ("triggeraota", {"app": "docker", "cmd": "pull", "containerTag": _TRICKY[:50], "version": "2"}),
        ("triggerfota", {"fetch": "http://h/b", "biosversion": "1", "vendor": "v&", "manufacturer": "m<",
                         "product": "p>", "releasedate": "2017-06-23", "sigversion": "384"}),
        ("triggersota", {"cmd": "update", "log_to_file": "y", "mode": "full", "password": _TRICKY}),
        ("triggerconfig", {"cmd": "load", "fetch": "http://h/c", "signature": "s"}),
        ("triggerquery", {"option": "swbom"}),
        ("reboot_device", {}), ("shutdown_device", {}), ("decommission_device", {}),
    ]
    for method, params in calls:
        assert xml_verdicts(upstream, rpc_forms.manifest_from_rpc(method, params)) == (True, True), method
