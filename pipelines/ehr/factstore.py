"""The silo's EHR facts, spilled to an on-disk SQLite file so memory does not grow with the hospital.

Readers (`pipelines.ehr.fhir`, `pipelines.ehr.tabular`) add de-identified facts as they stream
through their inputs: patients (pseudonym, age, gender), the reference tokens that name a
patient (FHIR `Patient/123`, `urn:uuid:...`, an OMOP `person_id`), and events that point at a
patient either by pseudonym or by a reference token, because a FHIR Observation or an OMOP
measurement row may come before its patient. `resolve` then joins references to patients once
all inputs are read (refusing events whose patient is unknown) and `patients()` hands the
facts back one patient at a time, so only one patient's history is ever in memory.

Only de-identified values are stored (pseudonyms, keyed reference tokens, days relative to
the index date); `source` names the local file and record, for quarantine messages. The file
lives in a private temporary folder and is deleted by `close`.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FhirError, InputError
from ..quarantine import Quarantine

log = logging.getLogger(__name__)
Codes = tuple[tuple[str, str], ...]
#: An event: (kind, codes, value, unit, day, source); kinds are the `KIND_*` constants
KIND_MEASUREMENT, KIND_DIAGNOSIS, KIND_IMAGING_STUDY = "m", "d", "i"
KIND_LABEL = "l"  # a label read from a table column (value 0/1, the study's rule already applied)
KIND_INDEX = "x"  # the patient's index date read from a table column (its day)
Event = tuple[str, Codes, float, str | None, int, str]

_SCHEMA = """
CREATE TABLE patients (pid TEXT PRIMARY KEY, age REAL, gender TEXT);
CREATE TABLE refs (ref TEXT PRIMARY KEY, pid TEXT NOT NULL);
CREATE TABLE events (pid TEXT, ref TEXT, kind TEXT NOT NULL, codes TEXT NOT NULL, value REAL NOT NULL,
                     unit TEXT, day INTEGER NOT NULL, source TEXT NOT NULL);
CREATE TABLE concepts (concept_id INTEGER PRIMARY KEY, vocabulary_id TEXT NOT NULL, concept_code TEXT NOT NULL);
CREATE TABLE segments (pid TEXT, ref TEXT, channel TEXT NOT NULL, start REAL NOT NULL, period REAL NOT NULL,
                       n INTEGER NOT NULL, samples BLOB NOT NULL, source TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Measurement:
    codes: Codes  # (system, code), aliases already mapped
    value: float
    unit: str | None
    day: int  # days after the index date (negative: before)
    source: str  # "file#Observation/id" or "file#row=17"


@dataclass(frozen=True)
class Diagnosis:
    codes: Codes
    day: int
    source: str


@dataclass
class EhrPatient:
    """One patient's de-identified EHR facts, from FHIR and tabular extracts alike."""

    pseudonym: str
    age: float | None  # years at the index date, capped at 90
    gender: str | None
    measurements: list[Measurement] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)  # remapped StudyInstanceUIDs from ImagingStudy
    labels: list[tuple[int, float]] = field(default_factory=list)  # (day, 0/1) from a table's label column
    index_days: list[int] = field(default_factory=list)  # from a table's index date column

    def shifted(self, days: int) -> "EhrPatient":
        """The same facts with days counted from `days` after the reference date (a per-patient index date)."""
        if days == 0:
            return self
        return EhrPatient(self.pseudonym, self.age, self.gender,
                          [Measurement(m.codes, m.value, m.unit, m.day - days, m.source) for m in self.measurements],
                          [Diagnosis(d.codes, d.day - days, d.source) for d in self.diagnoses], set(self.studies),
                          [(d - days, v) for d, v in self.labels], [d - days for d in self.index_days])


# An event's codes are stored as JSON text. A hospital's events use a few thousand distinct codes, so each is
# encoded and decoded once (encoding every event's codes was a third of merging a worker's facts).
@functools.lru_cache(maxsize=1 << 16)
def codes_text(codes: Codes) -> str:
    """An event's codes as stored (JSON text); the same text object for the same codes."""
    return json.dumps(codes)


@functools.lru_cache(maxsize=1 << 16)
def _codes_of(text: str) -> Codes:
    return tuple(tuple(x) for x in json.loads(text))


class FactStore:
    """Append facts while reading, `resolve` once, then read back patient by patient."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir: Path | None = Path(tempfile.mkdtemp(prefix="fedcare-facts-", dir=directory))
        self.path = self._dir / "facts.sqlite"
        self._db = sqlite3.connect(self.path)
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-2000;" + _SCHEMA)
        self._resolved = False

    @classmethod
    def reader(cls, path: Path) -> "FactStore":
        """A read-only view of a resolved store's file (`path`), for a worker process: its `close` leaves the
        file to the store that made it."""
        store = cls.__new__(cls)
        store._dir, store.path = None, Path(path)
        store._db = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
        store._resolved = True
        return store

    # -- writing ---------------------------------------------------------------------------
    def add_patient(self, pid: str, age: float | None, gender: str | None, refs: Iterable[str] = ()) -> None:
        """The first demographics seen for a pseudonym are kept (FHIR is read before tabular extracts)."""
        self._db.execute("INSERT OR IGNORE INTO patients VALUES (?, ?, ?)", (pid, age, gender))
        self.add_refs(((r, pid) for r in refs))

    def add_refs(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO refs VALUES (?, ?)", pairs)

    def add_events(self, rows: Iterable[tuple[str | None, str | None, Event]]) -> None:
        """`(pid, ref, event)`: exactly one of pid (a pseudonym) and ref (a reference token) is set."""
        self.add_event_rows((pid, ref, kind, codes_text(codes), value, unit, day, source)
                            for pid, ref, (kind, codes, value, unit, day, source) in rows)

    def add_event_rows(self, rows: Iterable[tuple[str | None, str | None, str, str, float, str | None, int, str]]) -> None:
        """Events as the table holds them: `(pid, ref, kind, codes_text(codes), value, unit, day, source)`."""
        self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def add_segment(self, ref: str, channel: str, start: float, period: float, samples: bytes, n: int,
                    source: str) -> None:
        """A stretch of one wearable channel (float64 samples, `start` in seconds relative to the index cut-off)."""
        self._db.execute("INSERT INTO segments VALUES (NULL, ?, ?, ?, ?, ?, ?, ?)",
                         (ref, channel, start, period, n, samples, source))

    def add_concepts(self, rows: Iterable[tuple[int, str, str]]) -> None:
        """OMOP CONCEPT rows (concept_id, vocabulary_id, concept_code), kept on disk, not in memory."""
        self._db.executemany("INSERT OR REPLACE INTO concepts VALUES (?, ?, ?)", rows)

    def concepts(self, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
        """concept_id -> (vocabulary_id, concept_code) for the ids that the CONCEPT tables read so far hold."""
        ids, out = sorted(set(ids)), {}
        for i in range(0, len(ids), 900):  # below SQLite's bound-parameter limit
            part = ids[i:i + 900]
            out.update({cid: (v, c) for cid, v, c in self._db.execute(
                f"SELECT concept_id, vocabulary_id, concept_code FROM concepts WHERE concept_id IN ({','.join('?' * len(part))})",
                part)})
        return out

    def has_concepts(self) -> bool:
        return self._db.execute("SELECT 1 FROM concepts LIMIT 1").fetchone() is not None

    # -- resolving -------------------------------------------------------------------------
    def resolve(self, quarantine: Quarantine) -> None:
        """Point every event at its patient; quarantine events whose patient is in no input."""
        db = self._db
        for table in ("events", "segments"):
            db.execute(f"UPDATE {table} SET pid = (SELECT pid FROM refs WHERE refs.ref = {table}.ref) WHERE pid IS NULL")
            modality = "ehr" if table == "events" else "signal"
            orphans = 0
            for (source,) in db.execute(f"SELECT source FROM {table} WHERE pid IS NULL"):
                orphans += 1
                quarantine.add(modality, FhirError("refers to a subject that is no Patient in the inputs; include the "
                                                   "patient's record", reason="unknown_subject", source=source))
            for (source,) in db.execute(f"SELECT source FROM {table} WHERE pid IS NOT NULL AND pid NOT IN "
                                        "(SELECT pid FROM patients)"):
                orphans += 1
                quarantine.add(modality, InputError(
                    "names a patient (by MRN) with no demographics in any input: no FHIR Patient and no tabular patient "
                    "row (OMOP person, or a row with birth_date). Include the patient's record", reason="unknown_patient",
                    source=source))
            if orphans:  # (a pass over every event, for nothing in the usual case)
                db.execute(f"DELETE FROM {table} WHERE pid IS NULL OR pid NOT IN (SELECT pid FROM patients)")
            db.execute(f"CREATE INDEX IF NOT EXISTS {table}_pid ON {table} (pid)")
        db.commit()
        self._resolved = True

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM patients").fetchone()[0])

    def pseudonyms(self) -> set[str]:
        return {pid for (pid,) in self._db.execute("SELECT pid FROM patients")}

    def study_owners(self) -> dict[str, str]:
        """Remapped StudyInstanceUID -> pseudonym, from ImagingStudy resources (first claim wins)."""
        self._require_resolved()
        out: dict[str, str] = {}
        for pid, codes in self._db.execute("SELECT pid, codes FROM events WHERE kind = ? ORDER BY rowid",
                                           (KIND_IMAGING_STUDY,)):
            out.setdefault(json.loads(codes)[0][0], pid)
        return out

    def patient(self, pid: str) -> EhrPatient | None:
        self._require_resolved()
        row = self._db.execute("SELECT pid, age, gender FROM patients WHERE pid = ?", (pid,)).fetchone()
        return None if row is None else self._load(*row)

    def patients(self, first: str | None = None, last: str | None = None) -> Iterator[EhrPatient]:
        """Every patient with its facts (those from `first` to `last` when given), in pseudonym order (no trace of
        MRN or file order)."""
        self._require_resolved()
        if first is None or last is None:
            rows = self._db.execute("SELECT pid, age, gender FROM patients ORDER BY pid").fetchall()
        else:
            rows = self._db.execute("SELECT pid, age, gender FROM patients WHERE pid BETWEEN ? AND ? ORDER BY pid",
                                    (first, last)).fetchall()
        for row in rows:
            yield self._load(*row)

    def segments(self) -> Iterator[tuple[str, list[tuple[str, float, float, int, bytes, str]]]]:
        """Per patient (pseudonym order): its wearable segments (channel, start, period, n, samples, source)."""
        self._require_resolved()
        current, rows = None, []
        for pid, *seg in self._db.execute("SELECT pid, channel, start, period, n, samples, source FROM segments "
                                          "ORDER BY pid, start"):
            if pid != current and rows:
                yield current, rows
                rows = []
            current = pid
            rows.append(tuple(seg))
        if rows:
            yield current, rows

    def _load(self, pid: str, age: float | None, gender: str | None) -> EhrPatient:
        p = EhrPatient(pid, age, gender)
        for kind, codes, value, unit, day, source in self._db.execute(
                "SELECT kind, codes, value, unit, day, source FROM events WHERE pid = ? ORDER BY rowid", (pid,)):
            c = _codes_of(codes)
            if kind == KIND_MEASUREMENT:
                p.measurements.append(Measurement(c, value, unit, day, source))
            elif kind == KIND_DIAGNOSIS:  # a diagnosis is a label candidate and, as presence (1.0), a feature
                p.diagnoses.append(Diagnosis(c, day, source))
                p.measurements.append(Measurement(c, 1.0, None, day, source))
            elif kind == KIND_LABEL:
                p.labels.append((day, value))
            elif kind == KIND_INDEX:
                p.index_days.append(day)
            else:
                p.studies.add(c[0][0])
        return p

    def _require_resolved(self) -> None:
        if not self._resolved:
            raise RuntimeError("FactStore.resolve() must run after all inputs are read and before facts are used")

    def close(self) -> None:
        self._db.close()
        if self._dir is not None:  # a reader's file is its maker's
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "FactStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
