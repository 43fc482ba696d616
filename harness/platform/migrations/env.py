"""Alembic's environment for the registry: it runs on the connection the platform hands over.

There is no alembic.ini: `harness.platform.migrations.upgrade` builds the configuration in code
and passes its open connection in `config.attributes["connection"]`, so the migrations run with
the platform's own URL and inside the transaction it opened.
"""

from __future__ import annotations

from alembic import context

from harness.platform.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the registry's migrations through harness.platform.migrations.upgrade")

# SQLite cannot ALTER most of a table: batch mode copies it to a new table instead.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
