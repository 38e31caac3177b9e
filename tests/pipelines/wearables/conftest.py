"""Read wearable inputs the way ingestion does (`pipelines.wearables.signals.read_signals`), without EHR."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from coordinator.api.study import CohortSpec
from pipelines.cache import IngestCache
from pipelines.deid import Deidentifier
from pipelines.quarantine import Quarantine
from pipelines.wearables.mapping import WearableMapping, WearableNotes
from pipelines.wearables.signals import ChosenSignal, LatestWindows, read_signals

KEY = b"fedcare-test-pseudonym-key-32byt"


@dataclass
class WearableRead:
    windows: dict[str, ChosenSignal]  # by MRN (the test knows them), not pseudonym
    stats: Counter
    notes: WearableNotes
    quarantine: Quarantine

    def reasons(self) -> list[str]:
        return sorted(e.reason for e in self.quarantine.entries if e.modality == "signal")


def read_wearables(paths: list[Path], *, channels: tuple[str, ...] = ("heart_rate",), rate_hz: float = 1.0,
                   length: int = 16, index_date: date = date(2024, 1, 1), mrns: tuple[str, ...] = (),
                   mapping: WearableMapping = WearableMapping(), cache_dir: Path | None = None,
                   index_days: dict[str, int] | None = None) -> WearableRead:
    """`index_days`: by MRN, the patient's own index date in days after `index_date`."""
    cohort = CohortSpec(signal_channels=channels, signal_rate_hz=rate_hz, signal_length=length)
    deid = Deidentifier(KEY)
    latest, quarantine, notes = LatestWindows(), Quarantine(), WearableNotes()
    stats = read_signals(paths, cohort=cohort, deid=deid, index_date=index_date, cache=IngestCache(cache_dir, "t"),
                         quarantine=quarantine, latest=latest, mapping=mapping, notes=notes,
                         index_days={deid.pseudonym(m): d for m, d in (index_days or {}).items()})
    by_mrn = {m: latest.chosen[deid.pseudonym(m)] for m in mrns if deid.pseudonym(m) in latest.chosen}
    return WearableRead(by_mrn, stats, notes, quarantine)


@pytest.fixture
def read():
    return read_wearables
