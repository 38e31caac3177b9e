"""Wearable streams sent as FHIR R4 Observations with `valueSampledData` -> the study's signal window.

`SampledData` (FHIR R4 §2.24.0.10) holds `data`, a space-separated list of decimals or the
markers `E` (error: no valid value), `L` (below the lower detection limit) and `U` (above the
upper limit), interleaved by `dimensions`; sample `i` of dimension `d` is
`origin + factor * data[i * dimensions + d]`, taken `i * period` milliseconds after the
Observation's effective time. `E` is a gap (NaN); `L`/`U` take `lowerLimit`/`upperLimit`
when the resource states them (they are on the data's scale) and are a gap otherwise.

A value belongs to a study channel by its code: `CHANNEL_CODES` (LOINC, ISO/IEEE 11073-10101),
or, for channels without a standard code (accelerometer axes), a coding code / display or
`code.text` equal to the channel name (`acc_x`); `dimensions = 3` under a code named
`acc`/`acceleration` fills `acc_x, acc_y, acc_z`. Multi-lead Observations send one
component per channel. The origin's unit is converted with `CHANNEL_UNITS` or refused.

Segments are stored per patient (`pipelines.ehr.factstore`) with time relative to the end of the
index date; `sampled_windows` then joins them into a `Recording` per patient and cuts the same
window as CSV and WFDB recordings (`pipelines.wearables.recordings.window`: resampled to the study's
rate, normalised, gaps explicit).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import numpy as np

from ..errors import SignalError
from ..ehr.observations import codes_of
from .recordings import MAX_GAP_S, Recording, window

log = logging.getLogger(__name__)
LOINC, MDC = "http://loinc.org", "urn:iso:std:iso:11073:10101"
CHANNEL_CODES: dict[tuple[str, str], str] = {
    (LOINC, "8867-4"): "heart_rate", (MDC, "147842"): "heart_rate", (MDC, "149530"): "heart_rate",
    (LOINC, "59408-5"): "spo2", (LOINC, "2708-6"): "spo2", (MDC, "150456"): "spo2",
}
CHANNEL_GROUPS: dict[str, tuple[str, ...]] = {"acc": ("acc_x", "acc_y", "acc_z"), "acceleration": ("acc_x", "acc_y", "acc_z")}
#: channel prefix -> {UCUM unit: factor to the unit `pipelines.wearables.recordings.SIGNAL_REFERENCE` uses}
CHANNEL_UNITS: dict[str, dict[str, float]] = {
    "heart_rate": {"/min": 1.0, "{beats}/min": 1.0, "{beat}/min": 1.0, "bpm": 1.0},
    "acc": {"g": 1.0, "[g]": 1.0, "m/s2": 1 / 9.80665, "m/s^2": 1 / 9.80665},
    "spo2": {"%": 1.0},
}
#: One segment: (channel, start in seconds relative to the end of the index date, period in s, samples)
Segment = tuple[str, float, float, np.ndarray]


def _name(text: Any) -> str:
    return str(text or "").strip().lower().replace(" ", "_").replace("-", "_")


def _channels_of(concept: Any, channels: Sequence[str]) -> tuple[str, ...]:
    """The study channels a CodeableConcept names (one, a group such as acc_x/y/z, or none)."""
    for key in codes_of(concept):
        if CHANNEL_CODES.get(key) in channels:
            return (CHANNEL_CODES[key],)
    names = {_name(concept.text)} | {_name(c.code) for c in concept.coding or []} | {_name(c.display) for c in concept.coding or []}
    for n in sorted(names - {""}):
        if n in channels:
            return (n,)
        if n in CHANNEL_GROUPS and all(c in channels for c in CHANNEL_GROUPS[n]):
            return CHANNEL_GROUPS[n]
    return ()


def _unit_factor(channel: str, origin: Any) -> float:
    unit = origin.code if origin.code else origin.unit
    if unit is None:
        return 1.0  # no unit stated: taken to be the channel's reference unit
    table = next((t for prefix, t in CHANNEL_UNITS.items() if channel.startswith(prefix)), None)
    if table is None or unit not in table:
        expected = sorted(table) if table else "a unit listed in pipelines/wearables/sampled.py CHANNEL_UNITS"
        raise SignalError(f"has valueSampledData for channel {channel!r} in unit {unit!r}; expected one of {expected}",
                          reason="unknown_unit")
    return table[unit]


def decode(sd: Any) -> np.ndarray:
    """`SampledData` -> float64 [n, dimensions] in the origin's unit; NaN for gaps. Raises `SignalError`."""
    dims = int(sd.dimensions)
    period = float(sd.period)
    if dims < 1 or not np.isfinite(period) or period <= 0:
        raise SignalError(f"has valueSampledData with period {period} ms and dimensions {dims}; expected a positive "
                          "period and dimensions >= 1", reason="bad_sampled_data")
    limits = {"E": np.nan, "L": np.nan if sd.lowerLimit is None else float(sd.lowerLimit),
              "U": np.nan if sd.upperLimit is None else float(sd.upperLimit)}
    tokens = str(sd.data or "").split()
    try:
        raw = np.array([limits[t] if t in limits else float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if t not in limits and not _is_number(t))
        raise SignalError(f"has valueSampledData.data token {bad[:20]!r}; expected decimals or the markers E, L, U "
                          "separated by spaces", reason="bad_sampled_data") from None
    if raw.size == 0 or raw.size % dims:
        raise SignalError(f"has valueSampledData with {raw.size} values for dimensions {dims}; expected a non-zero "
                          f"multiple of {dims}", reason="bad_sampled_data")
    raw[~np.isfinite(raw) & ~np.isnan(raw)] = np.nan
    origin = float(sd.origin.value) if sd.origin is not None and sd.origin.value is not None else 0.0
    factor = float(sd.factor) if sd.factor is not None else 1.0
    return (origin + factor * raw).reshape(-1, dims)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _start(obs: Any) -> datetime | None:
    when = obs.effectiveDateTime or obs.effectiveInstant or (obs.effectivePeriod.start if obs.effectivePeriod else None)
    if when is None:
        return None
    if not isinstance(when, datetime):  # a date only: midnight UTC
        when = datetime.combine(when, time())
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def cutoff(index_date: date) -> float:
    """POSIX seconds at the end of the index date (UTC), the zero of relative wearable time."""
    return datetime.combine(index_date + timedelta(days=1), time(), timezone.utc).timestamp()


def segments_of(obs: Any, channels: Sequence[str], index_date: date) -> list[Segment]:
    """The study channels carried by one validated Observation's valueSampledData (and its components)."""
    parts = [(obs.code, obs.valueSampledData)] + [(c.code, c.valueSampledData) for c in obs.component or []]
    parts = [(concept, sd) for concept, sd in parts if sd is not None]
    if not parts:
        return []
    start = _start(obs)
    if start is None:
        raise SignalError("has valueSampledData but no effective[x]; expected the time of the first sample",
                          reason="bad_sampled_data")
    rel = start.timestamp() - cutoff(index_date)
    out: list[Segment] = []
    for concept, sd in parts:
        names = _channels_of(concept, channels)
        if not names:
            continue
        values = decode(sd)
        if values.shape[1] != len(names):
            raise SignalError(f"has valueSampledData with dimensions {values.shape[1]} under a code for channels "
                              f"{list(names)}; expected dimensions {len(names)} (one component per channel otherwise)",
                              reason="bad_sampled_data")
        for d, name in enumerate(names):
            out.append((name, rel, float(sd.period) / 1000.0, values[:, d] * _unit_factor(name, sd.origin)))
    return out


def recording(segments: Sequence[tuple[str, float, float, int, bytes, str]], channels: Sequence[str], *,
              index_date: date, span_s: float) -> Recording | None:
    """One patient's stored segments -> a `Recording` covering the last `span_s` seconds before the cut-off."""
    zero = cutoff(index_date)
    parts = []
    for channel, start, period, n, blob, source in segments:
        t = start + period * np.arange(n)
        parts.append((channel, t, np.frombuffer(blob, dtype=np.float64), source))
    ends = [t[t < 0].max() for _, t, _, _ in parts if (t < 0).any()]
    if not ends:
        return None
    end = max(ends)
    lo = end - span_s - MAX_GAP_S
    kept = [(c, t[(t >= lo) & (t <= end)], v[(t >= lo) & (t <= end)], s) for c, t, v, s in parts]
    kept = [k for k in kept if k[1].size]
    seconds = np.unique(np.concatenate([t for _, t, _, _ in kept]))
    values = np.full((len(channels), seconds.size), np.nan)
    for channel, t, v, _ in kept:
        values[list(channels).index(channel), np.searchsorted(seconds, t)] = v
    source = max(kept, key=lambda k: k[1][-1])[3]
    return Recording("", seconds + zero, values, source)


def sampled_hours(segments: Sequence[tuple[str, float, float, int, bytes, str]]) -> float:
    """The span of one patient's sampled data before the cut-off (first to last sample with t < 0), in hours:
    its segments are one recording (`Window.hours` of a file recording)."""
    first, last = np.inf, -np.inf
    for _, start, period, n, _, _ in segments:
        before = min(n, int(np.ceil(-start / period))) if period > 0 else int(start < 0) * n
        if before > 0:
            first, last = min(first, start), max(last, start + period * (before - 1))
    return float(last - first) / 3600.0 if last >= first else 0.0


def sampled_window(segments: Sequence[tuple[str, float, float, int, bytes, str]], channels: Sequence[str], *,
                   rate_hz: float, length: int, index_date: date):
    """The normalised window of one patient's sampled data, or None if all of it is after the index date."""
    rec = recording(segments, channels, index_date=index_date, span_s=length / rate_hz)
    if rec is None:
        return None
    return window(rec, channels, rate_hz=rate_hz, length=length, index_date=index_date)
