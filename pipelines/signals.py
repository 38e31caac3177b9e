"""Wearable recordings -> one normalised window per patient (the latest before the index date).

Each recording (CSV or WFDB, `pipelines.wearables`; FHIR valueSampledData, `pipelines.sampled`) is read once, its patient replaced by the
keyed pseudonym, windowed and normalised; the cache keeps the window with its end time
relative to the index date (no calendar time is stored).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np

from .cache import IngestCache, content_hash
from .cohort import CohortLike
from .deid import Deidentifier
from .errors import SignalError
from .factstore import FactStore
from .quarantine import Quarantine
from .sampled import cutoff, sampled_window
from .wearables import read_recording, read_wfdb, record_bytes, wearable_files, window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChosenSignal:
    values: np.ndarray  # float32 [C, L]
    coverage: float
    end: float  # seconds relative to the end of the index date (negative)
    source: str


def read_signals(paths: Sequence[Path], *, cohort: CohortLike, deid: Deidentifier, index_date: date, cache: IngestCache,
                 quarantine: Quarantine) -> tuple[dict[str, ChosenSignal], Counter]:
    channels = tuple(cohort.signal_channels)
    cutoff = datetime.combine(index_date + timedelta(days=1), time(), timezone.utc).timestamp()
    stats: Counter = Counter()
    chosen: dict[str, ChosenSignal] = {}
    for path in wearable_files(paths):
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
                rec = read_wfdb(path, channels) if path.suffix.lower() == ".hea" else read_recording(path, channels)
                w = window(rec, channels, rate_hz=cohort.signal_rate_hz, length=cohort.signal_length, index_date=index_date)
            except SignalError as e:
                quarantine.add("signal", e)
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
        old = chosen.get(pid)
        if old is not None:
            stats["unused_superseded"] += 1
            if old.end >= found.end:
                continue
        chosen[pid] = found
    log.info("wearables: %d recordings, %d patients with a window", stats["records"], len(chosen))
    return chosen, stats


def sampled_signals(store: FactStore, *, cohort: CohortLike, index_date: date,
                    quarantine: Quarantine) -> tuple[dict[str, ChosenSignal], Counter]:
    """Per patient, the window cut from its FHIR valueSampledData segments (`pipelines.sampled`)."""
    channels = tuple(cohort.signal_channels)
    zero = cutoff(index_date)
    stats: Counter = Counter()
    chosen: dict[str, ChosenSignal] = {}
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
        chosen[pid] = ChosenSignal(w.values, w.coverage, w.end - zero, w.source)
    log.info("FHIR sampled data: %d patients with segments, %d with a window", stats["patients"], len(chosen))
    return chosen, stats
