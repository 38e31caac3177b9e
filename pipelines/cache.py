"""The silo's ingestion cache: de-identified results per input, keyed by content and cohort.

Entries live in one SQLite file, `<root>/entries.sqlite`, a row per (kind, key, cohort hash)
holding a JSON `meta` string and numpy arrays as raw bytes with their dtype and shape (no
pickles, so a tampered cache cannot run code; only numeric dtypes are read back). The key is
the SHA-256 of the input's bytes, so a renamed file is still a hit and a changed file is a
miss; the cohort hash covers the cohort fields (image_dims and image_depth among them, so 2D
slices and 3D volumes never share an entry), the index date, the pseudonym-key fingerprint and
`VERSION`, so a new study or key re-parses. Only what ingestion produced after
de-identification is stored: pseudonyms, relative days, tensors. Inputs that were quarantined
are not cached: they are re-read (and re-reported) each run.

One file, not a file per entry: creating and renaming a small file per input cost the node's
process about 0.4 ms each (a third of a two-worker ingestion's serial work); a row in WAL mode
costs a tenth of that. The cache only saves work: an entry that cannot be read is a miss, a
write that fails is logged and skipped, and a file that is no database (or a damaged one) is
set aside and started anew, never an error that stops ingestion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
# 2: image_dims/image_depth in the cohort hash, volumes cached; 3: labels, index dates, categories; 4: Encounter facts;
# 5: wearable windows carry their recording's hours; 6: one SQLite file instead of an .npz per entry
VERSION = 6
CACHE_FILE = "entries.sqlite"
#: Puts are committed together, every COMMIT_EVERY or after COMMIT_AFTER_S (and when the cache is closed or collected):
#: a commit per put was half of a put's cost. A crash loses at most these entries (misses next time, never damage).
COMMIT_EVERY = 256
COMMIT_AFTER_S = 1.0
#: dtype kinds an entry's arrays may have: bool, integers, floats, complex (never objects)
_NUMERIC_KINDS = frozenset("biufc")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (kind TEXT NOT NULL, key TEXT NOT NULL, spec TEXT NOT NULL, meta TEXT NOT NULL,
                                    layout TEXT NOT NULL, arrays BLOB NOT NULL, PRIMARY KEY (kind, key, spec));
"""


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hash(path: Path, block: int = 1 << 20) -> str:
    """SHA-256 of a file, read block by block (an export may not fit in memory); equals `content_hash` of its bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while data := f.read(block):
            h.update(data)
    return h.hexdigest()


def cohort_hash(cohort: Any, index_date: date, key_fingerprint: str) -> str:
    fields = ("label_system", "label_code", "label_window_days", "label_source", "label_column", "label_above",
              "label_values", "exclude_prevalent", "index_from", "index_column", "index_system", "index_code", "min_age",
              "image_size", "image_dims", "image_depth", "signal_channels", "signal_rate_hz", "signal_length")
    spec = {f: getattr(cohort, f) for f in fields}
    spec["features"] = [{k: getattr(f, k) for k in ("name", "system", "code", "unit", "aggregate", "window_days",
                                                    "categories", "reference")}
                        for f in cohort.features]
    spec.update(index_date=index_date.isoformat(), key=key_fingerprint, version=VERSION)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:24]


class IngestCache:
    """`get`/`put` de-identified ingestion results; `root=None` disables caching.

    The database is opened on first use, once per process (a copy handed to another process opens its own). Puts
    are committed in groups (COMMIT_EVERY, COMMIT_AFTER_S), by `commit` (ingestion commits after each step) and
    `close`, and when the cache is garbage-collected; another ingestion on the same folder waits for the write lock
    meanwhile (up to a minute, then its put is skipped with a warning)."""

    def __init__(self, root: Path | None, spec_hash: str) -> None:
        self.root = Path(root) if root is not None else None
        self.spec_hash = spec_hash
        self.hits = 0
        self._db: sqlite3.Connection | None = None
        self._closer: weakref.finalize | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._pending, self._since = 0, 0.0  # puts not yet committed, since when
        self._warned: set[str] = set()  # errors already logged: a cache that cannot be written warns once, not per input

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "spec_hash": self.spec_hash, "hits": self.hits}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["spec_hash"])  # type: ignore[misc]
        self.hits = state["hits"]

    @property
    def path(self) -> Path | None:
        """The database file, or None when caching is off."""
        return None if self.root is None else self.root / CACHE_FILE

    def has(self, kind: str, key: str) -> bool:
        """Whether an entry is stored, without reading it: readers list their inputs by this and `get` each entry
        once, when they merge it (an entry found damaged then is a miss, and its input is parsed)."""
        return self._query("SELECT 1 FROM entries WHERE kind = ? AND key = ? AND spec = ?", kind, key) is not None

    def get(self, kind: str, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The entry's meta and arrays, or None (not stored, or damaged: a miss, never an error)."""
        row = self._query("SELECT meta, layout, arrays FROM entries WHERE kind = ? AND key = ? AND spec = ?", kind, key)
        if row is None:
            return None
        try:
            got = json.loads(row[0]), _arrays(json.loads(row[1]), row[2])
        except (ValueError, TypeError, KeyError) as e:  # a damaged entry is a miss, never an error
            return self._unreadable(kind, key, e)
        self.hits += 1
        return got

    def meta(self, kind: str, key: str) -> dict[str, Any] | None:
        """Only the entry's meta (its arrays are not read), or None as `get`: for a reader that must look inside an
        entry to list its input, and reads the whole entry once, when it merges it."""
        row = self._query("SELECT meta FROM entries WHERE kind = ? AND key = ? AND spec = ?", kind, key)
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError as e:
            return self._unreadable(kind, key, e)

    def put(self, kind: str, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        if self.root is None:
            return
        layout, blob = _layout(arrays or {})
        self._execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                      (kind, key, self.spec_hash, json.dumps(meta), json.dumps(layout), blob))

    def __enter__(self) -> IngestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def commit(self) -> None:
        """Commit the pending puts now (ingestion does after each step), releasing the write lock."""
        with self._lock:
            if self._db is not None and self._pid == os.getpid() and self._db.in_transaction:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as e:
                    self._failed(e, "write to")

    def close(self) -> None:
        """Commit what is pending and close the database (opened again on next use)."""
        with self._lock:
            if self._closer is not None:
                self._closer()
            self._db, self._closer, self._pending = None, None, 0

    def _unreadable(self, kind: str, key: str, e: Exception) -> None:
        """A damaged entry: logged, and a miss (its input is parsed again and the entry replaced)."""
        log.warning("cache entry %s/%s in %s is unreadable (%s); re-parsing the input", kind, key, self.path, e)

    # -- the database --------------------------------------------------------------------------
    def _query(self, sql: str, kind: str, key: str) -> tuple | None:
        if self.root is None:
            return None
        with self._lock:
            try:
                return self._connection().execute(sql, (kind, key, self.spec_hash)).fetchone()
            except (sqlite3.Error, OSError) as e:
                self._failed(e, "read")
                return None

    def _execute(self, sql: str, params: tuple) -> None:
        with self._lock:
            try:
                db = self._connection()
                if not db.in_transaction:
                    db.execute("BEGIN")
                    self._pending, self._since = 0, time.monotonic()
                db.execute(sql, params)
                self._pending += 1
                if self._pending >= COMMIT_EVERY or time.monotonic() - self._since >= COMMIT_AFTER_S:
                    db.execute("COMMIT")
            except (sqlite3.Error, OSError) as e:  # the input was parsed; only its entry (or those pending with it) is not kept
                self._failed(e, "write to")

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # the owner's only, as its WAL (SQLite copies it)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=60, check_same_thread=False)
            try:
                db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + _SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db, self._pid = db, os.getpid()
            self._closer = weakref.finalize(self, _commit_and_close, db, self._pid)
        return self._db

    def _failed(self, e: sqlite3.Error | OSError, what: str) -> None:
        """A damaged database is set aside (and a new one started on next use); any other error is logged."""
        assert self.path is not None
        if getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            if self._closer is not None:
                self._closer()
            self._db, self._closer = None, None
            aside = self.path.with_name(f"{CACHE_FILE}.damaged")
            try:
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            except OSError as moved:
                self._warn_once(f"the ingestion cache {self.path} is damaged ({e}) and cannot be set aside ({moved}); "
                                "remove it")
                return
            log.warning("the ingestion cache %s is damaged (%s); set aside as %s, a new one is started and its inputs "
                        "are parsed again", self.path, e, aside)
            return
        self._warn_once(f"could not {what} the ingestion cache {self.path} ({e}); its inputs are parsed and not cached")

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning(message)


def _commit_and_close(db: sqlite3.Connection, pid: int) -> None:
    """A cache's database, closed with its pending puts committed (by `close`, or once the cache is collected); never
    from a forked child, which must not touch its parent's connection."""
    if os.getpid() != pid:
        return
    try:
        if db.in_transaction:
            db.execute("COMMIT")
    except sqlite3.Error as e:
        log.warning("could not write the last entries of the ingestion cache (%s); their inputs are parsed again next "
                    "time", e)
    finally:
        db.close()


def _layout(arrays: dict[str, np.ndarray]) -> tuple[list[tuple[str, str, list[int]]], bytes]:
    """Arrays as (name, dtype, shape) rows and their bytes, one after the other (C order)."""
    layout, parts = [], []
    for name, value in arrays.items():
        a = np.asarray(value)  # (not ascontiguousarray: it makes a 0-d array 1-d)
        if a.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"cache entries hold numeric arrays only; {name!r} has dtype {a.dtype}")
        layout.append((name, a.dtype.str, list(a.shape)))
        parts.append(a.tobytes(order="C"))
    return layout, b"".join(parts)


def _arrays(layout: list, blob: bytes) -> dict[str, np.ndarray]:
    """The arrays `_layout` stored; ValueError if the layout does not fit the bytes or names a non-numeric dtype."""
    out, offset = {}, 0
    for name, dtype_str, shape in layout:
        dtype = np.dtype(dtype_str)
        if dtype.kind not in _NUMERIC_KINDS:
            raise ValueError(f"array {name!r} has dtype {dtype}, not a numeric one")
        count = int(np.prod(shape, dtype=np.int64))
        size = count * dtype.itemsize
        if count < 0 or offset + size > len(blob):
            raise ValueError(f"array {name!r} of shape {shape} does not fit the entry's {len(blob)} bytes")
        out[str(name)] = np.frombuffer(blob, dtype, count, offset).reshape(tuple(shape)).copy()  # writable, as np.load's
        offset += size
    if offset != len(blob):
        raise ValueError(f"the entry holds {len(blob) - offset} bytes no array names")
    return out
