"""fedcare's own wearable CSV layout, and the window every wearable recording is cut to.

A fedcare recording is `<MRN>.csv` with a `timestamp` column (ISO 8601) and one column per channel
(the other device exports have their own readers, `pipelines.wearables.registry`).
The window is the last `signal_length / signal_rate_hz` seconds recorded on or before the
index date (for a relative-time recording, `Recording.relative`: its last seconds), resampled
onto a regular grid (`resample`: a faster channel is averaged over each grid step). Gaps are handled explicitly: samples are linearly
interpolated across gaps up to `max_gap` (`MAX_GAP_S`, or 1.5 sample periods of a slower channel:
a minute-level step count has no gap every minute); grid points inside longer gaps (or outside the
recording) are set to the channel's reference level, i.e. 0 after normalisation; a window
with less than `MIN_COVERAGE` real coverage is refused. Channels are normalised with fixed
physiological references (so resting heart rate stays comparable across patients and
sites); a channel without a reference is z-scored within its window.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SignalError
from ..ehr.tables import check_header
from ..errors import TabularError
from ..limits import DEFAULT_LIMITS, IngestLimits
from .device import DeviceRecording, Wants, series

log = logging.getLogger(__name__)

#: channel -> (reference level, scale): heart rate in /min, acceleration in g.
SIGNAL_REFERENCE: dict[str, tuple[float, float]] = {
    "heart_rate": (75.0, 15.0), "acc_x": (0.0, 0.5), "acc_y": (0.0, 0.5), "acc_z": (1.0, 0.5), "spo2": (97.0, 3.0),
}
MAX_GAP_S = 5.0
MIN_COVERAGE = 0.5


@dataclass(frozen=True)
class Recording:
    patient_id: str  # the MRN, from the file name
    seconds: np.ndarray  # float64 [n], POSIX seconds (relative: from the recording's start), sorted, unique
    values: np.ndarray  # float64 [C, n], NaN where a value is missing
    source: str
    relative: bool = False  # no calendar time (`pipelines.wearables.device`): the window is the recording's end


@dataclass(frozen=True)
class Window:
    values: np.ndarray  # float32 [C, L]
    coverage: float  # share of grid points backed by real samples
    end: float  # POSIX seconds of the last sample
    source: str
    hours: float = 0.0  # the recording's span before the cut-off: last minus first sample time, in hours


def _table(path: Path, limits: IngestLimits) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The CSV, its rows' POSIX seconds and which rows have a parseable timestamp."""
    try:
        check_header(path, ",", limits)
    except TabularError as e:
        raise SignalError(str(e).removeprefix(f"{path}: "), reason=e.reason, source=path) from None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise SignalError(f"cannot be read as CSV ({type(e).__name__}: {e}); expected a header row "
                          "'timestamp,<channel>,...' and one row per sample", reason="bad_csv", source=path) from None
    if "timestamp" not in df.columns:
        raise SignalError(f"has columns {list(df.columns)[:20]} but lacks ['timestamp']; expected 'timestamp' and the "
                          "study's signal channels (or a device export a wearable reader knows: docs/wearables.md)",
                          reason="missing_column", source=path)
    ts = pd.to_datetime(df["timestamp"], utc=True, errors="coerce", format="ISO8601")
    ok = ts.notna().to_numpy()
    if not ok.any():
        raise SignalError("has no parseable ISO 8601 timestamp; expected e.g. 2023-12-01T08:00:00Z",
                          reason="bad_timestamp", source=path)
    if not ok.all():
        log.warning("%s: %d rows without a parseable timestamp are treated as gaps", path, int((~ok).sum()))
    seconds = (ts[ok] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)
    return df, seconds, ok


def read_recording(path: Path, channels: Sequence[str], limits: IngestLimits = DEFAULT_LIMITS) -> Recording:
    """Read `<MRN>.csv`; raise `SignalError` naming the file and what is missing (or which bound it breaks)."""
    df, seconds, ok = _table(path, limits)
    missing = [c for c in channels if c not in df.columns]
    if missing:
        raise SignalError(f"has columns {list(df.columns)} but lacks {missing}; expected 'timestamp' and the study's "
                          "signal channels. Export the recording with all channels", reason="missing_column", source=path)
    values = np.stack([pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)[ok] for c in channels])
    values[~np.isfinite(values)] = np.nan
    order = np.argsort(seconds, kind="stable")
    seconds, values = seconds[order], values[:, order]
    keep = np.concatenate([[True], np.diff(seconds) > 0])  # duplicate timestamps: first one wins
    return Recording(path.stem, seconds[keep], values[:, keep], str(path))


def input_of(path: Path) -> Path | None:
    """Any .csv no device reader claimed is fedcare's own layout (`pipelines.wearables.registry` order)."""
    return path if path.suffix.lower() == ".csv" else None


def read(path: Path, wants: Wants, limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[DeviceRecording]:
    """`<MRN>.csv` as a device recording: every column but `timestamp` is a native channel."""
    df, seconds, ok = _table(path, limits)
    names = [str(c) for c in df.columns if c != "timestamp"]
    chans = {n: series(seconds, pd.to_numeric(df[n], errors="coerce").to_numpy(dtype=np.float64)[ok])
             for n in names if wants(n)}
    yield DeviceRecording(path.stem, chans, str(path), unused=tuple(n for n in names if n not in chans))


def max_gap(seconds: np.ndarray) -> float:
    """The longest pause bridged by interpolation: `MAX_GAP_S`, or 1.5 times the channel's median sample spacing."""
    return max(MAX_GAP_S, 1.5 * float(np.median(np.diff(seconds)))) if seconds.size > 2 else MAX_GAP_S


def resample(grid: np.ndarray, t: np.ndarray, x: np.ndarray, rate_hz: float) -> np.ndarray:
    """`x(t)` at the grid points: linear interpolation, or, for a channel at least twice the grid's rate (a 32 Hz
    accelerometer on a 1 Hz grid), the mean of its samples within half a grid step (a boxcar low-pass, so the
    grid does not alias the faster signal)."""
    linear = np.interp(grid, t, x)
    if t.size < 3 or np.median(np.diff(t)) * 2 > 1 / rate_hz:
        return linear
    lo = np.searchsorted(t, grid - 0.5 / rate_hz)
    hi = np.searchsorted(t, grid + 0.5 / rate_hz)
    sums = np.concatenate([[0.0], np.cumsum(x)])
    n = hi - lo
    return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), linear)


def window(rec: Recording, channels: Sequence[str], *, rate_hz: float, length: int,
           index_date: date | None) -> Window | None:
    """The normalised window ending at the last sample on or before `index_date` (a relative recording, or no
    index date: its last sample); None if none is."""
    cutoff = np.inf if rec.relative or index_date is None else \
        datetime.combine(index_date + timedelta(days=1), time(), timezone.utc).timestamp()
    before = rec.seconds < cutoff
    if not before.any():
        return None
    t, v = rec.seconds[before], rec.values[:, before]
    end = float(t[-1])
    grid = end - np.arange(length - 1, -1, -1) / rate_hz
    out = np.zeros((len(channels), length), dtype=np.float64)
    covered = 0.0
    for c, name in enumerate(channels):
        finite = np.isfinite(v[c])
        tv, xv = t[finite], v[c][finite]
        if tv.size == 0:
            continue
        i = np.clip(np.searchsorted(tv, grid), 1, max(tv.size - 1, 1))
        left, right = tv[i - 1], tv[np.minimum(i, tv.size - 1)]
        near = np.minimum(np.abs(grid - left), np.abs(grid - right)) <= 0.5 / rate_hz
        ok = near | ((grid >= tv[0]) & (grid <= tv[-1]) & (right - left <= max_gap(tv)))
        x = resample(grid, tv, xv, rate_hz)
        level, scale = SIGNAL_REFERENCE.get(name, (float(x[ok].mean()) if ok.any() else 0.0,
                                                   float(x[ok].std()) or 1.0 if ok.any() else 1.0))
        out[c] = np.where(ok, (x - level) / scale, 0.0)
        covered += ok.mean()
    coverage = covered / len(channels)
    if coverage < MIN_COVERAGE:
        raise SignalError(f"covers {coverage:.0%} of the {length / rate_hz:.0f} s window before the index date; "
                          f"expected at least {MIN_COVERAGE:.0%}. Longer recordings are needed",
                          reason="too_short", source=rec.source)
    return Window(out.astype(np.float32), float(coverage), end, rec.source, float(t[-1] - t[0]) / 3600.0)


