"""Alembic's entry point for the job store: runs on the connection that
:func:`service.store.upgrade` passes in (never from an alembic.ini)."""

from __future__ import annotations

from alembic import context

from service.store import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
