"""The privacy ledger: which DP mechanism ran on which dataset, and the ε it cost.

One row per (silo, dataset, study, round) holds the mechanism of that round (noise
multiplier, sample rate, steps, accountant) and the study's cumulative (ε, δ) after it, as
the study's accountant reported. Keeping the mechanism, not just ε, lets the silo's budget
check recompose the *total* spend on a dataset across all its studies with an accountant
(RDP / PRV composition, Mironov 2017) from :meth:`PrivacyLedger.history`; :meth:`spent`
gives the simpler sequential-composition bound (Dwork & Roth 2014, Thm. 3.16), the sum of
each study's latest ε. The ledger is the single source that budget check reads.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from pathlib import Path

from compliance import _sqlite
from compliance.durability import Durability
from compliance.errors import LedgerError

_SCHEMA = """CREATE TABLE IF NOT EXISTS ledger (
    silo TEXT NOT NULL, dataset TEXT NOT NULL, study TEXT NOT NULL, round INTEGER NOT NULL,
    epsilon REAL NOT NULL,            -- the study's cumulative epsilon after this round
    delta REAL NOT NULL,
    noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL,
    accountant TEXT NOT NULL, recorded_at TEXT NOT NULL,
    PRIMARY KEY (silo, dataset, study, round)
)"""
_COLUMNS = ("silo, dataset, study, round, epsilon, delta, noise_multiplier, sample_rate, steps, "
            "accountant, recorded_at")


@dataclass(frozen=True)
class LedgerRow:
    silo: str
    dataset: str
    study: str
    round: int
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    recorded_at: str

    def same_mechanism(self, other: LedgerRow) -> bool:
        return astuple(self)[:-1] == astuple(other)[:-1]


class PrivacyLedger:
    """ε spent per silo, dataset, study and round, in SQLite (thread- and process-safe)."""

    def __init__(self, path: Path, *, durability: Durability = Durability.POWER_LOSS) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        problem = _sqlite.file_problem(self.path)
        if problem:
            raise LedgerError(f"privacy ledger {self.path} {problem}; restore it from backup. Starting an "
                              "empty ledger would forget the privacy budget already spent")
        try:
            self._conn = _sqlite.connect(self.path, durability=durability)
            self._conn.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a readable privacy ledger ({exc})") from exc

    def record(self, *, silo: str, dataset: str, study: str, round: int, epsilon: float,
               delta: float, noise_multiplier: float, sample_rate: float, steps: int,
               accountant: str) -> LedgerRow:
        """Store one round's mechanism and the study's cumulative (ε, δ) after it.

        Recording the same round again with identical values is a no-op (a retried
        write); different values for a recorded round, a round older than the latest, or
        a cumulative ε lower than the last one are refused.
        """
        row = LedgerRow(silo, dataset, study, int(round), float(epsilon), float(delta),
                        float(noise_multiplier), float(sample_rate), int(steps), accountant,
                        datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"))
        _validate(row)
        where = f"silo {silo!r}, dataset {dataset!r}, study {study!r}"
        with self._lock, _sqlite.immediate(self._conn) as conn:
            last = conn.execute(
                f"SELECT {_COLUMNS} FROM ledger WHERE silo=? AND dataset=? AND study=? "
                "ORDER BY round DESC LIMIT 1", (silo, dataset, study)).fetchone()
            same = conn.execute(
                f"SELECT {_COLUMNS} FROM ledger WHERE silo=? AND dataset=? AND study=? AND round=?",
                (silo, dataset, study, row.round)).fetchone()
            if same is not None:
                if LedgerRow(*same).same_mechanism(row):
                    return LedgerRow(*same)
                raise LedgerError(f"round {row.round} of {where} is already recorded with "
                                  f"different values ({LedgerRow(*same)}); ledger rows are final")
            if last is not None:
                last = LedgerRow(*last)
                if row.round < last.round:
                    raise LedgerError(f"round {row.round} of {where} is older than the latest "
                                      f"recorded round {last.round}")
                if row.epsilon < last.epsilon:
                    raise LedgerError(
                        f"round {row.round} of {where}: cumulative epsilon {row.epsilon} is lower "
                        f"than {last.epsilon} recorded at round {last.round}; pass the study's "
                        "cumulative epsilon, not the round's own")
            conn.execute(f"INSERT INTO ledger ({_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                         astuple(row))
        return row

    def history(self, dataset: str, *, silo: str | None = None) -> list[LedgerRow]:
        """Every round run on ``dataset`` (all studies), oldest first, to recompose ε."""
        return self._select("dataset = ?", (dataset,), silo)

    def rows(self, study: str | None = None, *, silo: str | None = None) -> list[LedgerRow]:
        if study is None:
            return self._select("1", (), silo)
        return self._select("study = ?", (study,), silo)

    def spent(self, *, dataset: str, study: str | None = None, silo: str | None = None) -> float:
        """Cumulative ε on ``dataset``: one study's latest, or the sum of every study's latest."""
        latest: dict[tuple[str, str], float] = {}
        for row in self.history(dataset, silo=silo):
            if study is None or row.study == study:
                latest[(row.silo, row.study)] = row.epsilon  # rows come oldest first
        return math.fsum(latest.values())

    def close(self) -> None:
        with self._lock:
            _sqlite.close(self._conn)

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _select(self, where: str, args: tuple, silo: str | None) -> list[LedgerRow]:
        if silo is not None:
            where, args = f"{where} AND silo = ?", (*args, silo)
        with self._lock:
            cur = self._conn.execute(
                f"SELECT {_COLUMNS} FROM ledger WHERE {where} "
                "ORDER BY rowid", args)  # insertion order
            return [LedgerRow(*r) for r in cur.fetchall()]


def _validate(row: LedgerRow) -> None:
    problems = []
    for name in ("silo", "dataset", "study", "accountant"):
        if not isinstance(getattr(row, name), str) or not getattr(row, name):
            problems.append(f"{name} must be a non-empty string")
    if row.round < 0:
        problems.append(f"round must be >= 0, got {row.round}")
    if not (math.isfinite(row.epsilon) and row.epsilon >= 0):
        problems.append(f"epsilon must be finite and >= 0, got {row.epsilon}")
    if not (0 <= row.delta < 1):
        problems.append(f"delta must be in [0, 1), got {row.delta}")
    if not (math.isfinite(row.noise_multiplier) and row.noise_multiplier >= 0):
        problems.append(f"noise_multiplier must be finite and >= 0, got {row.noise_multiplier}")
    if not (0 < row.sample_rate <= 1):
        problems.append(f"sample_rate must be in (0, 1], got {row.sample_rate}")
    if row.steps < 0:
        problems.append(f"steps must be >= 0, got {row.steps}")
    if problems:
        raise LedgerError("privacy ledger row refused: " + "; ".join(problems))
