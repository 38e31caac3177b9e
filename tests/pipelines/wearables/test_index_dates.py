"""Wearable windows before each patient's own index date (cohort.index_from, #22), and the cache that keeps them."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
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


def test_fhir_sampled_data_before_the_patients_own_index_date():
    import numpy as np

    from coordinator.api.study import CohortSpec
    from pipelines.ehr.factstore import FactStore
    from pipelines.quarantine import Quarantine
    from pipelines.wearables.signals import LatestWindows, sampled_signals

    cohort = CohortSpec(signal_channels=("heart_rate",), signal_rate_hz=1.0, signal_length=16)
    with FactStore() as store:
        store.add_patient("p1", 50.0, "female", refs=["Patient/1"])
        start = 10 * 86400.0  # ten days after the end of the reference date
        store.add_segment("Patient/1", "heart_rate", start, 1.0, np.full(40, 72.0).tobytes(), 40, "obs.json")
        store.resolve(Quarantine())
        for days, windows in ((0, 0), (30, 1)):
            latest = LatestWindows()
            sampled_signals(store, cohort=cohort, index_date=date(2024, 1, 1), quarantine=Quarantine(), latest=latest,
                            index_days={"p1": days})
            assert len(latest.chosen) == windows
    assert latest.chosen["p1"].end == start + 39 - 30 * 86400.0  # from the end of the patient's own index date
