"""Wearable windows before each patient's own index date (cohort.index_from, #22), and the cache that keeps them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path


def _csv(path: Path, start: datetime, n: int = 40) -> None:
    rows = [f"{(start + timedelta(seconds=i)).isoformat()},{70 + i % 5}" for i in range(n)]
    path.write_text("timestamp,heart_rate\n" + "\n".join(rows) + "\n")


def test_window_before_the_patients_own_index_date_and_cache_follows_it(tmp_path: Path, read):
    _csv(tmp_path / "MRN-I1.csv", datetime(2024, 2, 10, 8, 0, tzinfo=timezone.utc))  # after the reference date
    cache = tmp_path / "cache"
    fixed = read([tmp_path / "MRN-I1.csv"], length=16, mrns=("MRN-I1",), cache_dir=cache)
    assert fixed.windows == {} and fixed.stats["unused_after_index_date"] == 1
    own = read([tmp_path / "MRN-I1.csv"], length=16, mrns=("MRN-I1",), cache_dir=cache, index_days={"MRN-I1": 45})
    assert own.stats["cached"] == 0  # the patient's index date moved: cut again, not taken from the cache
    end = datetime(2024, 2, 10, 8, 0, 39, tzinfo=timezone.utc) - datetime(2024, 2, 16, tzinfo=timezone.utc)
    assert own.windows["MRN-I1"].end == end.total_seconds()  # counted from the end of the patient's own index date
    again = read([tmp_path / "MRN-I1.csv"], length=16, mrns=("MRN-I1",), cache_dir=cache, index_days={"MRN-I1": 45})
    assert again.stats["cached"] == 1 and again.windows["MRN-I1"].end == end.total_seconds()
