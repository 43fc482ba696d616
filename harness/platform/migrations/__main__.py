"""`python -m harness.platform.migrations "what changed"`: write the next revision from models.py.

Alembic compares models.py with a scratch SQLite registry built from every revision so far, and
writes what differs as versions/NNNN_what_changed.py. Review it: a new column on a table that has
rows may need a value for them (see 0003), and a rename comes out as a drop and an add.
"""

from __future__ import annotations

import sys
import tempfile

from alembic import command
from sqlalchemy import create_engine

from harness.platform.migrations import alembic_config, head, upgrade


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].strip():
        print('usage: python -m harness.platform.migrations "what changed"', file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/registry.sqlite3")
        upgrade(engine)
        with engine.begin() as connection:
            command.revision(alembic_config(connection), argv[0], autogenerate=True, rev_id=f"{int(head()) + 1:04d}")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
