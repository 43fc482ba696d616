"""Manifest parsing: the INBM conformance corpus, one coherent command per manifest, hostile and
malformed XML (entity bombs, XXE, DTDs, oversize, non-UTF-8), and the result format.

Parity with upstream's schema is in test_manifest_parity.py, the RPC builders in
test_manifest_rpc.py. The conformance corpus lives beside the repository (see
tests/manifest_helpers.py); without it those tests skip.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import defusedxml.ElementTree as DefusedET
import pytest

from agent import manifest as m
from agent.wire import WireError
from tests.manifest_helpers import (
    ABSENT,
    BILLION_LAUGHS,
    CONFORMANCE,
    MANIFESTS,
    REBOOT,
    conformance,
    corpus_files,
    refused,
)


def _params(*groups: str) -> list:
    """The corpus files of `groups` as pytest params, or one param skipped with the reason."""
    paths = [path for group in groups for path in corpus_files(group)]
    if not paths:
        return [pytest.param(None, marks=pytest.mark.skip(reason=ABSENT))]
    return [pytest.param(path, id=path.name) for path in paths]


# ---------------------------------------------------------------------------------------------
# The conformance corpus


@pytest.mark.parametrize("path", _params("valid"))
def test_valid_corpus_manifests_are_accepted(path):
    conformance()
    parsed = m.parse_manifest(path.read_bytes())
    assert parsed.kind == DefusedET.fromstring(path.read_bytes()).findtext("type")


@pytest.mark.parametrize("path", _params("invalid"))
def test_invalid_corpus_manifests_are_refused_with_300(path):
    conformance()
    error = refused(path.read_bytes())
    assert m.Result.refused(error, "job-1").status == 300
    assert m.Result.refused(error).message.startswith("FAILED TO PARSE/VALIDATE MANIFEST: ")


def _cases() -> list[dict]:
    cases_file = CONFORMANCE / "cases.json"
    return json.loads(cases_file.read_text())["cases"] if cases_file.is_file() else []


def _case_params() -> list:
    if not _cases():
        return [pytest.param(None, marks=pytest.mark.skip(reason=ABSENT))]
    return [pytest.param(case, id=case["manifest"]) for case in _cases()]


@pytest.mark.parametrize("case", _case_params())
def test_integration_manifests_behave_as_upstream_tests_expect(case):
    conformance()
    xml = (MANIFESTS / case["manifest"]).read_bytes()
    if case["expect_status"] == 300:
        refused(xml)
    else:  # 200s and the FOTA 400 (a platform mismatch found at install time) all parse
        m.parse_manifest(xml)


def test_every_integration_manifest_has_a_case():
    conformance()
    assert {f"integration/{p.name}" for p in corpus_files("integration")} == {c["manifest"] for c in _cases()}


def test_corpus_models():
    conformance()
    fota = m.parse_manifest((MANIFESTS / "valid" / "01_Sample_FOTA_Manifest_Edge_device.xml").read_bytes())
    assert isinstance(fota.command, m.FotaCommand)
    assert fota.command.releasedate == dt.date(2017, 11, 20)
    assert fota.command.vendor == "American Megatrends Inc."
    assert fota.header == m.OtaHeader(ota_type="fota", repo="remote")

    pota = m.parse_manifest((MANIFESTS / "valid" / "04_POTA_Example_Manifest.xml").read_bytes()).command
    assert isinstance(pota, m.PotaCommand)
    assert pota.sota.logs_to_file and pota.sota.release_date == dt.date(2021, 10, 10)
    assert pota.fota.product == "Alder Lake Client Platform"

    aota = m.parse_manifest((MANIFESTS / "valid" / "12_Example_of_docker_compose_f_custom_yml_up_manifest.xml")
                            .read_bytes()).command
    assert aota == m.AotaCommand(cmd="up", app="compose", fetch="yoururl/simplecompose.tar.gz", file="custom.yml",
                                 container_tag="simplecompose", username="username", password="XXXXX",
                                 name="samplerpm")
    assert "XXXXX" not in repr(aota)

    source = m.parse_manifest((MANIFESTS / "valid" / "30_Source_Application_Add_Manifest_Example_using_remote_GPG_key"
                                            ".xml").read_bytes()).command
    assert source == m.SourceCommand(
        target="application", action="add", filename="google-chrome.list",
        gpg_uri="https://dl-ssl.google.com/linux/linux_signing_key.pub", gpg_keyname="google-chrome.gpg",
        sources=("deb [arch=amd64] http://dl.google.com/linux/chrome/deb/ stable main",
                 "deb [arch=amd64] http://dl.google.com/linux/chrome/deb/ stable second"))

    reboot = m.parse_manifest((MANIFESTS / "integration" / "REBOOT_GOOD.xml").read_bytes())
    assert reboot.command == m.PowerCommand(action="restart") and reboot.kind == "cmd"
    assert isinstance(m.parse_manifest((MANIFESTS / "integration" / "DECOMMISSION.xml").read_bytes()).command,
                      m.DecommissionCommand)


@pytest.mark.parametrize("path", _params("valid", "integration"))
def test_models_round_trip_through_to_xml(path):
    conformance()
    try:
        parsed = m.parse_manifest(path.read_bytes())
    except m.ManifestError:
        return  # the one integration manifest meant to fail
    assert m.parse_manifest(parsed.to_xml()) == parsed
    assert m.parse_manifest(parsed.command.to_xml()).command == parsed.command


# ---------------------------------------------------------------------------------------------
# Checks beyond the schema: one coherent command per manifest

_AOTA = "<aota><cmd>pull</cmd><app>docker</app><containerTag>hello-world</containerTag></aota>"


@pytest.mark.parametrize(("xml", "message"), [
    ("<manifest><type>ota</type></manifest>", "needs a <ota> block"),
    ("<manifest><type>config</type></manifest>", "needs a <config> block"),
    ("<manifest><type>cmd</type></manifest>", "needs a <cmd> block"),
    ("<manifest><type>cmd</type><cmd>query</cmd></manifest>", "needs a <query> block"),
    ("<manifest><type>source</type></manifest>", "exactly one of"),
    ("<manifest><type>source</type><osSource><list/></osSource><applicationSource><list/></applicationSource>"
     "</manifest>", "exactly one of"),
    ("<manifest><type>cmd</type><cmd>restart</cmd><osSource><list/></osSource></manifest>",
     "<osSource> does not belong"),
    ("<manifest><type>cmd</type><cmd>shutdown</cmd><restart/></manifest>", "<restart> does not belong"),
    ("<manifest><type>cmd</type><cmd>shutdown</cmd><query><option>hw</option></query></manifest>",
     "<query> does not belong"),
    ("<manifest><type>ota</type><cmd>restart</cmd><ota><header><type>aota</type><repo>remote</repo></header>"
     f"<type>{_AOTA}</type></ota></manifest>", "<cmd> does not belong"),
    ("<manifest><type>ota</type><ota><header><type>fota</type><repo>remote</repo></header>"
     f"<type>{_AOTA}</type></ota></manifest>", "header says 'fota' but the update is <aota>"),
    ("<manifest><type>config</type><config><cmd>set_element</cmd><configtype><get><path>a</path></get>"
     "</configtype></config></manifest>", "goes with <set>"),
    ("<manifest><type>ota</type><ota><header><type>fota</type><repo>remote</repo></header><type><fota name='x'>"
     "<biosversion>1</biosversion><vendor>v</vendor><manufacturer>m</manufacturer><product>p</product>"
     "<releasedate>12017-01-01</releasedate></fota></type></ota></manifest>", "outside the years"),
])
def test_incoherent_manifests_are_refused(xml, message):
    refused(xml, message)


def test_restart_may_carry_text_but_no_elements():
    assert m.parse_manifest("<manifest><type>cmd</type><cmd>restart</cmd><restart>now</restart></manifest>").command \
        == m.PowerCommand(action="restart")
    refused("<manifest><type>cmd</type><cmd>restart</cmd><restart><x/></restart></manifest>", "restart")


def test_schema_refusals_name_the_element():
    error = refused("<manifest><type>ota</type><ota><header><type>aota</type><repo>remote</repo></header><type>"
                    "<aota><cmd>pull</cmd><app>docker</app><password>" + "s" * 51 + "</password></aota></type></ota>"
                    "</manifest>", "/manifest/ota/type/aota/password")
    assert error.path == "/manifest/ota/type/aota/password"
    assert "s" * 51 not in str(error)  # the refusal does not echo the secret
    refused("<manifest><type>cmd</type><cmd>reboot</cmd></manifest>", "/manifest/cmd")


def test_whitespace_collapsing_types_are_read_collapsed():
    parsed = m.parse_manifest(
        "<manifest><type>ota</type><ota><header><type>aota</type><repo>remote</repo></header><type><aota>"
        "<cmd>pull</cmd><app>docker</app><fetch> http://h/x </fetch><version> 1.50 </version>"
        "<sigversion>256.0</sigversion></aota></type></ota></manifest>")
    assert isinstance(parsed.command, m.AotaCommand)
    assert parsed.command.fetch == "http://h/x"
    assert parsed.command.version == Decimal("1.50")
    assert parsed.command.sigversion == 256


# ---------------------------------------------------------------------------------------------
# Hostile and malformed input


def test_billion_laughs_is_refused():
    refused(BILLION_LAUGHS, "entit")
    refused(BILLION_LAUGHS.encode(), "billion laughs")


def test_xxe_via_doctype_system_is_refused():
    error = refused('<?xml version="1.0"?><!DOCTYPE manifest SYSTEM "file:///etc/passwd">'
                    "<manifest><type>cmd</type><cmd>restart</cmd></manifest>", "external reference")
    assert "file:///etc/passwd" in str(error)


def test_xxe_via_external_entity_is_refused():
    refused('<?xml version="1.0"?><!DOCTYPE manifest [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            "<manifest><type>config</type><config><cmd>get_element</cmd><configtype><get><path>&x;</path></get>"
            "</configtype></config></manifest>", "external entity")


def test_any_dtd_is_refused():
    refused("<!DOCTYPE manifest [<!ELEMENT manifest ANY>]><manifest><type>cmd</type><cmd>restart</cmd></manifest>",
            "DTD")
    refused("<!DOCTYPE manifest><manifest><type>cmd</type><cmd>restart</cmd></manifest>", "DTD")


def test_undeclared_entity_is_refused():
    refused("<manifest><type>cmd</type><cmd>&restart;</cmd></manifest>", "undefined entity")


def test_oversize_input_is_refused_and_the_limit_is_exact():
    padded = REBOOT + " " * (m.MAX_MANIFEST_BYTES - len(REBOOT))
    assert len(padded.encode()) == m.MAX_MANIFEST_BYTES
    assert m.parse_manifest(padded).command == m.PowerCommand(action="restart")
    refused(padded + " ", "exceeds the 65536-byte limit")
    refused((padded + " ").encode(), "exceeds")
    refused(REBOOT + "<!--" + "x" * 10**7 + "-->", "exceeds")
    # multi-byte characters count as bytes, not characters
    refused(REBOOT + "<!--" + "é" * (m.MAX_MANIFEST_BYTES // 2) + "-->", "bytes exceeds")


def test_non_utf8_input_is_refused():
    latin1 = "<manifest><type>config</type><config><cmd>get_element</cmd><configtype><get><path>caf\u00e9</path>" \
             "</get></configtype></config></manifest>"
    refused(latin1.encode("latin-1"), "not UTF-8: byte 0xe9")
    refused(REBOOT.replace("UTF-8", "UTF-16").encode("utf-16"), "not UTF-8")
    refused(REBOOT.replace("UTF-8", "ISO-8859-1"), "declares encoding 'iso-8859-1'")
    refused(REBOOT.replace("UTF-8", "ISO-8859-1").encode(), "manifests must be UTF-8")
    refused("<manifest><type>cmd</type><cmd>restart\ud800</cmd></manifest>", "not valid UTF-8")
    # UTF-8 with or without a BOM, and ASCII declared as such, are fine
    assert m.parse_manifest(latin1.encode()).command == m.ConfigCommand(cmd="get_element", path="caf\u00e9")
    assert m.parse_manifest(b"\xef\xbb\xbf" + REBOOT.encode()).kind == "cmd"
    assert m.parse_manifest(REBOOT.replace("UTF-8", "us-ascii")).kind == "cmd"


@pytest.mark.parametrize(("xml", "message"), [
    (b"", "empty"),
    ("   ", "empty"),
    ("not xml at all", "not well-formed"),
    ("<manifest><type>cmd</type><cmd>restart</cmd>", "not well-formed"),
    ("<manifest><type>cmd</type><cmd>restart</cmd></manifest><manifest/>", "not well-formed"),
    ("<manifest><type>cmd</type><cmd>restart</cmd></manifest>\x00", "not well-formed"),
    ('<manifest xmlns="urn:x"><type>cmd</type><cmd>restart</cmd></manifest>', "not an element of the schema"),
    ("<manifest><type>cmd</type><cmd>restart</cmd><restart>" + "<a>" * 40 + "</a>" * 40 + "</restart></manifest>",
     "deeper than 16 levels"),
])
def test_malformed_input_is_refused(xml, message):
    refused(xml, message)


def test_non_text_input_is_refused():
    refused(123, "must be str or bytes")  # type: ignore[arg-type]


def test_schema_is_loaded_once():
    assert m.schema() is m.schema()
    assert m.SCHEMA_PATH.name == "manifest_schema.xsd" and m.SCHEMA_PATH.parent.name == "agent"


# ---------------------------------------------------------------------------------------------
# Results


def test_status_codes_and_messages_follow_the_user_guide():
    assert m.MESSAGES == {
        200: "COMMAND SUCCESS",
        300: "FAILED TO PARSE/VALIDATE MANIFEST",
        301: "COMMAND FAILURE",
        302: "OTA IN PROGRESS, TRY LATER",
        303: "OTA IN PROGRESS, TRY LATER",
        400: "FAILED TO INSTALL",
        401: "FAILED IMAGE IMPORT, IMAGE ALREADY PRESENT",
        404: "FILE NOT FOUND",
    }
    assert {302, 303} == m.BUSY_STATUSES


def test_result_round_trip():
    result = m.Result.failure(m.ResultCode.INSTALL_FAILURE, "signature check failed", job_id="job-42")
    assert result.message == "FAILED TO INSTALL: signature check failed"
    assert json.loads(result.to_json()) == {"status": 400, "message": result.message, "job_id": "job-42"}
    assert m.Result.parse(result.to_json()) == result
    assert m.Result.parse(result.to_json().encode()) == result
    assert m.Result.success("j").to_json() == '{"status":200,"message":"COMMAND SUCCESS","job_id":"j"}'
    assert m.Result.success().ok and m.Result(303, "OTA IN PROGRESS, TRY LATER").busy
    assert m.Result.parse('{"status": 200, "message": "COMMAND SUCCESS"}') == m.Result(200, "COMMAND SUCCESS", "")
    error = m.ManifestError("no <type>")
    assert m.Result.refused(error, "j1") == m.Result(300, "FAILED TO PARSE/VALIDATE MANIFEST: no <type>", "j1")
    assert isinstance(error, WireError)


@pytest.mark.parametrize(("payload", "message"), [
    ("[]", "JSON object"),
    ("{}", "'status'"),
    ('{"status": "200"}', "'status'"),
    ('{"status": true}', "'status'"),
    ('{"status": 99}', "'status'"),
    ('{"status": 200, "message": 5}', "'message'"),
    ('{"status": 200, "job_id": 5}', "'job_id'"),
    ('{"status": 200, "job_id": "' + "j" * 200 + '"}', "'job_id'"),
    (b"\xff", "not UTF-8"),
])
def test_bad_results_are_refused(payload, message):
    with pytest.raises(WireError, match=message):
        m.Result.parse(payload)
