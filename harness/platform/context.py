"""What the platform's operations share: registry, identity table, CA, and the broker's reach."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.platform.db import Registry
from harness.platform.identities import Identities
from harness.platform.pki import CertificateAuthority


def _no_broker(serial: str, only_role: str | None = None) -> None:
    """Used when the operations run without a live broker (offline tools, tests of the registry)."""


@dataclass
class PlatformContext:
    registry: Registry
    identities: Identities
    ca: CertificateAuthority
    #: The broker URL written into agent.env files (mqtts://host:port).
    broker_url: str
    #: Close a device's live broker session, from any thread; `only_role` limits it to one kind.
    drop_session: Callable[..., None] = _no_broker
    #: The package repository's base URL written into agent.env (https://host:port/repo/).
    repo_url: str | None = None
