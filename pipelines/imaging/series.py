"""DICOM instances grouped into series in an on-disk SQLite index, so the index does not grow memory with the PACS.

`pipelines.imaging.images` adds each instance's de-identified header (never pixels) as it streams
through the inputs, then asks for every (patient, series) with its latest day and size, and
for the members of the series it chose, in slice order. Only pseudonyms, remapped UIDs,
relative days and local paths are stored; the file lives in a private temporary folder that
`close` deletes.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .dicom import DicomHeader

_SCHEMA = """
CREATE TABLE instances (k INTEGER PRIMARY KEY, pid TEXT NOT NULL, series TEXT NOT NULL, day INTEGER, position REAL,
                        instance INTEGER NOT NULL, frames INTEGER NOT NULL, row_mm REAL NOT NULL, col_mm REAL NOT NULL,
                        digest TEXT NOT NULL, source TEXT NOT NULL, path TEXT, via_study INTEGER NOT NULL);
CREATE TABLE chosen (arrival INTEGER NOT NULL, pid TEXT NOT NULL, series TEXT NOT NULL, day INTEGER, size INTEGER NOT NULL,
                     first INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Member:
    """One instance of a series, as `pipelines.imaging.images` needs it to decode the chosen slice (or every slice)."""

    k: int  # the instance's position in the input stream
    day: int | None
    frames: int
    spacing: tuple[float, float]
    position: float | None  # along the slice normal, mm (None: the header has no ImagePositionPatient)
    digest: str
    source: str
    path: str | None  # a local file, or None for an input that only the caller can read again


@dataclass(frozen=True, slots=True)
class Series:
    pid: str
    uid: str
    day: int | None  # the latest day of its instances
    size: int  # instances
    first: int  # position of its first instance in the input stream


class SeriesIndex:
    """`add` instances; then `series()` per patient, `choose` one each, and read `chosen()` and their `members()`."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="fedcare-series-"))
        self._db = sqlite3.connect(self._dir / "series.sqlite")
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        self._indexed = False

    def add(self, k: int, header: DicomHeader, digest: str, source: str, path: Path | None, via_study: bool) -> None:
        self._db.execute("INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (k, header.pseudonym, header.series_uid, header.day, header.position, header.instance,
                          header.frames, header.spacing[0], header.spacing[1], digest, source,
                          None if path is None else str(path), int(via_study)))

    def _index(self) -> None:
        if not self._indexed:
            self._db.execute("CREATE INDEX instances_series ON instances (pid, series)")
            self._db.execute("CREATE INDEX instances_via ON instances (series) WHERE via_study = 1")
            self._indexed = True

    def __len__(self) -> int:
        """The number of (patient, series) groups."""
        return int(self._db.execute("SELECT count(*) FROM (SELECT 1 FROM instances GROUP BY pid, series)").fetchone()[0])

    def series(self) -> Iterator[Series]:
        """Every (patient, series), by patient, then in the order its first instance arrived."""
        self._index()
        for row in self._db.execute("SELECT pid, series, max(day), count(*), min(k) FROM instances GROUP BY pid, series "
                                    "ORDER BY pid, min(k)"):
            yield Series(*row)

    def choose(self, arrival: int, s: Series) -> None:
        """Keep `s` as its patient's series; `chosen()` returns the choices by `arrival`."""
        self._db.execute("INSERT INTO chosen VALUES (?, ?, ?, ?, ?, ?)", (arrival, s.pid, s.uid, s.day, s.size, s.first))

    def chosen(self) -> Iterator[Series]:
        for _, *row in self._db.execute("SELECT arrival, pid, series, day, size, first FROM chosen ORDER BY arrival, rowid"):
            yield Series(*row)

    def members(self, s: Series) -> list[Member]:
        """The instances of one series along the slice normal (then InstanceNumber, then arrival)."""
        self._index()
        return [Member(k, day, frames, (row_mm, col_mm), position, digest, source, path)
                for k, day, frames, row_mm, col_mm, position, digest, source, path in self._db.execute(
                    "SELECT k, day, frames, row_mm, col_mm, position, digest, source, path FROM instances WHERE pid = ? AND "
                    "series = ? ORDER BY coalesce(position, instance), instance, k", (s.pid, s.uid))]

    def via_study(self, series_uid: str) -> bool:
        """Whether an instance of this series was linked to its patient through a FHIR ImagingStudy."""
        self._index()
        return self._db.execute("SELECT 1 FROM instances WHERE series = ? AND via_study = 1 LIMIT 1",
                                (series_uid,)).fetchone() is not None

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "SeriesIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
