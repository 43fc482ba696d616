"""Helpers shared by the manifest tests (test_manifest_parse, test_manifest_parity, test_manifest_rpc).

The conformance data (upstream INBM manifests and schema) lives beside the repository in
../shared/conformance/inbm and is read in place, never copied; without it those tests skip.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import defusedxml.ElementTree as DefusedET
import pytest
import xmlschema

from agent import manifest as m

CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "inbm"
MANIFESTS = CONFORMANCE / "manifests"
UPSTREAM_XSD = CONFORMANCE / "schema" / "manifest_schema.xsd"

ABSENT = f"INBM conformance data not found at {CONFORMANCE} (it sits beside the repo, in ../shared; " \
         "a plain clone does not have it)"


def conformance() -> Path:
    if not (MANIFESTS.is_dir() and UPSTREAM_XSD.is_file()):
        pytest.skip(ABSENT)
    return CONFORMANCE


def corpus_files(group: str) -> list[Path]:
    return sorted((MANIFESTS / group).glob("*.xml")) if (MANIFESTS / group).is_dir() else []


def refused(xml: str | bytes, match: str | None = None) -> m.ManifestError:
    with pytest.raises(m.ManifestError) as info:
        m.parse_manifest(xml)
    assert info.value.status == m.ResultCode.XML_FAILURE, (info.value.status, str(info.value))
    if match is not None:
        assert match.lower() in str(info.value).lower(), str(info.value)
    return info.value


def upstream_schema() -> xmlschema.XMLSchema10:
    """Upstream's manifest_schema.xsd (skips the test when the conformance data is absent)."""
    return xmlschema.XMLSchema10(str(conformance() / "schema" / "manifest_schema.xsd"))


def verdicts(upstream: xmlschema.XMLSchema10, root: ET.Element) -> tuple[bool, bool]:
    """(upstream's verdict, ours) on one parsed element. Upstream's schema declares its blocks
    (get, set, aota, fota, ...) as global elements, so it would also accept e.g. a bare <get> as
    a whole document; a manifest's root is <manifest>, so upstream's verdict here is "valid and
    rooted at <manifest>". Ours declares only <manifest> globally."""
    theirs = root.tag == "manifest" and upstream.is_valid(root)
    return theirs, m.schema().is_valid(root)


def xml_verdicts(upstream: xmlschema.XMLSchema10, xml: str | bytes) -> tuple[bool, bool]:
    try:
        root = DefusedET.fromstring(xml, forbid_dtd=True)
    except ET.ParseError:
        return False, False  # not well-formed: refused by both before any schema
    return verdicts(upstream, root)


REBOOT = '<?xml version="1.0" encoding="UTF-8"?><manifest><type>cmd</type><cmd>restart</cmd></manifest>'

BILLION_LAUGHS = """<?xml version="1.0"?>
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
