"""What the broker asks of whoever knows the devices' credentials (the platform's registry).

The broker imports nothing of the platform: the platform passes an object with these methods
(harness.platform.identities.Identities) into the broker's configuration. The checks are
synchronous and in memory because the broker runs them on its event loop, hundreds per second.
"""

from __future__ import annotations

from typing import Protocol


class Authenticator(Protocol):
    def init_key_hash(self, serial: str, key: str) -> str | None:
        """The registry's reference of `key` if it is `serial`'s live init key, else None."""

    def token_ok(self, serial: str, token: str) -> bool:
        """True if `token` is `serial`'s live token and the device logs in with tokens."""

    def certificate_ok(self, serial: str, der: bytes) -> bool:
        """True if `der` is `serial`'s current certificate and the device logs in with certificates."""

    def auth_mode(self, serial: str) -> str | None:
        """The credential kind `serial` was provisioned with (wire.AUTH_*), None if unknown."""
