"""The wire contract: topic ACL rules and payload validation."""

from __future__ import annotations

import pytest

from agent import wire


@pytest.mark.parametrize("serial", ["ab", "-abc", "a b c", "x" * 65, "a/b/c", "a+b", "a#b", "", "ümlaut"])
def test_malformed_serials_are_refused(serial):
    with pytest.raises(wire.WireError, match="malformed serial"):
        wire.check_serial(serial)


def test_device_role_rules():
    d, own, other = wire.ROLE_DEVICE, "SN-1", "SN-2"
    assert wire.may_publish(d, own, wire.topic(own, wire.STATUS))
    assert wire.may_publish(d, own, wire.topic(own, wire.TELEMETRY))
    assert wire.may_publish(d, own, wire.rpc_response_topic(own, "abc-1"))
    assert not wire.may_publish(d, own, wire.rpc_response_topic(own, "a/b"))
    assert not wire.may_publish(d, own, wire.topic(other, wire.STATUS))
    assert not wire.may_publish(d, own, wire.topic(own, wire.ACK))
    assert not wire.may_publish(d, own, wire.topic(own, wire.REGISTER_REQUEST))
    assert not wire.may_publish(d, own, "some/other/topic")
    assert wire.may_subscribe(d, own, wire.topic(own, wire.RPC_REQUEST + "/+"))
    assert not wire.may_subscribe(d, own, wire.topic(own, "#"))
    assert not wire.may_subscribe(d, own, wire.TOPIC_ROOT + "/+/ack")
    assert not wire.may_subscribe(d, own, "#")
    assert wire.may_receive(d, own, wire.rpc_request_topic(own, "7"))
    assert not wire.may_receive(d, own, wire.rpc_request_topic(other, "7"))
    assert not wire.may_receive(d, own, wire.topic(own, wire.REGISTER_RESPONSE))


def test_registration_role_rules():
    r, own = wire.ROLE_REGISTRATION, "SN-1"
    assert wire.may_publish(r, own, wire.topic(own, wire.REGISTER_REQUEST))
    assert not wire.may_publish(r, own, wire.topic(own, wire.STATUS))
    assert wire.may_subscribe(r, own, wire.topic(own, wire.REGISTER_RESPONSE))
    assert not wire.may_subscribe(r, own, wire.topic(own, wire.ACK))
    assert wire.may_receive(r, own, wire.topic(own, wire.REGISTER_RESPONSE))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{", "not UTF-8 JSON"),
        (b'{"state": "online"}', "field 'seq' is missing"),
        (b'{"state": "sleeping"}', "state must be 'online' or 'offline'"),
        (b'{"state": "online", "seq": true, "firmware_version": "1", "facts": {}}', "field 'seq' must be int"),
        (b'{"state": "online", "seq": 1, "firmware_version": 5, "facts": {}}', "must be str"),
        (b'{"state": "online", "seq": 1, "firmware_version": "1", "facts": []}', "field 'facts' must be dict"),
        (b"{" + b" " * wire.MAX_PAYLOAD_BYTES + b"}", "exceeds"),
    ],
)
def test_bad_status_payloads_name_the_problem(payload, message):
    with pytest.raises(wire.WireError, match=message):
        wire.Status.parse(payload)


def test_registration_payloads_round_trip_and_refuse():
    request = wire.RegisterRequest("-----BEGIN CERTIFICATE REQUEST-----\n...", "token")
    assert wire.RegisterRequest.parse(request.to_bytes()) == request
    with pytest.raises(wire.WireError, match="auth must be one of"):
        wire.RegisterRequest.parse(b'{"csr": "-----BEGIN CERTIFICATE REQUEST-----", "auth": "psk"}')
    with pytest.raises(wire.WireError, match="not a PEM certificate signing request"):
        wire.RegisterRequest.parse(b'{"csr": "hello", "auth": "x509"}')
    refused = wire.RegisterResponse.parse(wire.RegisterResponse(ok=False, error="nope").to_bytes())
    assert not refused.ok and refused.error == "nope"
    with pytest.raises(wire.WireError, match="certificate is not PEM"):
        wire.RegisterResponse.parse(b'{"ok": true, "certificate": "x", "token": "t"}')
    birth = wire.Birth(3, "fw-1", {"a": 1}, "b-1")
    status = wire.Status.parse(birth.to_bytes())
    assert (status.state, status.seq, status.firmware_version, status.facts) == ("online", 3, "fw-1", {"a": 1})
    assert wire.Status.parse(wire.offline_status()).state == "offline"
