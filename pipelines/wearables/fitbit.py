"""Fitbit data as research sites receive it from Fitabase: minute- and second-level CSVs, many patients per file.

Layout (Fitabase data dictionary; the public "FitBit Fitness Tracker Data" export has the same files):
`heartrate_seconds_merged.csv` (`Id,Time,Value`, about every 5 s), `minuteStepsNarrow_merged.csv`
(`Id,ActivityMinute,Steps`), `minuteIntensitiesNarrow_merged.csv` (`Id,ActivityMinute,Intensity`, 0-3),
`minuteCaloriesNarrow_merged.csv`, `minuteMETsNarrow_merged.csv` and `minuteSleep_merged.csv`
(`Id,date,value,logId`, 1 asleep, 2 restless, 3 awake). Times read `4/12/2016 7:21:00 AM`, the
participant's local time without an offset; they are taken as UTC (the window needs order and
spacing, and a day's offset does not move a recording across a typical index date gap).
The files of one folder are one input; `Id` is the patient. Other Fitabase files (daily or hourly
summaries, weight logs) are named as unused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SignalError
from ..limits import DEFAULT_LIMITS, IngestLimits
from .device import DeviceRecording, Wants, series

log = logging.getLogger(__name__)
#: file -> (time column, value column, native channel)
FILES: dict[str, tuple[str, str, str]] = {
    "heartrate_seconds_merged.csv": ("Time", "Value", "HeartRate"),
    "minuteStepsNarrow_merged.csv": ("ActivityMinute", "Steps", "Steps"),
    "minuteIntensitiesNarrow_merged.csv": ("ActivityMinute", "Intensity", "Intensity"),
    "minuteCaloriesNarrow_merged.csv": ("ActivityMinute", "Calories", "Calories"),
    "minuteMETsNarrow_merged.csv": ("ActivityMinute", "METs", "METs"),
    "minuteSleep_merged.csv": ("date", "value", "Sleep"),
}
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def input_of(path: Path) -> Path | None:
    """A Fitabase `*_merged.csv` in a folder holding one of `FILES` -> the folder."""
    if path.name.endswith("_merged.csv") and any((path.parent / f).is_file() for f in FILES):
        return path.parent
    return None


def parts(folder: Path) -> list[Path]:
    return [folder / f for f in FILES if (folder / f).is_file()]


def _channel(path: Path, time_col: str, value_col: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, usecols=["Id", time_col, value_col], dtype={"Id": str, time_col: str})
    except ValueError as e:  # usecols names a column the file lacks
        raise SignalError(f"has {path.name} without the Fitabase columns Id,{time_col},{value_col} ({e}); expected the "
                          "Fitabase layout", reason="missing_column", source=path) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SignalError(f"cannot be read as CSV ({type(e).__name__}: {e})", reason="bad_csv", source=path) from None
    when = pd.to_datetime(df[time_col], format=TIME_FORMAT, errors="coerce", utc=True)
    bad = int(when.isna().sum())
    if bad == len(df) and bad:
        raise SignalError(f"has {path.name} with no time like '4/12/2016 7:21:00 AM' in {time_col}; expected the "
                          "Fitabase layout", reason="bad_timestamp", source=path)
    if bad:
        log.warning("%s: %d rows without a parseable %s are left out", path, bad, time_col)
    return pd.DataFrame({"Id": df["Id"].str.strip(), "t": (when - pd.Timestamp(0, tz="UTC")).dt.total_seconds(),
                         "v": pd.to_numeric(df[value_col], errors="coerce")})[when.notna().to_numpy()]


def read(folder: Path, wants: Wants, limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[DeviceRecording]:
    """One recording per `Id` over the folder's Fitabase files."""
    per_id: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    unused = sorted(p.name for p in folder.glob("*_merged.csv") if p.name not in FILES)
    for name, (time_col, value_col, native) in FILES.items():
        path = folder / name
        if not path.is_file():
            continue
        if not wants(native):
            unused.append(native)
            continue
        for pid, g in _channel(path, time_col, value_col).groupby("Id", sort=True):
            per_id.setdefault(str(pid), {})[native] = series(g["t"].to_numpy(), g["v"].to_numpy())
    for pid, chans in sorted(per_id.items()):
        yield DeviceRecording(pid, chans, str(folder), unused=tuple(unused))
