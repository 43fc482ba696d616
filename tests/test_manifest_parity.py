"""Parity with upstream INBM's manifest_schema.xsd: both schemas judge the corpus, mutants of it,
and hand-written documents, and must agree except where a divergence is pinned on purpose.

Needs the conformance data beside the repository (see tests/manifest_helpers.py); without it
these tests skip.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import defusedxml.ElementTree as DefusedET
import pytest
import xmlschema

from agent import manifest as m
from tests.manifest_helpers import (
    UPSTREAM_XSD,
    corpus_files,
    refused,
    upstream_schema,
    verdicts,
    xml_verdicts,
)

# Both schemas judge the same parsed element; upstream's verdict is "valid and rooted at
# <manifest>" (why: see verdicts() in tests/manifest_helpers.py).


@pytest.fixture(scope="module")
def upstream() -> xmlschema.XMLSchema10:
    return upstream_schema()


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
    return corpus_files("valid") + corpus_files("invalid") + corpus_files("integration")


def test_parity_on_every_corpus_manifest(upstream):
    corpus = _corpus()
    assert len(corpus) >= 48
    mismatches = [p.name for p in corpus if len(set(xml_verdicts(upstream, p.read_bytes()))) != 1]
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
    corpus = corpus_files("valid") + corpus_files("integration")
    return [(p.name, p.read_bytes()) for p in corpus] + list(_SEEDS.items())


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
        assert verdicts(upstream, root) == (True, True) or seed == "AOTA_FAIL_WITH_BAD_MANIFEST.xml", seed
        for what, mutant in _mutants(root, seen):
            if _diverges_by_design(mutant):
                continue
            theirs, ours = verdicts(upstream, mutant)
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
    verdicts = {label: xml_verdicts(upstream, xml) for label, xml in documents}
    assert {label for label, (theirs, ours) in verdicts.items() if theirs != ours} == set()
    assert any(ours for _, ours in verdicts.values()) and not all(ours for _, ours in verdicts.values())


def test_known_divergences_from_upstream(upstream):
    """Where our schema deliberately differs from upstream's, each pinned here."""
    # 1. Commands we do not support: upstream's <cmd>custom</cmd> with a <custom> block.
    custom = "<manifest><type>cmd</type><cmd>custom</cmd><custom><data>payload</data></custom></manifest>"
    assert xml_verdicts(upstream, custom) == (True, False)
    # 2. <restart> is xs:anyType upstream: any child is accepted unless it happens to be named like
    #    one of upstream's global elements, which is then validated. Ours takes no children at all.
    for children, theirs in (("<foo/>", True), ("<get><path>x</path></get>", True), ("<fota/>", False)):
        xml = f"<manifest><type>cmd</type><cmd>restart</cmd><restart>{children}</restart></manifest>"
        assert xml_verdicts(upstream, xml) == (theirs, False)
    # 3. A document whose root is not <manifest> (valid for upstream's schema object, not a manifest).
    assert upstream.is_valid("<get><path>x</path></get>")
    refused("<get><path>x</path></get>", "not an element of the schema")


def test_our_schema_is_our_own(upstream):
    ours = m.SCHEMA_PATH.read_text()
    theirs = UPSTREAM_XSD.read_text()
    for upstream_name in ("Max50Chars", "PathMax1500Chars", "URLMax700Chars", "SigMax1000Chars", "MinDecimalZero",
                          "ValidGuidFormat", "sotamode", "logType"):
        assert upstream_name in theirs and upstream_name not in ours
    assert set(m.schema().elements) == {"manifest"}
    assert set(upstream.elements) > {"manifest", "aota", "fota", "sota", "pota", "get"}
