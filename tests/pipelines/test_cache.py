"""The ingestion cache's own contract: entries round-trip exactly, only numeric arrays go in or come out, a copy
handed to another process opens its own database, and a write that fails leaves ingestion going."""

from __future__ import annotations

import multiprocessing
import pickle
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from pipelines.cache import CACHE_FILE, IngestCache


def test_entries_round_trip_with_their_dtypes_and_shapes(tmp_path: Path) -> None:
    cache = IngestCache(tmp_path, "cohort-a")
    arrays = {"image": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "mask": np.array([True, False]),
              "counts": np.array([[1, -2]], dtype=np.int64), "empty": np.zeros((0, 5), np.float64),
              "scalar": np.array(3.5), "strided": np.arange(10, dtype=np.int16)[::3]}
    cache.put("image", "k1", {"slices": 3, "uid": "é"}, arrays)
    cache.put("fhir", "k1", {"records": 2})  # another kind, same key
    cache.commit()
    for made in tmp_path.iterdir():  # de-identified, yet the node's own: readable by its owner only
        assert made.stat().st_mode & 0o077 == 0, made
    meta, got = cache.get("image", "k1")
    assert meta == {"slices": 3, "uid": "é"} and list(got) == list(arrays)
    for name, value in arrays.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape and np.array_equal(got[name], value)
    got["image"][0, 0, 0] = -1  # writable, as np.load's arrays were
    assert cache.get("fhir", "k1") == ({"records": 2}, {}) and cache.meta("image", "k1") == meta
    assert cache.has("image", "k1") and not cache.has("image", "k2") and cache.get("image", "k2") is None
    assert not IngestCache(tmp_path, "cohort-b").has("image", "k1")  # another cohort: another entry
    cache.put("image", "k1", {"slices": 1}, {"image": np.ones(2, np.float32)})  # replaced, not added
    assert cache.get("image", "k1")[0] == {"slices": 1} and cache.hits == 3
    cache.put("fhir", "k3", {"records": 3})
    del cache  # pending puts are committed when a cache is collected, as by close()
    assert IngestCache(tmp_path, "cohort-a").get("fhir", "k3") == ({"records": 3}, {})


def test_only_numeric_arrays_are_stored(tmp_path: Path) -> None:
    cache = IngestCache(tmp_path, "c")
    with pytest.raises(TypeError, match="numeric arrays only"):
        cache.put("image", "k", {}, {"names": np.array(["a", "b"], dtype=object)})
    assert not cache.has("image", "k")


def test_disabled_cache_stores_nothing(tmp_path: Path) -> None:
    cache = IngestCache(None, "")
    cache.put("fhir", "k", {"records": 1})
    assert not cache.has("fhir", "k") and cache.get("fhir", "k") is None and cache.path is None


def _put_from_a_copy(cache: IngestCache) -> None:
    with cache:  # committed when closed
        cache.put("fhir", "from-worker", {"pid": "other"})


def test_a_copy_in_another_process_writes_the_same_database(tmp_path: Path) -> None:
    cache = IngestCache(tmp_path, "c")
    cache.put("fhir", "here", {"pid": "this"})
    cache.commit()  # (a pending put holds the write lock)
    context = multiprocessing.get_context("forkserver")
    proc = context.Process(target=_put_from_a_copy, args=(pickle.loads(pickle.dumps(cache)),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert cache.get("fhir", "from-worker") == ({"pid": "other"}, {}) and cache.has("fhir", "here")


def test_a_write_that_fails_is_logged_and_ingestion_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with IngestCache(tmp_path, "c") as cache:
        cache.put("fhir", "a", {"n": 1})
    blocked = IngestCache(tmp_path, "c")
    assert blocked.has("fhir", "a")
    blocked._connection().execute("PRAGMA busy_timeout = 0")  # do not wait the minute a node waits
    other = sqlite3.connect(tmp_path / CACHE_FILE, timeout=0, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the database
    try:
        blocked.put("fhir", "b", {"n": 2})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert "could not write to the ingestion cache" in caplog.text and "database is locked" in caplog.text
    blocked.put("fhir", "c", {"n": 3})  # and the next put is written
    blocked.close()
    with IngestCache(tmp_path, "c") as cache:
        assert cache.get("fhir", "a") == ({"n": 1}, {}) and not cache.has("fhir", "b") and cache.has("fhir", "c")


def test_a_cache_folder_that_cannot_be_made_warns_once_and_caches_nothing(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    cache = IngestCache(blocked, "c")
    for k in range(3):
        cache.put("fhir", f"k{k}", {"n": k})
    assert not cache.has("fhir", "k0") and cache.get("fhir", "k0") is None
    warnings = [r.getMessage() for r in caplog.records if "ingestion cache" in r.getMessage()]
    assert len(warnings) == 2 and "could not write to" in warnings[0] and "could not read" in warnings[1], warnings
