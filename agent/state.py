"""The agent's state directory: credentials and boot bookkeeping that survive a reboot.

On a real device this is /var/lib/fleetrig; a simulated device gets a directory of its own.
Every write goes to a temporary file that is renamed into place, so a power cut leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/fleetrig")
DEFAULT_ENV_FILE = Path("/etc/fleetrig/agent.env")


@dataclass(frozen=True)
class Credentials:
    """What registration gave the device: its key, its certificate and its token."""

    serial: str
    auth: str
    key_path: Path
    cert_path: Path
    token: str


def write_atomic(path: Path, data: str | bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new content.

    `durable` adds the fsync that survives a power cut of the machine itself; a simulated
    device, whose "power cut" never takes the host's page cache, does without.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, raw)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class StateDir:
    """Files the agent keeps between boots, in one directory."""

    def __init__(self, root: str | Path, *, durable: bool = True) -> None:
        self.root = Path(root)
        #: fsync every write (real devices); False for simulated ones, see write_atomic.
        self.durable = durable

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    @property
    def key_path(self) -> Path:
        return self.root / "device.key"

    @property
    def cert_path(self) -> Path:
        return self.root / "device.crt"

    @property
    def identity_path(self) -> Path:
        return self.root / "identity.json"

    def credentials(self) -> Credentials | None:
        """The stored credentials, or None if this device has not registered yet."""
        try:
            identity = json.loads(self.identity_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if not (self.key_path.exists() and self.cert_path.exists()):
            return None
        return Credentials(
            serial=str(identity.get("serial", "")),
            auth=str(identity.get("auth", "")),
            key_path=self.key_path,
            cert_path=self.cert_path,
            token=str(identity.get("token", "")),
        )

    def save_credentials(self, serial: str, auth: str, key_pem: str, cert_pem: str, token: str) -> Credentials:
        """Store what registration returned; identity.json is written last and marks completion."""
        self.ensure()
        write_atomic(self.key_path, key_pem, durable=self.durable)
        write_atomic(self.cert_path, cert_pem, 0o644, durable=self.durable)
        write_atomic(self.identity_path, json.dumps({"serial": serial, "auth": auth, "token": token}),
                     durable=self.durable)
        creds = self.credentials()
        assert creds is not None
        return creds

    def wipe_credentials(self) -> None:
        """Remove every credential (decommission): the device can never connect with them again."""
        for path in (self.identity_path, self.key_path, self.cert_path):
            path.unlink(missing_ok=True)

    def wipe(self) -> None:
        """Remove everything the device kept (decommission): credentials, configuration, downloads."""
        self.wipe_credentials()
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def next_boot(self) -> int:
        """Count boots; the number makes each boot's id unique across reboots."""
        self.ensure()
        path = self.root / "boot_count"
        try:
            count = int(path.read_text().strip() or 0) + 1
        except (FileNotFoundError, ValueError):
            count = 1
        write_atomic(path, str(count), 0o644, durable=self.durable)
        return count
