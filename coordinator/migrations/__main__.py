"""`python -m coordinator.migrations --database URL-or-path <alembic command> ...`"""

from __future__ import annotations

import sys

from alembic.config import CommandLine

from coordinator.migrations import alembic_config


def main(argv: list[str] | None = None) -> None:
    cli = CommandLine(prog="python -m coordinator.migrations")
    cli.parser.add_argument("--database", required=True,
                            help="SQLAlchemy URL of the coordinator's store, or a path to its SQLite file")
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments: name an alembic command (upgrade, current, revision, ...)")
    url = options.database if "://" in options.database else f"sqlite:///{options.database}"
    cli.run_cmd(alembic_config(url=url), options)


if __name__ == "__main__":
    main(sys.argv[1:])
