"""Garmin FIT files (activity and monitoring/wellness), decoded with `fitdecode`, and the CSVs made from them.

FIT is Garmin's published binary protocol (FIT SDK, "Flexible and Interoperable Data Transfer"
protocol): a 12/14-byte header ending in `.FIT`, definition messages that lay out the local
message types, data messages, and a CRC-16 over the file. Heart rate comes from `record`
messages (global number 20: `timestamp`, `heart_rate` in bpm; steps as `cadence` are not read)
and from `monitoring` messages (55: `heart_rate` with a `timestamp` or a `timestamp_16`, the low
16 bits of the time, rolled forward from the last full timestamp as the SDK describes).
FIT times count from 1989-12-31T00:00:00Z; fitdecode returns them as UTC datetimes. A damaged
file (bad CRC, truncated) is refused whole. The patient is the file name (`<MRN>.fit`).

Garmin CSV: the semicolon-separated, header-less files fit2gpx (github.com/MaksVasilev/fit2gpx,
Examples_EN.md) writes from FIT files: `<name>.fit.HR.csv` from activities (`--hr-only`:
`2020-03-21T19:02:37;49;00:00:00`, time, heart rate, duration), `<name>.fit.monitor-HR.csv` from
monitoring files (`2020-06-01T00:02:00;48`), and `.SpO2.csv` / `.GSI.csv` (stress) the same way;
times are ISO 8601 or `2020.03.21 19:02:37` (`--iso-date=no`), without an offset, taken as UTC.
A `.csv` whose first line has that shape is read as such whatever its name (heart rate unless the
name says SpO2 or GSI). The patient is the name up to its first dot (`<MRN>.fit.HR.csv`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import fitdecode
import numpy as np
import pandas as pd

from ..errors import SignalError
from ..limits import DEFAULT_LIMITS, IngestLimits
from .device import DeviceRecording, Wants, head, series

#: FIT message -> its fields read as native channels
FIT_CHANNELS: dict[str, tuple[str, ...]] = {"record": ("heart_rate",), "monitoring": ("heart_rate",)}
FIT_EPOCH = 631065600  # 1989-12-31T00:00:00Z in POSIX seconds
#: fit2gpx CSV name ending -> native channel
CSV_CHANNELS: dict[str, str] = {".spo2.csv": "SpO2", ".gsi.csv": "stress", ".hr.csv": "heart_rate"}
CSV_LINE = re.compile(r"^\d{4}[-.]\d{2}[-.]\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?;[^;]*(;[^;]*)?$")


def fit_input_of(path: Path) -> Path | None:
    return path if path.suffix.lower() == ".fit" else None


def _posix(value: object) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value) + FIT_EPOCH
    return None


def read_fit(path: Path, wants: Wants, limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[DeviceRecording]:
    """Heart rate of `record` and `monitoring` messages; other fields are named as unused."""
    samples: dict[str, list[tuple[float, float]]] = {}
    other: set[str] = set()
    last: float | None = None
    try:
        with fitdecode.FitReader(str(path), check_crc=fitdecode.CrcCheck.RAISE,
                                 error_handling=fitdecode.ErrorHandling.RAISE) as fit:
            for frame in fit:
                if not isinstance(frame, fitdecode.FitDataMessage) or frame.name not in FIT_CHANNELS:
                    continue
                fields = {f.name: f.value for f in frame.fields}
                when = _posix(fields.get("timestamp"))
                if when is None and fields.get("timestamp_16") is not None and last is not None:
                    t16 = int(fields["timestamp_16"])
                    when = last + ((t16 - int(last - FIT_EPOCH)) & 0xFFFF)
                if when is None:
                    continue
                last = when
                for name, value in fields.items():
                    if name in FIT_CHANNELS[frame.name] and wants(name) and value is not None:
                        samples.setdefault(name, []).append((when, float(value)))
                    elif name not in ("timestamp", "timestamp_16") and not wants(name):
                        other.add(name)
    except (fitdecode.FitError, OSError, ValueError, KeyError) as e:
        raise SignalError(f"cannot be decoded as a FIT file ({type(e).__name__}: {e}); expected a Garmin FIT activity "
                          "or monitoring file with a valid CRC. Copy it again from the device",
                          reason="bad_fit", source=path) from None
    chans = {n: series(*np.array(v, dtype=np.float64).T) for n, v in samples.items()}
    yield DeviceRecording(path.stem, chans, str(path), unused=tuple(sorted(other)))


def csv_input_of(path: Path) -> Path | None:
    """A .csv whose first line is `time;value[;duration]` (fit2gpx's header-less layout)."""
    if path.suffix.lower() != ".csv":
        return None
    first = head(path, 256).decode("utf-8", "replace").splitlines()[:1]
    return path if first and CSV_LINE.match(first[0].strip()) else None


def read_csv(path: Path, wants: Wants, limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[DeviceRecording]:
    """One channel (by the name's ending) of one patient (the name up to its first dot)."""
    native = next((c for end, c in CSV_CHANNELS.items() if path.name.lower().endswith(end)), "heart_rate")
    if not wants(native):
        yield DeviceRecording(path.name.split(".")[0], {}, str(path), unused=(native,))
        return
    try:
        df = pd.read_csv(path, sep=";", header=None, usecols=[0, 1], names=["time", "value"], dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise SignalError(f"cannot be read as a Garmin CSV ({type(e).__name__}: {e}); expected header-less lines "
                          "'2020-03-21T19:02:37;49[;00:00:00]'", reason="bad_csv", source=path) from None
    text = df["time"].str.strip().str.replace(r"^(\d{4})\.(\d{2})\.(\d{2}) ", r"\1-\2-\3T", regex=True)
    when = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    if when.isna().all():
        raise SignalError("has no time like '2020-03-21T19:02:37' in its first column; expected fit2gpx's Garmin "
                          "CSV layout", reason="bad_timestamp", source=path)
    seconds = (when - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)
    values = pd.to_numeric(df["value"], errors="coerce").to_numpy(dtype=np.float64)
    yield DeviceRecording(path.name.split(".")[0], {native: series(seconds, values)}, str(path))
