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


@pytest.mark.parametrize("serial", ["SN-0001\n", "SN-0001\r\n", "\nSN-0001", "SN-0001\x00"])
def test_a_serial_with_a_trailing_newline_is_refused(serial):
    with pytest.raises(wire.WireError, match="malformed serial"):
        wire.check_serial(serial)
    assert not wire.SERIAL_PATTERN.match(serial)
    assert not wire.may_publish(wire.ROLE_DEVICE, serial, wire.topic(serial, wire.STATUS))


def _nested(depth: int) -> str:
    return "[" * (depth - 1) + "{}" + "]" * (depth - 1)


def test_json_depth_is_bounded_without_recursion():
    assert wire.loads_json(_nested(wire.MAX_JSON_DEPTH), "x")
    for depth in (wire.MAX_JSON_DEPTH + 1, 300, 900, 100_000):
        with pytest.raises(wire.WireError, match=f"nested deeper than {wire.MAX_JSON_DEPTH} levels"):
            wire.loads_json(_nested(depth), "x")
    deep: dict = {}
    for _ in range(5000):  # a value built in memory, deeper than Python's recursion limit
        deep = {"a": deep}
    with pytest.raises(wire.WireError, match="params: JSON nested deeper"):
        wire.check_depth(deep, "params")


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 5000])
def test_numbers_no_column_takes_are_refused(text):
    with pytest.raises(wire.WireError, match="not UTF-8 JSON"):
        wire.loads_json(f'{{"ts": {text}}}', "x")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"seq": 2**63, "samples": []}, "'seq' must be an integer from 0 to 9223372036854775807"),
        ({"seq": -1, "samples": []}, "'seq' must be an integer from 0"),
        ({"seq": 1.5, "samples": []}, "'seq' must be int"),
        ({"seq": 1, "samples": [{"ts": 1e20}]}, "sample 0 field 'ts' must be seconds since the epoch"),
        ({"seq": 1, "samples": [{"ts": -5}]}, "sample 0 field 'ts'"),
        ({"seq": 1, "samples": [{"ts": "yesterday"}]}, "sample 0 field 'ts'"),
        ({"seq": 1, "samples": [{"ts": True}]}, "sample 0 field 'ts'"),
        ({"seq": 1, "samples": [{}, 5]}, "sample 1 must be an object"),
        ({"seq": 1, "samples": [{}] * (wire.MAX_SAMPLES + 1)}, "more than 10000 samples"),
        ({"seq": 1, "samples": [], "dropped": -1}, "'dropped' must be an integer"),
        ({"seq": 1, "samples": [], "dropped": "many"}, "'dropped' must be int"),
    ],
)
def test_bad_telemetry_names_the_field(payload, message):
    with pytest.raises(wire.WireError, match=message):
        wire.TelemetryMessage.parse(wire.encode(payload))


def test_bad_fields_of_other_messages_are_refused():
    with pytest.raises(wire.WireError, match="'status' must be an integer from 0 to 999"):
        wire.RpcResult.parse(wire.encode({"status": 2**64, "message": "m"}))
    with pytest.raises(wire.WireError, match="'job_id' is longer than 64"):
        wire.RpcResult.parse(wire.encode({"status": 200, "message": "m", "job_id": "j" * 65}))
    with pytest.raises(wire.WireError, match="'kind' is longer than 64"):
        wire.DeviceEvent.parse(wire.encode({"kind": "k" * 65, "message": "m"}))
    with pytest.raises(wire.WireError, match="'boot_id' is longer than 64"):
        wire.Status.parse(wire.encode({"state": "online", "seq": 1, "firmware_version": "1", "facts": {},
                                       "boot_id": "b" * 65}))
    # Long free text is cut, not refused: a diagnostic's first lines are still worth having.
    result = wire.RpcResult.parse(wire.encode({"status": 200, "message": "m" * 10_000}))
    assert len(result.message) == wire.MAX_MESSAGE_CHARS


def test_refusals_never_echo_a_huge_value():
    with pytest.raises(wire.WireError) as info:
        wire.check_serial("x" * 100_000)
    assert len(str(info.value)) < 300
    with pytest.raises(wire.WireError) as info:
        wire.TelemetryMessage.parse(wire.encode({"seq": 10**200, "samples": []}))
    assert len(str(info.value)) < 300
