"""Wearable recordings -> one normalised window per patient (the latest before the index date).

Each recording (CSV or WFDB, `pipelines.wearables.recordings`; FHIR valueSampledData, `pipelines.wearables.sampled`) is read once, its patient replaced by the
keyed pseudonym, windowed and normalised; the cache keeps the window with its end time
relative to the index date (no calendar time is stored).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np

from ..cache import IngestCache, content_hash
from ..cohort import CohortLike
from ..deid import Deidentifier
from ..errors import EXHAUSTION, SignalError, refusal
from ..limits import DEFAULT_LIMITS, IngestLimits
from ..ehr.factstore import FactStore
from ..quarantine import Quarantine
from ..rowfiles import RowFile
from .sampled import cutoff, sampled_window
from .recordings import read_recording, read_wfdb, record_bytes, wearable_files, window

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChosenSignal:
    values: np.ndarray | None  # float32 [C, L]; None once written to the dataset's row file
    coverage: float
    end: float  # seconds relative to the end of the index date (negative)
    source: str


class LatestWindows:
    """Per patient pseudonym, the latest window whatever its format (CSV, WFDB, FHIR valueSampledData).

    With `into` = (row by pseudonym, `RowFile` [N, C, L]) the values of a patient with a row are
    written to that row (a later window overwrites it) and kept nowhere else; values of patients
    without a row (excluded or unknown) are not kept. Without `into`, `chosen` holds the values.
    """

    def __init__(self, into: tuple[Mapping[str, int], RowFile] | None = None) -> None:
        self.chosen: dict[str, ChosenSignal] = {}
        self.superseded = 0  # windows set aside for a later one of the same patient
        self._into = into

    def offer(self, pid: str, found: ChosenSignal) -> None:
        old = self.chosen.get(pid)
        if old is not None:
            self.superseded += 1
            if old.end >= found.end:  # ties keep the first one read
                return
        if self._into is not None:
            row = self._into[0].get(pid)
            if row is not None and found.values is not None:
                self._into[1].write(row, found.values)
            found = replace(found, values=None)
        self.chosen[pid] = found


def read_signals(paths: Sequence[Path], *, cohort: CohortLike, deid: Deidentifier, index_date: date, cache: IngestCache,
                 quarantine: Quarantine, latest: LatestWindows, limits: IngestLimits = DEFAULT_LIMITS) -> Counter:
    """Offer each CSV/WFDB recording's window to `latest`; counters (inputs_read, records, parsed, cached,
    unused_after_index_date; superseded windows are counted by `latest`)."""
    channels = tuple(cohort.signal_channels)
    cutoff = datetime.combine(index_date + timedelta(days=1), time(), timezone.utc).timestamp()
    stats: Counter = Counter()
    for path in wearable_files(paths, quarantine):
        stats["inputs_read"] += 1
        try:
            digest = content_hash(record_bytes(path))
        except OSError as e:
            quarantine.add("signal", SignalError(f"cannot be read ({e})", reason="unreadable", source=path))
            continue
        hit = cache.get("signal", digest)
        if hit is not None:
            stats["cached"] += 1
            meta, arrays = hit
            found = None if meta["pseudonym"] is None else ChosenSignal(arrays["values"], meta["coverage"], meta["end"], str(path))
            pid = meta["pseudonym"]
        else:
            try:
                rec = read_wfdb(path, channels) if path.suffix.lower() == ".hea" else read_recording(path, channels, limits)
                w = window(rec, channels, rate_hz=cohort.signal_rate_hz, length=cohort.signal_length, index_date=index_date)
            except (SignalError, *EXHAUSTION) as e:  # one file never aborts the run
                quarantine.add("signal", refusal(e, path))
                continue
            stats["parsed"] += 1
            pid = deid.pseudonym(rec.patient_id)
            found = None if w is None else ChosenSignal(w.values, w.coverage, w.end - cutoff, str(path))
            cache.put("signal", digest, {"pseudonym": pid if found else None, "coverage": found.coverage if found else 0.0,
                                         "end": found.end if found else 0.0},
                      {"values": found.values} if found else {})
        stats["records"] += 1
        if found is None:
            stats["unused_after_index_date"] += 1
            continue
        latest.offer(pid, found)
    log.info("wearables: %d recordings, %d patients with a window", stats["records"], len(latest.chosen))
    return stats


def sampled_signals(store: FactStore, *, cohort: CohortLike, index_date: date, quarantine: Quarantine,
                    latest: LatestWindows) -> Counter:
    """Offer each patient's window cut from its FHIR valueSampledData segments (`pipelines.wearables.sampled`) to `latest`."""
    channels = tuple(cohort.signal_channels)
    zero = cutoff(index_date)
    stats: Counter = Counter()
    windows = 0
    for pid, segments in store.segments():
        stats["patients"] += 1
        try:
            w = sampled_window(segments, channels, rate_hz=cohort.signal_rate_hz, length=cohort.signal_length,
                               index_date=index_date)
        except SignalError as e:
            quarantine.add("signal", e)
            continue
        if w is None:
            stats["unused_after_index_date"] += 1
            continue
        windows += 1
        latest.offer(pid, ChosenSignal(w.values, w.coverage, w.end - zero, w.source))
    log.info("FHIR sampled data: %d patients with segments, %d with a window", stats["patients"], windows)
    return stats
