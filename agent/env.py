"""agent.env: the file provisioning writes and the agent reads on boot.

The format is `KEY=VALUE` lines, as systemd's EnvironmentFile and POSIX shells read them, so
the same file can be sourced by a boot script on a real board. Every field is checked here and
a bad file is refused with a message that names the line and the problem: a device flashed
with a broken file must say so on its console, not fail later with a TLS or MQTT riddle.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from agent.state import write_atomic
from agent.wire import AUTH_MODES, AUTH_X509, TENANT_RULE, WireError, check_serial

REQUIRED_KEYS = ("SERIAL", "TENANT_ID", "BROKER_URL", "INIT_KEY", "CA_CERT")
OPTIONAL_KEYS = ("AUTH", "SIGNATURE_CERT", "REPO_URL")
_KEY_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")
_INIT_KEY = re.compile(r"^[A-Za-z0-9_-]{22,128}$")
_TENANT = re.compile(TENANT_RULE + r"\Z")
MAX_FILE_BYTES = 64 * 1024


class AgentEnvError(ValueError):
    """agent.env is missing, unreadable or malformed; the message says where and what."""


@dataclass(frozen=True)
class AgentEnv:
    serial: str
    tenant_id: str
    broker_url: str
    init_key: str
    ca_cert_pem: str
    auth: str = AUTH_X509
    signature_cert_pem: str | None = None
    #: The platform's package repository, trusted from first boot on.
    repo_url: str | None = None

    @property
    def broker_host(self) -> str:
        return urlsplit(self.broker_url).hostname or ""

    @property
    def broker_port(self) -> int:
        parts = urlsplit(self.broker_url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.broker_url).scheme == "mqtts"

    def render(self) -> str:
        """The file's text, as provisioning writes it."""
        lines = [
            "# fleetrig agent configuration: one-time credentials for first boot. Keep secret.",
            f"SERIAL={self.serial}",
            f"TENANT_ID={self.tenant_id}",
            f"BROKER_URL={self.broker_url}",
            f"AUTH={self.auth}",
            f"INIT_KEY={self.init_key}",
            f"CA_CERT={_b64(self.ca_cert_pem)}",
        ]
        if self.signature_cert_pem:
            lines.append(f"SIGNATURE_CERT={_b64(self.signature_cert_pem)}")
        if self.repo_url:
            lines.append(f"REPO_URL={self.repo_url}")
        return "\n".join(lines) + "\n"


def _b64(pem: str) -> str:
    return base64.b64encode(pem.encode()).decode()


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _pem_field(key: str, value: str, marker: str) -> str:
    try:
        pem = base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise AgentEnvError(f"{key}: not base64-encoded PEM text") from None
    if f"-----BEGIN {marker}-----" not in pem:
        raise AgentEnvError(f"{key}: decodes to text without a '-----BEGIN {marker}-----' block")
    return pem


def _certificates(key: str, value: str, *, need_ca: bool) -> str:
    """Base64 PEM text to PEM text. Refuse what OpenSSL cannot load (a damaged or garbage certificate), or, with
    `need_ca`, that holds no CA certificate: otherwise the device would fail every TLS
    handshake for ever with a riddle instead of saying what is wrong with its file."""
    pem = _pem_field(key, value, "CERTIFICATE")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        raise AgentEnvError(f"{key}: not a valid certificate ({getattr(exc, 'reason', None) or exc})") from None
    if need_ca and not context.get_ca_certs():
        raise AgentEnvError(f"{key}: the certificate is not a CA certificate (no basicConstraints CA:TRUE)")
    return pem


def _url(key: str, value: str, source: str) -> SplitResult:
    """urlsplit that refuses what it cannot take apart (a bad IPv6 literal, a bad port)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise AgentEnvError(f"{source}: {key} {value[:80]!r} is not a valid URL: {exc}") from None
    return parts


def parse_agent_env(text: str, source: str = "agent.env") -> AgentEnv:
    """Parse and check the text of an agent.env file."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        match = _KEY_LINE.match(line)
        if not match:
            raise AgentEnvError(f"{source}:{number}: expected KEY=VALUE, got {raw[:60]!r}")
        key, value = match.group(1), _unquote(match.group(2))
        if key not in REQUIRED_KEYS and key not in OPTIONAL_KEYS:
            raise AgentEnvError(f"{source}:{number}: unknown key {key}")
        if key in values:
            raise AgentEnvError(f"{source}:{number}: {key} is set twice")
        values[key] = value
    missing = [k for k in REQUIRED_KEYS if not values.get(k)]
    if missing:
        raise AgentEnvError(f"{source}: missing {', '.join(missing)}")
    try:
        serial = check_serial(values["SERIAL"])
    except WireError as exc:
        raise AgentEnvError(f"{source}: SERIAL: {exc}") from None
    if not _TENANT.fullmatch(values["TENANT_ID"]):
        raise AgentEnvError(f"{source}: TENANT_ID {values['TENANT_ID']!r} is malformed")
    url = _url("BROKER_URL", values["BROKER_URL"], source)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        raise AgentEnvError(
            f"{source}: BROKER_URL {values['BROKER_URL'][:80]!r} must look like mqtts://HOST:PORT"
        )
    if not _INIT_KEY.match(values["INIT_KEY"]):
        raise AgentEnvError(f"{source}: INIT_KEY is not a key this platform issues (22-128 url-safe chars)")
    auth = values.get("AUTH", AUTH_X509)
    if auth not in AUTH_MODES:
        raise AgentEnvError(f"{source}: AUTH must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
    sig = values.get("SIGNATURE_CERT")
    repo = values.get("REPO_URL") or None
    if repo is not None:
        parts = _url("REPO_URL", repo, source)
        if parts.scheme != "https" or not parts.hostname or not repo.endswith("/"):
            raise AgentEnvError(f"{source}: REPO_URL {repo!r} must look like https://HOST:PORT/repo/")
    return AgentEnv(
        serial=serial,
        tenant_id=values["TENANT_ID"],
        broker_url=values["BROKER_URL"],
        init_key=values["INIT_KEY"],
        ca_cert_pem=_certificates(f"{source}: CA_CERT", values["CA_CERT"], need_ca=True),
        auth=auth,
        signature_cert_pem=_certificates(f"{source}: SIGNATURE_CERT", sig, need_ca=False) if sig else None,
        repo_url=repo,
    )


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def load_agent_env(path: str | Path) -> AgentEnv:
    """Read and parse an agent.env file from disk.

    Opened without blocking (a named pipe with no writer would hang a boot) and checked to be
    a regular file before a byte is read (a link to /dev/zero never ends); at most
    MAX_FILE_BYTES are read whatever the file claims its size is.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise AgentEnvError(f"{path}: no such file (was agent.env placed on the device?)") from None
    except OSError as exc:
        raise AgentEnvError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise AgentEnvError(f"{path}: is {kind}, not a regular file; agent.env must be a plain file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES and (chunk := os.read(fd, MAX_FILE_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise AgentEnvError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise AgentEnvError(f"{path}: larger than {MAX_FILE_BYTES} bytes; not an agent.env")
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AgentEnvError(f"{path}: cannot read: not UTF-8 text (byte {exc.start})") from None
    return parse_agent_env(text, str(path))


def write_agent_env(path: Path, text: str) -> None:
    """Write an agent.env where an operator or a flash step puts it.

    Mode 0600 from the first byte (the file holds a one-time init key), written under a temporary
    name and renamed, so a crash leaves the old file or the new one, never half of one.
    """
    write_atomic(Path(path), text, 0o600, durable=False)
