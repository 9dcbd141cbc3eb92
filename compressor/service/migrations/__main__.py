"""`python -m compressor.service.migrations revision "message"`: autogenerate the next migration from the models."""

from __future__ import annotations

import sys
import tempfile

from sqlalchemy import create_engine

from compressor.service.migrations import config, upgrade


def main(argv: list[str]) -> None:
    from alembic import command

    if len(argv) != 2 or argv[0] != "revision":
        raise SystemExit('usage: python -m compressor.service.migrations revision "what changed"')
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/scratch.db")
        upgrade(engine)
        with engine.begin() as connection:
            command.revision(config(connection), message=argv[1], autogenerate=True)


if __name__ == "__main__":
    main(sys.argv[1:])
