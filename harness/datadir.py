"""The files of a platform's data dir that other processes read: the operator token and the state.

The platform writes them; the operator library and the CLI read them to find a running platform
without being told its URL, so this module stays free of the server stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Where `fleetrig serve` keeps its data, and where the CLI looks for a platform, unless told.
DEFAULT_DATA_DIR = ".fleetrig"
STATE_FILE = "platform.json"
TOKEN_FILE = "operator.token"


def read_operator_token(data_dir: Path) -> str:
    return (Path(data_dir) / TOKEN_FILE).read_text().strip()


def read_state(data_dir: Path) -> dict[str, Any]:
    """The ports and URLs the platform saved at its last start; {} when it never started."""
    try:
        return json.loads((Path(data_dir) / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
