"""Manifests: the INBM conformance corpus, parity with upstream's schema, hostile XML, RPC builders.

The conformance data (upstream INBM manifests and schema) lives beside the repository in
../shared/conformance/inbm and is read in place, never copied; without it those tests skip.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from pathlib import Path

import defusedxml.ElementTree as DefusedET
import pytest
import xmlschema

from agent import manifest as m
from agent.wire import WireError

CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "inbm"
MANIFESTS = CONFORMANCE / "manifests"
UPSTREAM_XSD = CONFORMANCE / "schema" / "manifest_schema.xsd"


def _conformance() -> Path:
    if not (MANIFESTS.is_dir() and UPSTREAM_XSD.is_file()):
        pytest.skip(_ABSENT)
    return CONFORMANCE


def _files(group: str) -> list[Path]:
    return sorted((MANIFESTS / group).glob("*.xml")) if (MANIFESTS / group).is_dir() else []


_ABSENT = f"INBM conformance data not found at {CONFORMANCE} (it sits beside the repo, in ../shared; " \
          "a plain clone does not have it)"


def _params(*groups: str) -> list:
    """The corpus files of `groups` as pytest params, or one param skipped with the reason."""
    paths = [path for group in groups for path in _files(group)]
    if not paths:
        return [pytest.param(None, marks=pytest.mark.skip(reason=_ABSENT))]
    return [pytest.param(path, id=path.name) for path in paths]


def _refused(xml: str | bytes, match: str | None = None) -> m.ManifestError:
    with pytest.raises(m.ManifestError) as info:
        m.parse_manifest(xml)
    assert info.value.status == m.XML_FAILURE
    if match is not None:
        assert match.lower() in str(info.value).lower(), str(info.value)
    return info.value


# ---------------------------------------------------------------------------------------------
# The conformance corpus


@pytest.mark.parametrize("path", _params("valid"))
def test_valid_corpus_manifests_are_accepted(path):
    _conformance()
    parsed = m.parse_manifest(path.read_bytes())
    assert parsed.kind == DefusedET.fromstring(path.read_bytes()).findtext("type")


@pytest.mark.parametrize("path", _params("invalid"))
def test_invalid_corpus_manifests_are_refused_with_300(path):
    _conformance()
    error = _refused(path.read_bytes())
    assert error.result("job-1").status == 300
    assert error.result().message.startswith("FAILED TO PARSE/VALIDATE MANIFEST: ")


def _cases() -> list[dict]:
    cases_file = CONFORMANCE / "cases.json"
    return json.loads(cases_file.read_text())["cases"] if cases_file.is_file() else []


def _case_params() -> list:
    if not _cases():
        return [pytest.param(None, marks=pytest.mark.skip(reason=_ABSENT))]
    return [pytest.param(case, id=case["manifest"]) for case in _cases()]


@pytest.mark.parametrize("case", _case_params())
def test_integration_manifests_behave_as_upstream_tests_expect(case):
    _conformance()
    xml = (MANIFESTS / case["manifest"]).read_bytes()
    if case["expect_status"] == 300:
        _refused(xml)
    else:  # 200s and the FOTA 400 (a platform mismatch found at install time) all parse
        m.parse_manifest(xml)


def test_every_integration_manifest_has_a_case():
    _conformance()
    assert {f"integration/{p.name}" for p in _files("integration")} == {c["manifest"] for c in _cases()}


def test_corpus_models():
    _conformance()
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
    _conformance()
    try:
        parsed = m.parse_manifest(path.read_bytes())
    except m.ManifestError:
        return  # the one integration manifest meant to fail
    assert m.parse_manifest(parsed.to_xml()) == parsed
    assert m.parse_manifest(parsed.command.to_xml()).command == parsed.command


# ---------------------------------------------------------------------------------------------
# Parity with upstream's manifest_schema.xsd
#
# Both schemas judge the same parsed element. Upstream's schema declares its blocks (get, set,
# aota, fota, ...) as global elements, so it would also accept e.g. a bare <get> as a whole
# document; a manifest's root is <manifest>, so upstream's verdict here is "valid and rooted at
# <manifest>". Ours declares only <manifest> globally.


@pytest.fixture(scope="module")
def upstream() -> xmlschema.XMLSchema10:
    return xmlschema.XMLSchema10(str(_conformance() / "schema" / "manifest_schema.xsd"))


def _verdicts(upstream: xmlschema.XMLSchema10, root: ET.Element) -> tuple[bool, bool]:
    theirs = root.tag == "manifest" and upstream.is_valid(root)
    return theirs, m.schema().is_valid(root)


def _xml_verdicts(upstream: xmlschema.XMLSchema10, xml: str | bytes) -> tuple[bool, bool]:
    try:
        root = DefusedET.fromstring(xml, forbid_dtd=True)
    except ET.ParseError:
        return False, False  # not well-formed: refused by both before any schema
    return _verdicts(upstream, root)


# Texts substituted into leaf elements: over-long strings at each of upstream's limits, wrong
# dates, decimal corner cases, GUID and package-list shapes; plus (see _enumerated_values) every
# value of every enumeration in upstream's schema, so each enum is tried on every element.
_LIMITS = (50, 200, 700, 1000, 1500, 5000)
_GUID = "12345678-abcd-ABCD-1234-123456789012"
_TEXTS = (
    *("x" * n for n in _LIMITS), *("x" * (n + 1) for n in _LIMITS),
    *(f" {'x' * n}\n" for n in _LIMITS),  # too long as a string, not once an anyURI collapses its whitespace
    "", " ", "bogus", "DOCKER", "docker ", " full", "2017/11/20", "2017-13-01", "2017-02-29", "2016-02-29",
    "17-11-20", "2017-11-20Z", "2017-11-20+05:30", "2017-11-20T00:00:00", "-1", "-0", "0", "1.0", "+2.50", "1e3",
    ".5", "256.0", "0256", "512", "NaN", _GUID, _GUID.upper(), _GUID + "0", _GUID[:-1], _GUID.replace("-", "", 1),
    _GUID[:-1] + "g", "docker-ce,python3:amd64", "a", "a+b.c-d", "bad package", ",lead", "trail,", "a::b", "-a",
    "http://host/a b", "http://h:port/x", "get_element",
)


@cache
def _enumerated_values() -> tuple[str, ...]:
    if not UPSTREAM_XSD.is_file():
        return ()
    xsd = DefusedET.parse(UPSTREAM_XSD).getroot()
    return tuple(sorted({e.get("value", "") for e in xsd.iter("{http://www.w3.org/2001/XMLSchema}enumeration")}))


def _elements(root: ET.Element) -> Iterator[tuple[ET.Element, ET.Element, int]]:
    """(parent, child, index) for every non-root element."""
    for parent in root.iter():
        for index, child in enumerate(list(parent)):
            yield parent, child, index


def _paths(root: ET.Element) -> dict[int, str]:
    """id(element) -> its path, e.g. /manifest/ota/type/fota/vendor."""
    paths = {id(root): "/" + root.tag}
    for parent in root.iter():
        for child in parent:
            paths[id(child)] = paths[id(parent)] + "/" + child.tag
    return paths


def _mutants(root: ET.Element, seen: set[tuple[str, str, str]] | None = None) -> Iterator[tuple[str, ET.Element]]:
    """Structural and value mutations of one manifest, each a fresh tree.

    A value's validity depends only on the element (or attribute) it sits in, so with `seen`
    shared across manifests each (path, value) pair is tried once; structural mutations depend on
    the siblings and are always made.
    """
    positions = list(_elements(root))
    paths = _paths(root)

    def new_value(path: str, attribute: str, text: str) -> bool:
        if seen is None:
            return True
        key = (path, attribute, text)
        if key in seen:
            return False
        seen.add(key)
        return True

    for n, (_parent, child, index) in enumerate(positions):
        def fresh(n: int = n) -> tuple[ET.Element, ET.Element, ET.Element]:
            tree = copy.deepcopy(root)
            p, c, _ = list(_elements(tree))[n]
            return tree, p, c

        path = paths[id(child)]
        tree, p, c = fresh()
        p.remove(c)
        yield f"drop {path}", tree

        tree, p, c = fresh()
        p.insert(index + 1, copy.deepcopy(c))
        yield f"duplicate {path}", tree

        tree, p, c = fresh()
        p.insert(index + 1, ET.Element("bogus"))
        yield f"extra element after {path}", tree

        tree, p, c = fresh()
        c.tag = c.tag + "x"
        yield f"rename {path}", tree

        tree, p, c = fresh()
        c.set("extra", "1")
        yield f"unknown attribute on {path}", tree

        if index + 1 < len(p):
            tree, p, c = fresh()
            nxt = p[index + 1]
            p.remove(c)
            p.insert(list(p).index(nxt) + 1, c)
            yield f"swap {path} with the next sibling", tree

        if len(child):
            tree, p, c = fresh()
            c.text = "stray text"
            yield f"text inside {path}", tree
            tree, p, c = fresh()
            for grandchild in list(c):
                c.remove(grandchild)
            yield f"empty {path}", tree
        else:
            for text in (*_TEXTS, *_enumerated_values()):
                if new_value(path, "", text):
                    tree, p, c = fresh()
                    c.text = text
                    yield f"{path} = {text[:20]!r}({len(text)})", tree
            tree, p, c = fresh()
            ET.SubElement(c, "child")
            yield f"child element in {path}", tree
        for name in child.attrib:
            tree, p, c = fresh()
            del c.attrib[name]
            yield f"drop {path}/@{name}", tree
            for text in ("", " ", "bogus", "x" * 5000, *_enumerated_values()):
                if new_value(path, name, text):
                    tree, p, c = fresh()
                    c.set(name, text)
                    yield f"{path}/@{name} = {text[:10]!r}", tree
    tree = copy.deepcopy(root)
    tree.tag = "{urn:example}manifest"
    yield "namespaced root", tree
    tree = copy.deepcopy(root)
    tree.set("version", "1")
    yield "attribute on the root", tree


def _extra_documents() -> Iterator[tuple[str, str]]:
    """Hand-written manifests for branches the corpus never reaches."""
    hdr = "<header><type>{t}</type><repo>remote</repo></header>"
    fota = ("<fota name='n'><biosversion>1</biosversion><vendor>v</vendor><manufacturer>m</manufacturer>"
            "<product>p</product><releasedate>2020-01-01</releasedate>{extra}</fota>")
    sota = "<sota><cmd>{cmd}</cmd>{extra}</sota>"
    ota = "<manifest><type>ota</type><ota>" + hdr + "<type>{body}</type>{bundle}</ota></manifest>"
    for extra in ("<sigversion>256</sigversion><guid>12345678-1234-1234-1234-123456789abc</guid><boot>x</boot>"
                  "<size>1</size><productversion>1</productversion><deviceReboot>no</deviceReboot>"
                  "<username>u</username><password>p</password><path>/p</path><tooloptions>/p</tooloptions>"
                  "<signature>ab</signature>", "<guid>nope</guid>", "<sigversion>128</sigversion>"):
        yield f"fota {extra[:30]}", ota.format(t="fota", body=fota.format(extra=extra), bundle="")
    for cmd, extra in (("upgrade", "<mode>no-download</mode><package_list>a,b:arm64</package_list>"),
                       ("update", "<mode>cancel</mode><package_list></package_list><path>/x</path>"),
                       ("update", "<mode>download-only</mode><deviceReboot>no</deviceReboot>"),
                       ("update", "<password>" + "p" * 5000 + "</password>"),
                       ("update", "<password>" + "p" * 5001 + "</password>"),
                       ("update", "<package_list>a,,b</package_list>"),
                       ("install", "")):
        yield f"sota {cmd} {extra[:30]}", ota.format(t="sota", body=sota.format(cmd=cmd, extra=extra), bundle="")
    aota = "<aota><cmd>pull</cmd><app>docker</app>{extra}</aota>"
    for extra in ("<sigversion>384</sigversion><configParams>{}</configParams><dockerUsername>u</dockerUsername>"
                  "<dockerPassword>p</dockerPassword><dockerRegistry>r</dockerRegistry><deviceReboot>y</deviceReboot>",
                  "<app>docker</app>"):
        yield f"aota {extra[:30]}", ota.format(t="aota", body=aota.format(extra=extra), bundle="")
    for bundle in ("<bundle><name>b</name><version>1.2</version><signature>s</signature></bundle>",
                   "<bundle><signature>s</signature><name>b</name><version>0</version></bundle>",
                   "<bundle><name>b</name><version>-1</version><signature>s</signature></bundle>",
                   "<bundle><name>b</name><signature>s</signature></bundle>",
                   "<bundle><name>b</name><version>1</version><signature>s</signature></bundle>" * 2):
        yield f"bundle {bundle[:40]}", ota.format(t="aota", body=aota.format(extra=""), bundle=bundle)
    for header in ("<header><id>i</id><name>n</name><description>d</description><type>aota</type>"
                   "<repo>local</repo></header>", "<header><repo>remote</repo><type>aota</type></header>",
                   "<header><type>aota</type><repo>ftp</repo></header>",
                   "<header><type>aota</type><repo>remote</repo><description>" + "d" * 51 + "</description></header>"):
        yield f"header {header[:40]}", ("<manifest><type>ota</type><ota>" + header + "<type>"
                                        + aota.format(extra="") + "</type></ota></manifest>")
    yield "ota with two payloads", ota.format(t="aota", body=aota.format(extra="") * 2, bundle="")
    yield "ota with an empty payload", ota.format(t="aota", body="", bundle="")
    for n in (25, 26):
        lines = "".join(f"<source_pkg>deb http://h/{i} s main</source_pkg>" for i in range(n))
        yield f"os source {n} lines", ("<manifest><type>source</type><osSource><add><repos>"
                                       f"{lines}</repos></add></osSource></manifest>")
    for n in (45, 46):
        lines = "".join(f"<source_pkg>deb http://h/{i} s main</source_pkg>" for i in range(n))
        yield f"app source {n} lines", ("<manifest><type>source</type><applicationSource><update><repo><repos>"
                                        f"{lines}</repos><filename>f</filename></repo></update></applicationSource>"
                                        "</manifest>")
    yield "source list with text", "<manifest><type>source</type><osSource><list>anything</list></osSource></manifest>"
    yield "app source remove, long gpg key name", (
        "<manifest><type>source</type><applicationSource><remove><gpg><keyname>" + "k" * 51
        + "</keyname></gpg><repo><filename>f</filename></repo></remove></applicationSource></manifest>")
    yield "config load with every field", (
        "<manifest><type>config</type><config><cmd>load</cmd><configtype><load><fetch>http://h/c</fetch>"
        "<path>/tmp</path><signature>s</signature></load></configtype></config></manifest>")
    yield "config load empty", ("<manifest><type>config</type><config><cmd>load</cmd><configtype><load/></configtype>"
                                "</config></manifest>")
    yield "config with two operations", (
        "<manifest><type>config</type><config><cmd>load</cmd><configtype><load/><load/></configtype></config></manifest>")
    for option in ("status", "security", "guid", "ALL", "network"):
        yield f"query {option}", (f"<manifest><type>cmd</type><cmd>query</cmd><query><option>{option}</option></query>"
                                  "</manifest>")
    for body in ("<cmd>shutdown</cmd>", "<cmd>restart</cmd><restart/>", "<cmd>restart</cmd><restart>now</restart>",
                 "<cmd>restart</cmd><restart when='now'/>", "<cmd>reboot</cmd>", "", "<cmd/>",
                 "<cmd>restart</cmd><cmd>restart</cmd>"):
        yield f"cmd {body}", f"<manifest><type>cmd</type>{body}</manifest>"
    yield "every block at once", (
        "<manifest><type>cmd</type><cmd>query</cmd><config><cmd>append</cmd><configtype><append><path>p</path>"
        "</append></configtype></config><query><option>hw</option></query><restart/><ota>"
        + hdr.format(t="aota") + "<type>" + aota.format(extra="") + "</type></ota><osSource><list/></osSource>"
        "<applicationSource><list/></applicationSource></manifest>")
    yield "no type", "<manifest><cmd>restart</cmd></manifest>"
    yield "empty manifest", "<manifest/>"
    yield "bare fota as the document", fota.format(extra="")
    yield "bare get as the document", "<get><path>x</path></get>"


def _corpus() -> list[Path]:
    return _files("valid") + _files("invalid") + _files("integration")


def test_parity_on_every_corpus_manifest(upstream):
    corpus = _corpus()
    assert len(corpus) >= 48
    mismatches = [p.name for p in corpus if len(set(_xml_verdicts(upstream, p.read_bytes()))) != 1]
    assert not mismatches


# Valid manifests using the fields and blocks the corpus never shows, as further mutation seeds.
_FULL_FOTA = ("<fota name='bios'><fetch>https://repo.example/capsule.bin</fetch><biosversion>5.12</biosversion>"
              "<vendor>Intel</vendor><manufacturer>intel</manufacturer><product>ADL</product>"
              "<productversion>1</productversion><releasedate>2021-02-08</releasedate><path>/boot/efi/</path>"
              "<signature>abcd</signature><sigversion>384</sigversion><tooloptions>/p /b</tooloptions>"
              "<boot>b</boot><guid>" + _GUID + "</guid><size>100</size><username>u</username>"
              "<password>p</password><deviceReboot>no</deviceReboot></fota>")
_FULL_SOTA = ("<sota><cmd logtofile='Y'>upgrade</cmd><mode>download-only</mode><package_list>vim,curl:amd64"
              "</package_list><fetch>https://repo.example/x.mender</fetch><signature>s</signature>"
              "<username>u</username><password>p</password><release_date>2021-10-10</release_date>"
              "<path>/var/cache</path><deviceReboot>no</deviceReboot></sota>")
_FULL_AOTA = ("<aota name='app'><cmd>up</cmd><app>compose</app><configParams>{}</configParams>"
              "<fetch>https://repo.example/app.tar.gz</fetch><file>custom.yml</file><version>2.5</version>"
              "<signature>s</signature><sigversion>256</sigversion><containerTag>app:1</containerTag>"
              "<deviceReboot>no</deviceReboot><username>u</username><password>p</password>"
              "<dockerRegistry>registry.example</dockerRegistry><dockerUsername>du</dockerUsername>"
              "<dockerPassword>dp</dockerPassword></aota>")


def _ota_seed(kind: str, body: str, bundle: str = "") -> str:
    return (f"<manifest><type>ota</type><ota><header><id>i</id><name>n</name><description>d</description>"
            f"<type>{kind}</type><repo>local</repo></header><type>{body}</type>{bundle}</ota></manifest>")


_SEEDS = {
    "full aota with bundle": _ota_seed("aota", _FULL_AOTA, "<bundle><name>b</name><version>1.2</version>"
                                                           "<signature>s</signature></bundle>"),
    "full fota": _ota_seed("fota", _FULL_FOTA),
    "full sota": _ota_seed("sota", _FULL_SOTA),
    "full pota": _ota_seed("pota", f"<pota>{_FULL_FOTA}{_FULL_SOTA}</pota>"),
    "config load": ("<manifest><type>config</type><config><cmd>load</cmd><configtype><load><fetch>http://h/c"
                    "</fetch><path>/tmp</path><signature>s</signature></load></configtype></config></manifest>"),
    "restart block": "<manifest><type>cmd</type><cmd>restart</cmd><restart/></manifest>",
    "query status": "<manifest><type>cmd</type><cmd>query</cmd><query><option>status</option></query></manifest>",
    "app source remove": ("<manifest><type>source</type><applicationSource><remove><gpg><keyname>k</keyname></gpg>"
                          "<repo><filename>f.list</filename></repo></remove></applicationSource></manifest>"),
    "app source add": ("<manifest><type>source</type><applicationSource><add><gpg><uri>https://h/k.pub</uri>"
                       "<keyname>k.gpg</keyname></gpg><repo><repos><source_pkg>deb http://h/ s main</source_pkg>"
                       "<source_pkg>deb http://h/ s universe</source_pkg></repos><filename>f.list</filename></repo>"
                       "</add></applicationSource></manifest>"),
}


def _mutation_seeds() -> list[tuple[str, bytes | str]]:
    return [(p.name, p.read_bytes()) for p in _files("valid") + _files("integration")] + list(_SEEDS.items())


def _diverges_by_design(root: ET.Element) -> bool:
    """Pinned in test_known_divergences_from_upstream: upstream's unsupported <cmd>custom</cmd>
    and <custom>, and child elements in <restart>."""
    return (root.findtext("cmd") == "custom" or root.find("custom") is not None
            or any(len(elem) for elem in root.iter("restart")))


def _parity_sweep(upstream: xmlschema.XMLSchema10) -> tuple[int, int, list[str]]:
    """(mutants checked, accepted by ours, mismatches) over every mutation seed."""
    seen: set[tuple[str, str, str]] = set()
    checked, accepted, mismatches = 0, 0, []
    for seed, xml in _mutation_seeds():
        root = DefusedET.fromstring(xml)
        assert _verdicts(upstream, root) == (True, True) or seed == "AOTA_FAIL_WITH_BAD_MANIFEST.xml", seed
        for what, mutant in _mutants(root, seen):
            if _diverges_by_design(mutant):
                continue
            theirs, ours = _verdicts(upstream, mutant)
            checked += 1
            accepted += ours
            if theirs != ours:
                mismatches.append(f"{seed}: {what}: upstream {'accepts' if theirs else 'refuses'}")
    return checked, accepted, mismatches


def test_parity_on_mutated_manifests(upstream):
    checked, accepted, mismatches = _parity_sweep(upstream)
    extra = sum(1 for _ in _extra_documents())
    print(f"parity: {len(_corpus())} corpus manifests; {len(_mutation_seeds())} mutation seeds "
          f"({len(_SEEDS)} hand-written); {checked} mutants, {accepted} of them valid; {extra} hand-written cases")
    assert not mismatches, mismatches[:20]
    assert checked > 10000 and extra >= 50  # so the generator cannot silently shrink
    assert 0.05 < accepted / checked < 0.95  # the mutations exercise both verdicts


def test_parity_on_hand_written_manifests(upstream):
    documents = list(_extra_documents())
    verdicts = {label: _xml_verdicts(upstream, xml) for label, xml in documents}
    assert {label for label, (theirs, ours) in verdicts.items() if theirs != ours} == set()
    assert any(ours for _, ours in verdicts.values()) and not all(ours for _, ours in verdicts.values())


def test_known_divergences_from_upstream(upstream):
    """Where our schema deliberately differs from upstream's, each pinned here."""
    # 1. Commands we do not support: upstream's <cmd>custom</cmd> with a <custom> block.
    custom = "<manifest><type>cmd</type><cmd>custom</cmd><custom><data>payload</data></custom></manifest>"
    assert _xml_verdicts(upstream, custom) == (True, False)
    # 2. <restart> is xs:anyType upstream: any child is accepted unless it happens to be named like
    #    one of upstream's global elements, which is then validated. Ours takes no children at all.
    for children, theirs in (("<foo/>", True), ("<get><path>x</path></get>", True), ("<fota/>", False)):
        xml = f"<manifest><type>cmd</type><cmd>restart</cmd><restart>{children}</restart></manifest>"
        assert _xml_verdicts(upstream, xml) == (theirs, False)
    # 3. A document whose root is not <manifest> (valid for upstream's schema object, not a manifest).
    assert upstream.is_valid("<get><path>x</path></get>")
    _refused("<get><path>x</path></get>", "not an element of the schema")


def test_our_schema_is_our_own(upstream):
    ours = m.SCHEMA_PATH.read_text()
    theirs = UPSTREAM_XSD.read_text()
    for upstream_name in ("Max50Chars", "PathMax1500Chars", "URLMax700Chars", "SigMax1000Chars", "MinDecimalZero",
                          "ValidGuidFormat", "sotamode", "logType"):
        assert upstream_name in theirs and upstream_name not in ours
    assert set(m.schema().elements) == {"manifest"}
    assert set(upstream.elements) > {"manifest", "aota", "fota", "sota", "pota", "get"}


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
    _refused(xml, message)


def test_restart_may_carry_text_but_no_elements():
    assert m.parse_manifest("<manifest><type>cmd</type><cmd>restart</cmd><restart>now</restart></manifest>").command \
        == m.PowerCommand(action="restart")
    _refused("<manifest><type>cmd</type><cmd>restart</cmd><restart><x/></restart></manifest>", "restart")


def test_schema_refusals_name_the_element():
    error = _refused("<manifest><type>ota</type><ota><header><type>aota</type><repo>remote</repo></header><type>"
                     "<aota><cmd>pull</cmd><app>docker</app><password>" + "s" * 51 + "</password></aota></type></ota>"
                     "</manifest>", "/manifest/ota/type/aota/password")
    assert error.path == "/manifest/ota/type/aota/password"
    assert "s" * 51 not in str(error)  # the refusal does not echo the secret
    _refused("<manifest><type>cmd</type><cmd>reboot</cmd></manifest>", "/manifest/cmd")


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

_REBOOT = '<?xml version="1.0" encoding="UTF-8"?><manifest><type>cmd</type><cmd>restart</cmd></manifest>'

_BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<manifest><type>cmd</type><cmd>query</cmd><query><option>&lol9;</option></query></manifest>"""


def test_billion_laughs_is_refused():
    _refused(_BILLION_LAUGHS, "entit")
    _refused(_BILLION_LAUGHS.encode(), "billion laughs")


def test_xxe_via_doctype_system_is_refused():
    error = _refused('<?xml version="1.0"?><!DOCTYPE manifest SYSTEM "file:///etc/passwd">'
                     "<manifest><type>cmd</type><cmd>restart</cmd></manifest>", "external reference")
    assert "file:///etc/passwd" in str(error)


def test_xxe_via_external_entity_is_refused():
    _refused('<?xml version="1.0"?><!DOCTYPE manifest [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
             "<manifest><type>config</type><config><cmd>get_element</cmd><configtype><get><path>&x;</path></get>"
             "</configtype></config></manifest>", "external entity")


def test_any_dtd_is_refused():
    _refused("<!DOCTYPE manifest [<!ELEMENT manifest ANY>]><manifest><type>cmd</type><cmd>restart</cmd></manifest>",
             "DTD")
    _refused("<!DOCTYPE manifest><manifest><type>cmd</type><cmd>restart</cmd></manifest>", "DTD")


def test_undeclared_entity_is_refused():
    _refused("<manifest><type>cmd</type><cmd>&restart;</cmd></manifest>", "undefined entity")


def test_oversize_input_is_refused_and_the_limit_is_exact():
    padded = _REBOOT + " " * (m.MAX_MANIFEST_BYTES - len(_REBOOT))
    assert len(padded.encode()) == m.MAX_MANIFEST_BYTES
    assert m.parse_manifest(padded).command == m.PowerCommand(action="restart")
    _refused(padded + " ", "exceeds the 65536-byte limit")
    _refused((padded + " ").encode(), "exceeds")
    _refused(_REBOOT + "<!--" + "x" * 10**7 + "-->", "exceeds")
    # multi-byte characters count as bytes, not characters
    _refused(_REBOOT + "<!--" + "é" * (m.MAX_MANIFEST_BYTES // 2) + "-->", "bytes exceeds")


def test_non_utf8_input_is_refused():
    latin1 = "<manifest><type>config</type><config><cmd>get_element</cmd><configtype><get><path>caf\u00e9</path>" \
             "</get></configtype></config></manifest>"
    _refused(latin1.encode("latin-1"), "not UTF-8: byte 0xe9")
    _refused(_REBOOT.replace("UTF-8", "UTF-16").encode("utf-16"), "not UTF-8")
    _refused(_REBOOT.replace("UTF-8", "ISO-8859-1"), "declares encoding 'iso-8859-1'")
    _refused(_REBOOT.replace("UTF-8", "ISO-8859-1").encode(), "manifests must be UTF-8")
    _refused("<manifest><type>cmd</type><cmd>restart\ud800</cmd></manifest>", "not valid UTF-8")
    # UTF-8 with or without a BOM, and ASCII declared as such, are fine
    assert m.parse_manifest(latin1.encode()).command == m.ConfigCommand(cmd="get_element", path="caf\u00e9")
    assert m.parse_manifest(b"\xef\xbb\xbf" + _REBOOT.encode()).kind == "cmd"
    assert m.parse_manifest(_REBOOT.replace("UTF-8", "us-ascii")).kind == "cmd"


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
    _refused(xml, message)


def test_non_text_input_is_refused():
    _refused(123, "must be str or bytes")  # type: ignore[arg-type]


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
    result = m.Result.failure(m.INSTALL_FAILURE, "signature check failed", job_id="job-42")
    assert result.message == "FAILED TO INSTALL: signature check failed"
    assert json.loads(result.to_json()) == {"status": 400, "message": result.message, "job_id": "job-42"}
    assert m.Result.parse(result.to_json()) == result
    assert m.Result.parse(result.to_json().encode()) == result
    assert m.Result.success("j").to_json() == '{"status":200,"message":"COMMAND SUCCESS","job_id":"j"}'
    assert m.Result.success().ok and m.Result(303, "OTA IN PROGRESS, TRY LATER").busy
    assert m.Result.parse('{"status": 200, "message": "COMMAND SUCCESS"}') == m.Result(200, "COMMAND SUCCESS", "")
    error = m.ManifestError("no <type>")
    assert error.result("j1") == m.Result(300, "FAILED TO PARSE/VALIDATE MANIFEST: no <type>", "j1")
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


# ---------------------------------------------------------------------------------------------
# Building manifests from RPC calls

_TRICKY = "a<b & c>d \"quoted\" 'single' ]]> </password><cmd>remove</cmd>"


def _built(method: str, params) -> m.Manifest:
    xml = m.manifest_from_rpc(method, params)
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
    assert m.manifest_from_rpc("triggerota", {"manifest": _REBOOT}) == _REBOOT
    assert m.manifest_from_rpc("triggerota", _REBOOT) == _REBOOT
    with pytest.raises(m.ManifestError, match=r"triggerota: field 'manifest'.*DTD") as info:
        m.manifest_from_rpc("triggerota", {"manifest": _BILLION_LAUGHS})
    assert info.value.status == 300


def test_triggerota_with_every_valid_corpus_manifest():
    _conformance()
    for path in _files("valid"):
        text = path.read_text()
        assert m.manifest_from_rpc("triggerota", {"manifest": text}) == text


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
    ("triggerota", {"manifest": _REBOOT, "extra": 1}, "extra", "not a field"),
    ("triggerota", {"manifest": "<manifest><type>cmd</type></manifest>"}, "manifest", "needs a <cmd> block"),
])
def test_bad_params_are_refused_naming_the_field(method, params, field, message):
    with pytest.raises(m.ManifestError) as info:
        m.manifest_from_rpc(method, params)
    assert info.value.status == 300
    assert f"{method}: field {field!r}" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("params", [[1, 2], 5, "text"])
def test_params_must_be_an_object(params):
    with pytest.raises(m.ManifestError, match="params must be a JSON object") as info:
        m.manifest_from_rpc("triggeraota", params)
    assert info.value.status == 300


def test_unknown_method_is_refused_with_301():
    with pytest.raises(m.ManifestError, match="unknown RPC method 'file_upload'") as info:
        m.manifest_from_rpc("file_upload", {})
    assert info.value.status == 301
    assert set(m.RPC_METHODS) == {"triggerota", "triggeraota", "triggerfota", "triggersota", "triggerconfig",
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
        assert _xml_verdicts(upstream, m.manifest_from_rpc(method, params)) == (True, True), method
