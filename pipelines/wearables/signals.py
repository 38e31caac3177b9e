"""Wearable recordings -> one normalised window per patient (the latest before the index date).

Each recording (device exports, WFDB, DICOM waveforms: `pipelines.wearables.registry`; FHIR valueSampledData,
`pipelines.wearables.sampled`) is read once, mapped onto the study's channels (`pipelines.wearables.mapping`), its patient replaced by the
keyed pseudonym, windowed and normalised; the cache keeps the window with its end time
relative to the index date (no calendar time is stored).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import IngestCache, content_hash
from ..cohort import CohortLike
from ..deid import Deidentifier
from ..ehr.factstore import FactStore
from ..errors import EXHAUSTION, InputError, SignalError, refusal
from ..limits import DEFAULT_LIMITS, IngestLimits
from ..parallel import SEQUENTIAL, WorkerPool, Workers, map_ordered
from ..quarantine import Quarantine
from ..rowfiles import RowFile
from .mapping import WearableMapping, WearableNotes, channel_map, to_recording
from .recordings import window
from .registry import WearableReader, input_digest, unread_files, wearable_inputs
from .registry import reader as device_reader
from .sampled import cutoff, sampled_hours, sampled_window

log = logging.getLogger(__name__)
#: `ChosenSignal.end` of a relative-time recording: it cannot be placed in time, so any dated window of the patient wins.
RELATIVE_END = -1e12


@dataclass(frozen=True, slots=True)
class ChosenSignal:
    values: np.ndarray | None  # float32 [C, L]; None once written to the dataset's row file
    coverage: float
    end: float  # seconds relative to the end of the index date (negative)
    source: str
    hours: float = 0.0  # span of the recording before the cut-off (`Window.hours`)


class LatestWindows:
    """Per patient pseudonym, the latest window whatever its format (CSV, WFDB, FHIR valueSampledData).

    With `into` = (row by pseudonym, `RowFile` [N, C, L]) the values of a patient with a row are
    written to that row (a later window overwrites it) and kept nowhere else; values of patients
    without a row (excluded or unknown) are not kept. Without `into`, `chosen` holds the values.
    """

    def __init__(self, into: tuple[Mapping[str, int], RowFile] | None = None) -> None:
        self.chosen: dict[str, ChosenSignal] = {}
        self.superseded = 0  # windows set aside for a later one of the same patient
        #: per patient, hours of wearable data: the spans of all its recordings with a window, summed (overlapping
        #: recordings count twice); an analysis study releases their distribution (pipelines.analytics)
        self.hours: Counter = Counter()
        self._into = into

    def offer(self, pid: str, found: ChosenSignal) -> None:
        self.hours[pid] += found.hours
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
                 quarantine: Quarantine, latest: LatestWindows, limits: IngestLimits = DEFAULT_LIMITS,
                 mapping: WearableMapping = WearableMapping(), notes: WearableNotes | None = None,
                 devices: Sequence[str] | None = None, index_days: Mapping[str, int] | None = None,
                 workers: Workers | WorkerPool = SEQUENTIAL) -> Counter:
    """Offer each patient's window of each wearable input (any reader of `pipelines.wearables.registry`) to
    `latest`; counters (inputs_read, records, parsed, cached, unused_after_index_date; superseded windows are
    counted by `latest`); the devices, the mapping used and the channels left out go to `notes`; `devices`: only
    the files these readers claim (`pipelines.wearables.registry.wearable_inputs`); `index_days`: per pseudonym, the
    patient's own index date in days after `index_date` (`pipelines.ehr.timeline.index_day`), 0 if not named.

    Inputs not in the cache are read by `workers` (`pipelines.parallel`: the run's pool, or a pool of this read's
    own) and merged here in walk order, so windows, refusals, counts and cache are those of a sequential read."""
    index_days = index_days or {}
    channels = tuple(cohort.signal_channels)
    notes = notes if notes is not None else WearableNotes()
    stats: Counter = Counter()
    walk_quarantine = quarantine if devices is None else None  # another modality's folders report their own files
    unclaimed: list[Path] = []
    inputs: list[tuple[WearableReader, Path]] = []
    listed: list[tuple[WearableReader, Path, str | SignalError, bool]] = []  # (reader, input, its digest, in the cache)
    for reader, path in wearable_inputs(paths, walk_quarantine, mapping.device_for, devices, unclaimed):
        inputs.append((reader, path))
        try:
            digest = content_hash((input_digest(reader, path) + mapping.model_dump_json()).encode())
        except OSError as e:
            listed.append((reader, path, SignalError(f"cannot be read ({e})", reason="unreadable", source=path), False))
            continue
        listed.append((reader, path, digest, _current(cache.meta("wearable", digest), index_days)))
    read = partial(read_input, channels=channels, rate_hz=cohort.signal_rate_hz, length=cohort.signal_length, deid=deid,
                   index_date=index_date, limits=limits, mapping=mapping,
                   index_days={pid: day for pid, day in index_days.items() if day})  # only what differs from 0 travels
    parsed = map_ordered(read, [(r.device, str(p)) for r, p, digest, cached in listed
                                if not cached and isinstance(digest, str)], workers)
    for reader, path, digest, cached in listed:
        stats["inputs_read"] += 1
        notes.devices[reader.device] += 1
        if not isinstance(digest, str):
            quarantine.add("signal", digest)
            continue
        hit = _cached(cache, digest, index_days) if cached else None
        if hit is not None:
            stats["cached"] += 1
            meta, arrays = hit
            found = [(w["pseudonym"], ChosenSignal(arrays[f"values_{k}"], w["coverage"], w["end"], str(path),
                                                       w["hours"]))
                     for k, w in enumerate(meta["windows"])]
            notes.add(reader.device, meta["used"], meta["unused"])
            _count(stats, meta, found)
        else:  # (a cache entry gone since the walk is read here)
            got = read((reader.device, str(path))) if cached else next(parsed)
            for source, note in got.notes:
                log.info("%s: %s", source, note)
            for e in got.refused:
                quarantine.add("signal", e)
            if got.error is not None:  # one file never aborts the run
                quarantine.add("signal", got.error)
                continue
            found, meta = got.found, got.meta
            stats["parsed"] += 1
            notes.add(reader.device, meta["used"], meta["unused"])
            _count(stats, meta, found)
            if not got.refused:  # an input with a refused patient record is read again next time, so the refusal is reported again
                cache.put("wearable", digest, meta, {f"values_{k}": c.values for k, (_, c) in enumerate(found)})
        for pid, chosen in found:
            latest.offer(pid, chosen)
    unread = unread_files(unclaimed, inputs) if devices is None else []
    if unread:  # counted and named in the log, never dropped without a word
        stats["unused_not_a_wearable_export"] += len(unread)
        log.warning("wearables: %d files are no export a wearable reader knows (docs/wearables.md) and were not read, "
                    "e.g. %s", len(unread), ", ".join(str(f) for f in unread[:5]))
    log.info("wearables: %d recordings, %d patients with a window", stats["records"], len(latest.chosen))
    return stats


def _cached(cache: IngestCache, digest: str, index_days: Mapping[str, int]) -> tuple | None:
    """The cached windows of an input, unless a patient's index date moved since (then they are cut again)."""
    hit = cache.get("wearable", digest)
    return hit if hit is not None and _current(hit[0], index_days) else None


def _current(meta: dict[str, Any] | None, index_days: Mapping[str, int]) -> bool:
    """Whether a cached entry's windows were cut at every patient's index date as it is now."""
    return meta is not None and "days" in meta and all(index_days.get(pid, 0) == day
                                                      for pid, day in meta["days"].items())


def _count(stats: Counter, meta: dict, found: list) -> None:
    stats["records"] += meta["records"]
    if meta["records"] > len(found):
        stats["unused_after_index_date"] += meta["records"] - len(found)


@dataclass(frozen=True)
class InputRead:
    """What one wearable input holds for the study, as a worker hands it back (`read_input`)."""

    found: list[tuple[str, ChosenSignal]]  # (pseudonym, window) per patient recording with a window
    meta: dict  # what the cache keeps beside the windows' values
    refused: list[SignalError]  # patient records refused (the file's other records are used)
    notes: list[tuple[str, str]]  # (source, note) of the device readers, logged by the ingesting process
    error: InputError | None = None  # why the whole input is refused (after the records refused before it)


def read_input(item: tuple[str, str], *, channels: tuple[str, ...], rate_hz: float, length: int, deid: Deidentifier,
               index_date: date, limits: IngestLimits, mapping: WearableMapping,
               index_days: Mapping[str, int]) -> InputRead:
    """One input (device, path), windowed before each patient's own index date; a refusal of the whole input is
    returned in `InputRead.error`, never raised: a pure function of the file, run by a worker (`pipelines.parallel`)."""
    device, name = item
    path = Path(name)
    refused: list[SignalError] = []
    notes: list[tuple[str, str]] = []
    try:
        return _read_input(device_reader(device), path, channels, rate_hz=rate_hz, length=length, deid=deid,
                           index_date=index_date, limits=limits, mapping=mapping, index_days=index_days,
                           refused=refused, notes=notes)
    except (SignalError, *EXHAUSTION) as e:
        return InputRead([], {}, refused, notes, refusal(e, path))


def _read_input(reader: WearableReader, path: Path, channels: tuple[str, ...], *, rate_hz: float, length: int,
                deid: Deidentifier, index_date: date, limits: IngestLimits, mapping: WearableMapping,
                index_days: Mapping[str, int], refused: list[SignalError], notes: list[tuple[str, str]]) -> InputRead:
    """Each patient recording of one input, windowed before the patient's own index date (refused records and the
    readers' notes are appended to `refused` and `notes` as they come). A window's `end` counts from the end of that
    patient's index date."""
    days: dict[str, int] = {}
    found: list[tuple[str, ChosenSignal]] = []
    used: dict[str, str] = {}
    unused: set[str] = set()
    records = 0
    for dev in reader.read(path, lambda n: mapping.study_channel(n, channels) is not None, limits):
        unused.update(dev.unused)
        notes += [(dev.source, note) for note in dev.notes]
        pid = deid.pseudonym(dev.patient_id)
        days[pid] = index_days.get(pid, 0)
        own = index_date + timedelta(days=days[pid])
        used.update(channel_map(dev, channels, mapping))  # reported even when the recording is then refused
        try:
            rec, _ = to_recording(dev, channels, mapping)
            w = window(rec, channels, rate_hz=rate_hz, length=length, index_date=own)
        except SignalError as e:  # one patient's record of a multi-patient file; the others go on
            refused.append(e)
            continue
        records += 1
        if w is not None:
            end = RELATIVE_END if rec.relative else w.end - cutoff(own)
            found.append((pid, ChosenSignal(w.values, w.coverage, end, str(path), w.hours)))
    if not records and not refused:
        raise SignalError(f"holds no patient recording {reader.device} exports; expected one (docs/wearables.md)",
                          reason="no_samples", source=path)
    meta = {"device": reader.device, "used": used, "unused": sorted(unused), "records": records, "days": days,
            "windows": [{"pseudonym": pid, "coverage": c.coverage, "end": c.end, "hours": c.hours} for pid, c in found]}
    return InputRead(found, meta, refused, notes)


def sampled_signals(store: FactStore, *, cohort: CohortLike, index_date: date, quarantine: Quarantine,
                    latest: LatestWindows, index_days: Mapping[str, int] | None = None) -> Counter:
    """Offer each patient's window cut from its FHIR valueSampledData segments (`pipelines.wearables.sampled`) to
    `latest`, before the patient's own index date (`index_days`, as `read_signals`)."""
    channels = tuple(cohort.signal_channels)
    index_days = index_days or {}
    stats: Counter = Counter()
    windows = 0
    for pid, segments in store.segments():
        stats["patients"] += 1
        day = index_days.get(pid, 0)
        own = index_date + timedelta(days=day)
        if day:  # segments count from the end of the reference date; recount them from the patient's own
            segments = [(c, start - day * 86400.0, *rest) for c, start, *rest in segments]
        try:
            w = sampled_window(segments, channels, rate_hz=cohort.signal_rate_hz, length=cohort.signal_length,
                               index_date=own)
        except SignalError as e:
            quarantine.add("signal", e)
            continue
        if w is None:
            stats["unused_after_index_date"] += 1
            continue
        windows += 1
        latest.offer(pid, ChosenSignal(w.values, w.coverage, w.end - cutoff(own), w.source, sampled_hours(segments)))
    log.info("FHIR sampled data: %d patients with segments, %d with a window", stats["patients"], windows)
    return stats
