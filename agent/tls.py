"""TLS contexts shared between the agents of one process.

One context per platform CA serves every session that shows no client certificate
(registration with the init key, token authentication). Devices that authenticate with their
certificate share a second context per CA: each connection loads its device's certificate and
key into it and creates its TLS connection at once, under a lock (paho_compat.DeviceTlsContext).
A context costs ~25 KiB and ~0.5 ms to make; one per device was a third of a simulated
device's memory.
"""

from __future__ import annotations

import ssl
import threading

from agent import wire
from agent.paho_compat import DeviceTlsContext
from agent.state import Credentials


class TlsContexts:
    def __init__(self) -> None:
        self._by_ca: dict[str, ssl.SSLContext] = {}
        self._signing_by_ca: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _new(ca_pem: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=ca_pem)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def for_ca(self, ca_pem: str) -> ssl.SSLContext:
        ctx = self._by_ca.get(ca_pem)
        if ctx is None:
            ctx = self._by_ca[ca_pem] = self._new(ca_pem)
        return ctx

    def for_device(self, ca_pem: str, creds: Credentials) -> ssl.SSLContext:
        if creds.auth == wire.AUTH_TOKEN:
            return self.for_ca(ca_pem)
        shared = self._signing_by_ca.get(ca_pem)
        if shared is None:
            shared = self._signing_by_ca[ca_pem] = self._new(ca_pem)
        return DeviceTlsContext(shared, self._lock, str(creds.cert_path), str(creds.key_path))  # type: ignore[return-value]


SHARED_TLS = TlsContexts()
