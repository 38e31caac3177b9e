"""The silo's ingestion cache: de-identified results per input, keyed by content and cohort.

An entry is `<root>/<kind>/<content hash[:2]>/<content hash>-<cohort hash>.npz` holding
numpy arrays and a JSON `meta` string (no pickles, so a tampered cache cannot run code).
The content hash is SHA-256 of the input's bytes, so a renamed file is still a hit and a
changed file is a miss; the cohort hash covers the cohort fields (image_dims and image_depth
among them, so 2D slices and 3D volumes never share an entry), the index date, the
pseudonym-key fingerprint and `VERSION`, so a new study or key re-parses. Only what
ingestion produced after de-identification is stored: pseudonyms, relative days, tensors.
Inputs that were quarantined are not cached: they are re-read (and re-reported) each run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
# 2: image_dims/image_depth in the cohort hash, volumes cached; 3: labels, index dates, categories; 4: Encounter facts;
# 5: wearable windows carry their recording's hours
VERSION = 5


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
    """`get`/`put` de-identified ingestion results; `root=None` disables caching."""

    def __init__(self, root: Path | None, spec_hash: str) -> None:
        self.root = Path(root) if root is not None else None
        self.spec_hash = spec_hash
        self.hits = 0

    def _path(self, kind: str, key: str) -> Path:
        assert self.root is not None
        return self.root / kind / key[:2] / f"{key}-{self.spec_hash}.npz"

    def has(self, kind: str, key: str) -> bool:
        """Whether an entry is stored, without reading it: readers list their inputs by this and `get` each entry
        once, when they merge it (an entry found damaged then is a miss, and its input is parsed)."""
        return self.root is not None and self._path(kind, key).is_file()

    def get(self, kind: str, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The entry's meta and arrays, or None (not stored, or damaged: a miss, never an error)."""
        got = self._read(kind, key, arrays=True)
        if got is not None:
            self.hits += 1
        return got

    def meta(self, kind: str, key: str) -> dict[str, Any] | None:
        """Only the entry's meta (an .npz member is read only when asked for), or None as `get`: for a reader that
        must look inside an entry to list its input, and reads the whole entry once, when it merges it."""
        got = self._read(kind, key, arrays=False)
        return None if got is None else got[0]

    def _read(self, kind: str, key: str, *, arrays: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        if self.root is None:
            return None
        path = self._path(kind, key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                values = {k: z[k] for k in z.files if k != "meta"} if arrays else {}
                meta = json.loads(str(z["meta"]))
        except (OSError, ValueError, KeyError) as e:  # a damaged entry is a miss, never an error
            log.warning("cache entry %s is unreadable (%s); re-parsing the input", path, e)
            return None
        return meta, values

    def put(self, kind: str, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        if self.root is None:
            return
        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:  # write then rename: a crash never leaves half an entry
            np.savez(f, meta=np.array(json.dumps(meta)), **(arrays or {}))
        os.replace(tmp, path)
