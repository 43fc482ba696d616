"""What the broker checks at CONNECT, kept in memory and in step with the registry.

The broker authenticates hundreds of connects per second; a database query for each would
block its event loop. So the platform loads every device's live credentials once, and each
operation that changes them (provision, reissue, register, dispose) updates this table right
after its transaction commits. Secrets are held as SHA-256 digests only.

`Identities` is the broker's harness.broker.authenticator.Authenticator: the broker imports
nothing of the platform, the platform hands it this table. Each device logs in only with the
credential kind it was provisioned for (`auth_mode`): registration issues a certificate and a
token to every device, and a certificate device's token must not open a session.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent import wire
from harness.platform.models import Credential, Device, InitKey
from harness.platform.pki import fingerprint_der


def digest(secret: str) -> str:
    """SHA-256 hex of a secret. The secrets are >= 128 random bits, so no slow KDF is needed."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    serial: str
    state: str
    init_key_hash: str | None = None
    cert_fingerprint: str | None = None
    token_hash: str | None = None
    #: The credential kind the device was provisioned for (wire.AUTH_*); None logs in with neither.
    auth_mode: str | None = None


class Identities:
    """Serial -> live credentials, shared by the broker (event loop) and the API (threads)."""

    def __init__(self) -> None:
        self._by_serial: dict[str, Identity] = {}
        self._lock = threading.Lock()

    def load(self, session: Session) -> int:
        table: dict[str, Identity] = {}
        creds = {
            row.device_id: row
            for row in session.execute(
                select(Credential.device_id, Credential.cert_fingerprint, Credential.token_hash,
                       Credential.first_used_at).where(Credential.revoked_at.is_(None))
            )
        }
        # A key is live until the device has connected with the credential it obtained.
        keys = {
            device_id: key_hash
            for device_id, key_hash, used_at in session.execute(
                select(InitKey.device_id, InitKey.key_hash, InitKey.used_at).where(InitKey.revoked_at.is_(None))
            )
            if used_at is None or (device_id in creds and creds[device_id].first_used_at is None)
        }
        for device_id, serial, state, auth_mode in session.execute(
            select(Device.id, Device.serial, Device.state, Device.auth_mode)
        ):
            cred = creds.get(device_id)
            table[serial] = Identity(
                serial=serial,
                state=state,
                auth_mode=auth_mode,
                init_key_hash=keys.get(device_id),
                cert_fingerprint=cred.cert_fingerprint if cred else None,
                token_hash=cred.token_hash if cred else None,
            )
        with self._lock:
            self._by_serial = table
        return len(table)

    def get(self, serial: str) -> Identity | None:
        return self._by_serial.get(serial)

    def put(self, identity: Identity) -> None:
        with self._lock:
            self._by_serial[identity.serial] = identity

    def update(self, serial: str, **changes: object) -> None:
        with self._lock:
            current = self._by_serial.get(serial)
            if current is not None:
                self._by_serial[serial] = Identity(**{**current.__dict__, **changes})  # type: ignore[arg-type]

    def remove(self, serial: str) -> None:
        with self._lock:
            self._by_serial.pop(serial, None)

    def __len__(self) -> int:
        return len(self._by_serial)

    # The broker's Authenticator (harness.broker.authenticator).

    def init_key_hash(self, serial: str, key: str) -> str | None:
        ident = self._by_serial.get(serial)
        if ident and ident.init_key_hash and hmac.compare_digest(ident.init_key_hash, digest(key)):
            return ident.init_key_hash
        return None

    def token_ok(self, serial: str, token: str) -> bool:
        ident = self._by_serial.get(serial)
        return bool(ident and ident.auth_mode == wire.AUTH_TOKEN and ident.token_hash
                    and hmac.compare_digest(ident.token_hash, digest(token)))

    def certificate_ok(self, serial: str, der: bytes) -> bool:
        ident = self._by_serial.get(serial)
        return bool(ident and ident.auth_mode == wire.AUTH_X509 and ident.cert_fingerprint
                    and hmac.compare_digest(ident.cert_fingerprint, fingerprint_der(der)))

    def auth_mode(self, serial: str) -> str | None:
        ident = self._by_serial.get(serial)
        return ident.auth_mode if ident else None
