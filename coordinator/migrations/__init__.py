"""Alembic migrations of the coordinator's store (`coordinator/store.py`).

`coordinator.store.open_engine` runs `upgrade head` on every start, so operators never run
this by hand. Contributors who change a model add a revision:

    python -m coordinator.migrations --database state/coordinator.sqlite \\
        revision --autogenerate -m "what changed"

and check the generated file (SQLite needs batch operations for ALTER; `env.py` turns
them on). `tests/coordinator/test_store.py` fails while the models and the newest
revision disagree, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

# Alembic announces each of its plugins at INFO when it is imported; the coordinator's log
# keeps the "Running upgrade ..." lines only.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic.config import Config  # noqa: E402 - after quieting its import-time logging

FIRST_REVISION = "0001"


def alembic_config(connection: Any = None, *, url: str | None = None) -> Config:
    """A Config without an alembic.ini: the scripts live next to this file.

    Pass an open `connection` to migrate inside the caller's transaction (what
    `open_engine` does), or a `url` for the command line.
    """
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config
