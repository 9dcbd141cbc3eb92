"""The job store's schema history (Alembic). `upgrade(engine)` brings any store to the newest schema and runs on
every `compress serve` start, so a newer compressor keeps the jobs an older one stored.

A schema change is a new file in versions/: change the models in service/store.py, then (from the repository root)

    .venv/bin/python -m compressor.service.migrations revision "what changed"

which autogenerates it against a scratch database at the current head; review it, and
tests/test_service_store.py checks that models and migrations agree.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine, revision: str = "head") -> None:
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(config(connection), revision)


def current(engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def differences(engine) -> list:
    """What the models have that the migrated database lacks (or the reverse): empty when they agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from compressor.service.store import Base

    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)
