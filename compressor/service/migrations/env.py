"""Alembic's environment: migrations run on the connection `compressor.service.migrations` hands over."""

from __future__ import annotations

from alembic import context

from compressor.service.store import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through compressor.service.migrations
    raise RuntimeError("run migrations through compressor.service.migrations.upgrade(engine)")
# render_as_batch: SQLite alters a table by copying it; the same migrations run on PostgreSQL unchanged
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
