"""The wire contract between the platform and the device agent.

This is the only module both sides import: topic names, who may use which topic, the
credentials a CONNECT carries, and the JSON payloads with their validation. Keeping it in one
place means a change to the protocol is one diff, seen by both sides at once.

It uses the standard library only, because the agent runs on QEMU guests and real boards with
Debian's own python3.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

PROTOCOL_VERSION = 1
TOPIC_ROOT = "fleetrig/v1/devices"

# Topic suffixes under TOPIC_ROOT/<serial>/.
REGISTER_REQUEST = "register/request"
REGISTER_RESPONSE = "register/response"
STATUS = "status"
ATTRIBUTES = "attributes"
TELEMETRY = "telemetry"
EVENTS = "events"
ACK = "ack"
RPC_REQUEST = "rpc/request"
RPC_RESPONSE = "rpc/response"

#: Largest OTA package the repository stores and a device downloads.
MAX_PACKAGE_BYTES = 256 * 1024 * 1024
#: Largest payload either side accepts; anything bigger is refused unread.
MAX_PAYLOAD_BYTES = 256 * 1024
#: Largest MQTT packet (its remaining length) either side accepts: a payload at its maximum plus
#: room for the topic, packet id and, in a CONNECT, client id, credentials and will topic.
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + 4 * 1024
#: The registration refusal that means "a fault on the platform's side": the device retries it.
REGISTER_RETRY_LATER = "platform error; retry later"

#: Deepest nesting of arrays and objects accepted in any JSON input, MQTT payload or REST body.
#: The deepest real message (telemetry: payload, samples, sample, network, interface, counter) is
#: 6 levels. Python's recursive encoders and decoders (json, pydantic, FastAPI's jsonable_encoder)
#: fail somewhere between 300 and 1000 levels, after a value was stored; 32 keeps both far apart.
MAX_JSON_DEPTH = 32

#: The range of a signed 64-bit integer column (SQLite INTEGER, PostgreSQL BIGINT).
INT64_MAX = 2**63 - 1

#: Sample timestamps (seconds since the epoch) accepted: 1970-01-01 to 9999-12-31, which
#: datetime can represent; anything else is a device clock or a payload gone wrong.
MAX_TIMESTAMP = 253_402_300_799

#: A customer's tenant id, as provisioning accepts it and agent.env carries it (unanchored: the REST
#: schema declares it as is; every check adds `\Z` and full-matches).
TENANT_RULE = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"

#: Full-match patterns: `\Z`, not `$`, which also matches before a final newline.
SERIAL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,63}\Z")
_RPC_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")

# How a CONNECT says which credential it carries (username is always the serial,
# client id is always the serial).
INIT_PASSWORD_PREFIX = "init:"
TOKEN_PASSWORD_PREFIX = "token:"

AUTH_X509 = "x509"
AUTH_TOKEN = "token"
AUTH_MODES = (AUTH_X509, AUTH_TOKEN)

ROLE_REGISTRATION = "registration"
ROLE_DEVICE = "device"


class ResultCode(IntEnum):
    """The status of every command result: the seed's codes (INBM user guide), and two the platform sets."""

    COMMAND_SUCCESS = 200
    XML_FAILURE = 300  # the manifest failed to parse or validate; nothing was changed
    COMMAND_FAILURE = 301
    OTA_IN_PROGRESS = 302  # another OTA is running (the code INBM's dispatcher sends)
    OTA_FAILURE = 303  # another OTA is running (the code the INBM ThingsBoard guide lists)
    INSTALL_FAILURE = 400
    IMAGE_IMPORT_FAILURE = 401
    FILE_NOT_FOUND = 404
    #: Set by the platform: the device said nothing before the job's deadline.
    TIMEOUT = 408
    #: Set by the platform: the device was offline when the job was to be sent.
    OFFLINE = 503


class WireError(ValueError):
    """A payload or topic that does not follow the contract; the message names what is wrong."""


def shorten(value: object, limit: int = 40) -> str:
    """`repr(value)`, cut to about `limit` characters: refusals name a bad value, never echo it whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def is_request_id(request_id: str) -> bool:
    """True for an RPC request id as the platform makes them (the last level of the rpc topics)."""
    return bool(_RPC_ID_PATTERN.fullmatch(request_id))


def check_serial(serial: str) -> str:
    """Return the serial if it is well formed, else raise WireError naming the rule it breaks."""
    if not isinstance(serial, str) or not SERIAL_PATTERN.fullmatch(serial):
        raise WireError(
            f"malformed serial {shorten(serial)}: use 3-64 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return serial


def topic(serial: str, suffix: str) -> str:
    """The full topic for one device and one suffix, e.g. topic('SN1', STATUS)."""
    return f"{TOPIC_ROOT}/{serial}/{suffix}"


def rpc_request_topic(serial: str, request_id: str) -> str:
    return f"{TOPIC_ROOT}/{serial}/{RPC_REQUEST}/{request_id}"


def rpc_response_topic(serial: str, request_id: str) -> str:
    return f"{TOPIC_ROOT}/{serial}/{RPC_RESPONSE}/{request_id}"


def split_topic(full_topic: str) -> tuple[str, str]:
    """Split a device topic into (serial, suffix); raise WireError for anything else."""
    prefix = TOPIC_ROOT + "/"
    if not full_topic.startswith(prefix):
        raise WireError(f"topic {full_topic!r} is not under {TOPIC_ROOT}/")
    rest = full_topic[len(prefix):]
    serial, sep, suffix = rest.partition("/")
    if not sep or not suffix:
        raise WireError(f"topic {full_topic!r} names no message kind after the serial")
    check_serial(serial)
    return serial, suffix


# What each role may do. A registration session (init key) only runs the registration
# exchange; a device session (certificate or token) uses everything else, on its own serial.
_PUBLISH = {
    ROLE_REGISTRATION: {REGISTER_REQUEST},
    ROLE_DEVICE: {STATUS, ATTRIBUTES, TELEMETRY, EVENTS},
}
_SUBSCRIBE = {
    ROLE_REGISTRATION: {REGISTER_RESPONSE},
    ROLE_DEVICE: {ACK, RPC_REQUEST + "/+"},
}


def may_publish(role: str, serial: str, full_topic: str) -> bool:
    """True when a session of `role` authenticated as `serial` may publish to `full_topic`."""
    try:
        owner, suffix = split_topic(full_topic)
    except WireError:
        return False
    if owner != serial:
        return False
    if suffix in _PUBLISH.get(role, ()):
        return True
    if role == ROLE_DEVICE and suffix.startswith(RPC_RESPONSE + "/"):
        return is_request_id(suffix[len(RPC_RESPONSE) + 1:])
    return False


def may_subscribe(role: str, serial: str, topic_filter: str) -> bool:
    """True when a session of `role` authenticated as `serial` may subscribe to `topic_filter`."""
    try:
        owner, suffix = split_topic(topic_filter)
    except WireError:
        return False
    return owner == serial and suffix in _SUBSCRIBE.get(role, ())


def may_receive(role: str, serial: str, full_topic: str) -> bool:
    """True when a message on `full_topic` may be delivered to a session of `role`/`serial`."""
    try:
        owner, suffix = split_topic(full_topic)
    except WireError:
        return False
    if owner != serial:
        return False
    if role == ROLE_REGISTRATION:
        return suffix == REGISTER_RESPONSE
    return suffix == ACK or suffix.startswith(RPC_REQUEST + "/")


# ---------------------------------------------------------------------------------------------
# Payloads


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def check_depth(value: Any, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Return `value` if its arrays and objects nest at most `max_depth` deep, else raise WireError.

    Iterative, so it measures a value of any depth without recursing itself.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > max_depth:
            raise WireError(f"{what}: JSON nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return value


def loads_json(raw: bytes | bytearray | str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON as every input of the project is parsed: UTF-8, finite numbers, bounded depth.

    The one parser for MQTT payloads and REST bodies alike. NaN, Infinity and numbers that
    overflow a float (1e400) are refused: they are not JSON and no column or encoder takes them.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise WireError(f"{what}: JSON nested deeper than {max_depth} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"{what}: payload is not UTF-8 JSON ({str(exc)[:200]})") from None
    return check_depth(data, what, max_depth)


def decode(payload: bytes | bytearray | str, what: str) -> dict[str, Any]:
    """Parse a JSON object payload, refusing oversize, non-UTF-8, non-JSON or non-object input."""
    if isinstance(payload, str):
        payload = payload.encode()
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError(f"{what}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    data = loads_json(payload, what)
    if not isinstance(data, dict):
        raise WireError(f"{what}: payload must be a JSON object, got {type(data).__name__}")
    return data


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _field(data: dict[str, Any], name: str, kind: type, what: str, *, required: bool = True) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise WireError(f"{what}: field {name!r} is missing")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError(f"{what}: field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _int_field(data: dict[str, Any], name: str, what: str, *, low: int = 0, high: int = INT64_MAX,
               required: bool = True, default: int = 0) -> int:
    """An integer field within [low, high]: the range of the column that stores it."""
    value = _field(data, name, int, what, required=required)
    if value is None:
        return default
    if not low <= value <= high:
        raise WireError(f"{what}: field {name!r} must be an integer from {low} to {high}, got {shorten(value)}")
    return int(value)


def _str_field(data: dict[str, Any], name: str, what: str, *, max_length: int, required: bool = True) -> str:
    value = _field(data, name, str, what, required=required)
    if value is None:
        return ""
    if len(value) > max_length:
        raise WireError(f"{what}: field {name!r} is longer than {max_length} characters")
    return str(value)


@dataclass(frozen=True)
class RegisterRequest:
    """Sent by a device on first boot, over its init-key session: its CSR and wanted auth mode."""

    csr_pem: str
    auth: str = AUTH_X509

    def to_bytes(self) -> bytes:
        return encode({"v": PROTOCOL_VERSION, "csr": self.csr_pem, "auth": self.auth})

    @classmethod
    def parse(cls, payload: bytes) -> RegisterRequest:
        what = "registration request"
        data = decode(payload, what)
        csr = _field(data, "csr", str, what)
        auth = _field(data, "auth", str, what)
        if auth not in AUTH_MODES:
            raise WireError(f"{what}: auth must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
        if "BEGIN CERTIFICATE REQUEST" not in csr:
            raise WireError(f"{what}: csr is not a PEM certificate signing request")
        return cls(csr_pem=csr, auth=auth)


@dataclass(frozen=True)
class RegisterResponse:
    """The platform's answer: a client certificate and token, or the reason for refusal."""

    ok: bool
    certificate_pem: str = ""
    token: str = ""
    error: str = ""

    def to_bytes(self) -> bytes:
        return encode(
            {"v": PROTOCOL_VERSION, "ok": self.ok, "certificate": self.certificate_pem,
             "token": self.token, "error": self.error}
        )

    @classmethod
    def parse(cls, payload: bytes) -> RegisterResponse:
        what = "registration response"
        data = decode(payload, what)
        ok = _field(data, "ok", bool, what)
        if not ok:
            return cls(ok=False, error=str(data.get("error") or "refused without a reason"))
        cert = _field(data, "certificate", str, what)
        token = _field(data, "token", str, what)
        if "BEGIN CERTIFICATE" not in cert:
            raise WireError(f"{what}: certificate is not PEM")
        return cls(ok=True, certificate_pem=cert, token=token)


@dataclass(frozen=True)
class Birth:
    """Published by a device each time it comes online: who it is and what it runs.

    The platform answers with an Ack carrying the same `seq`, which is the end-to-end
    acknowledgement the device waits for before it calls itself live.
    """

    seq: int
    firmware_version: str
    facts: dict[str, Any] = field(default_factory=dict)
    boot_id: str = ""

    def to_bytes(self) -> bytes:
        return encode(
            {"v": PROTOCOL_VERSION, "state": "online", "seq": self.seq,
             "firmware_version": self.firmware_version, "facts": self.facts, "boot_id": self.boot_id}
        )


@dataclass(frozen=True)
class Status:
    """A device's connectivity statement: a Birth when online, or the last will when offline."""

    state: str
    seq: int = 0
    firmware_version: str | None = None
    facts: dict[str, Any] | None = None
    boot_id: str = ""

    @classmethod
    def parse(cls, payload: bytes) -> Status:
        what = "status"
        data = decode(payload, what)
        state = _field(data, "state", str, what)
        if state not in ("online", "offline"):
            raise WireError(f"{what}: state must be 'online' or 'offline', got {state!r}")
        if state == "offline":
            return cls(state=state)
        seq = _int_field(data, "seq", what)
        fw = _str_field(data, "firmware_version", what, max_length=128)
        facts = _field(data, "facts", dict, what)
        boot_id = _str_field(data, "boot_id", what, max_length=64, required=False)
        return cls(state=state, seq=seq, firmware_version=fw, facts=facts, boot_id=boot_id)


def offline_status() -> bytes:
    """The last will a device registers: the platform marks it offline when the broker sends it."""
    return encode({"v": PROTOCOL_VERSION, "state": "offline"})


@dataclass(frozen=True)
class Ack:
    """The platform's end-to-end acknowledgement of a device message."""

    ref: str
    ok: bool = True
    error: str = ""

    def to_bytes(self) -> bytes:
        return encode({"v": PROTOCOL_VERSION, "ref": self.ref, "ok": self.ok, "error": self.error})

    @classmethod
    def parse(cls, payload: bytes) -> Ack:
        what = "ack"
        data = decode(payload, what)
        ref = _str_field(data, "ref", what, max_length=128)
        ok = _field(data, "ok", bool, what)
        return cls(ref=ref, ok=ok, error=str(data.get("error") or ""))


# ---------------------------------------------------------------------------------------------
# Device management: RPC commands, results, telemetry, events

#: Longest free-text message (RPC results, events) kept; the rest is cut, not refused, because a
#: diagnostic's long output is still worth its first lines.
MAX_MESSAGE_CHARS = 4000

#: Most samples in one telemetry message (a device publishes a few a cycle; its cache resends more).
MAX_SAMPLES = 10_000

#: RPC methods, named as the upstream ThingsBoard adapter names them.
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


@dataclass(frozen=True)
class RpcRequest:
    """A command for one device, on rpc/request/<id>; the device answers on rpc/response/<id>."""

    request_id: str
    method: str
    params: dict[str, Any]
    job_id: str = ""
    timeout_s: float = 300.0

    def to_bytes(self) -> bytes:
        return encode({"v": PROTOCOL_VERSION, "id": self.request_id, "method": self.method,
                       "params": self.params, "job_id": self.job_id, "timeout_s": self.timeout_s})

    @classmethod
    def parse(cls, request_id: str, payload: bytes) -> RpcRequest:
        what = "rpc request"
        data = decode(payload, what)
        method = _field(data, "method", str, what)
        if method not in RPC_METHODS:
            raise WireError(f"{what}: unknown method {method!r}; known: {', '.join(RPC_METHODS)}")
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise WireError(f"{what}: params must be an object")
        timeout = data.get("timeout_s", 300.0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 86400:
            raise WireError(f"{what}: timeout_s must be a number of seconds in (0, 86400]")
        job_id = _str_field(data, "job_id", what, max_length=64, required=False)
        return cls(request_id=request_id, method=method, params=params, job_id=job_id, timeout_s=float(timeout))


@dataclass(frozen=True)
class RpcResult:
    """A device's answer: the seed's {"status": N, "message": "...", "job_id": "..."} plus data."""

    status: int
    message: str
    job_id: str = ""
    data: Any = None

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {"status": self.status, "message": self.message, "job_id": self.job_id}
        if self.data is not None:
            body["data"] = self.data
        return encode(body)

    @classmethod
    def parse(cls, payload: bytes) -> RpcResult:
        what = "rpc result"
        data = decode(payload, what)
        status = _int_field(data, "status", what, high=999)
        message = _field(data, "message", str, what)
        job_id = _str_field(data, "job_id", what, max_length=64, required=False)
        return cls(status=status, message=message[:MAX_MESSAGE_CHARS], job_id=job_id, data=data.get("data"))


@dataclass(frozen=True)
class TelemetryMessage:
    """Dynamic telemetry: the samples collected since the last publish; acked as 'telemetry-<seq>'."""

    seq: int
    samples: list[dict[str, Any]]
    dropped: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> TelemetryMessage:
        what = "telemetry"
        data = decode(payload, what)
        seq = _int_field(data, "seq", what)
        samples = _field(data, "samples", list, what)
        if len(samples) > MAX_SAMPLES:
            raise WireError(f"{what}: more than {MAX_SAMPLES} samples in one message")
        for index, sample in enumerate(samples):
            if not isinstance(sample, dict):
                raise WireError(f"{what}: sample {index} must be an object, got {type(sample).__name__}")
            ts = sample.get("ts")
            if ts is not None and (not isinstance(ts, int | float) or isinstance(ts, bool)
                                   or not 0 <= ts <= MAX_TIMESTAMP):
                raise WireError(f"{what}: sample {index} field 'ts' must be seconds since the epoch "
                                f"from 0 to {MAX_TIMESTAMP}, got {shorten(ts)}")
        dropped = _int_field(data, "dropped", what, required=False)
        return cls(seq=seq, samples=samples, dropped=dropped)


@dataclass(frozen=True)
class DeviceEvent:
    """Something the device wants in its event log (OTA progress, diagnostics, power)."""

    kind: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return encode({"v": PROTOCOL_VERSION, "kind": self.kind, "message": self.message, "detail": self.detail})

    @classmethod
    def parse(cls, payload: bytes) -> DeviceEvent:
        what = "event"
        data = decode(payload, what)
        kind = _str_field(data, "kind", what, max_length=64)
        message = _field(data, "message", str, what)
        detail = _field(data, "detail", dict, what, required=False) or {}
        return cls(kind=kind, message=message[:MAX_MESSAGE_CHARS], detail=detail)
