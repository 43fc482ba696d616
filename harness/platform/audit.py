"""The audit log: one row per change, naming who made it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from harness.platform.models import AuditEvent


def record(session: Session, actor: str, action: str, serial: str | None = None, **detail: Any) -> None:
    session.add(AuditEvent(actor=actor, action=action, serial=serial, detail=detail or None))
