"""The `fleetrig` console script: the operator CLI, which needs the `platform` extra.

`pip install fleetrig` alone installs the device agent (run it with `python -m agent`); the
CLI's libraries (typer, rich, FastAPI, SQLAlchemy, amqtt...) come with the extra. Without
them, one line says what to install instead of an ImportError traceback.
"""

from __future__ import annotations

import sys

INSTALL_HINT = "pip install 'fleetrig[platform]'"


def main() -> None:
    try:
        from harness.cli.main import main as cli_main
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("harness", "agent", "simulators"):
            raise  # a fault in fleetrig itself, not a missing extra
        print(f"fleetrig: error: the fleetrig command needs the platform extra ({exc.name} is not installed): "
              f"run {INSTALL_HINT}; the device agent alone runs as 'python -m agent'", file=sys.stderr)
        sys.exit(1)
    cli_main()


if __name__ == "__main__":
    main()
