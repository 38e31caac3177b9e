"""Empatica E4 sessions: a folder (or the zip E4 connect downloads) of one CSV per signal.

Layout (Empatica, "E4 data - Session files"): `ACC.csv`, `BVP.csv`, `EDA.csv`, `HR.csv`, `TEMP.csv`
each start with a row holding the session's start as a UNIX time in UTC (one value per column)
and a row with the sample rate in Hz, then one row per sample: ACC has three columns (x, y, z in
1/64 g, 32 Hz), BVP 64 Hz, EDA 4 Hz (µS), HR 1 Hz (bpm, from BVP), TEMP 4 Hz (°C). `IBI.csv` is
`start, IBI` then `offset_s, ibi_s` rows (no rate); `tags.csv` holds event marks and `info.txt`
the description; neither is a signal. Native channels: HR, ACC_X, ACC_Y, ACC_Z (in g), BVP, EDA,
TEMP, IBI. The patient is the folder's (or the zip's) name.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SignalError
from ..limits import DEFAULT_LIMITS, IngestLimits
from .device import DeviceRecording, Wants, series

SIGNALS = ("ACC.csv", "BVP.csv", "EDA.csv", "HR.csv", "TEMP.csv", "IBI.csv")
SESSION = (*SIGNALS, "tags.csv")  # files of a session folder: read, or (tags) part of it and never read alone
ACC_PER_G = 64.0


def _is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip"


def _members(path: Path) -> dict[str, int]:
    """Signal file name -> size, for a session folder or zip."""
    if _is_zip(path):
        with zipfile.ZipFile(path) as z:
            return {Path(i.filename).name: i.file_size for i in z.infolist() if Path(i.filename).name in SIGNALS}
    return {n: (path / n).stat().st_size for n in SIGNALS if (path / n).is_file()}


def input_of(path: Path) -> Path | None:
    """A signal file of a folder holding HR.csv or ACC.csv -> the folder; a zip holding them -> the zip."""
    if path.name in SESSION and ((path.parent / "HR.csv").is_file() or (path.parent / "ACC.csv").is_file()):
        return path.parent
    if _is_zip(path):
        try:
            names = _members(path)
        except (zipfile.BadZipFile, OSError):
            return None
        return path if {"HR.csv", "ACC.csv"} & set(names) else None
    return None


def parts(path: Path) -> list[Path]:
    return [path] if _is_zip(path) else [path / n for n in (*SESSION, "info.txt") if (path / n).is_file()]


def _text(path: Path, name: str, limits: IngestLimits) -> str:
    size = _members(path)[name]
    if size > limits.max_document_bytes:
        raise SignalError(f"has {name} of {size} bytes, over the limit of {limits.max_document_bytes} "
                          "(data.limits.max_document_bytes); split the session or raise the limit",
                          reason="too_large", source=path)
    if _is_zip(path):
        with zipfile.ZipFile(path) as z:
            member = next(i for i in z.infolist() if Path(i.filename).name == name)
            with z.open(member) as f:
                return f.read(limits.max_document_bytes + 1).decode("utf-8", "replace")
    return (path / name).read_text("utf-8", "replace")


def _table(text: str, name: str, source: Path) -> np.ndarray:
    """The file's rows as float64 [rows, columns]; a cell that is not a number (IBI's header) is NaN."""
    if not text.strip():
        return np.zeros((0, 1))
    try:
        df = pd.read_csv(io.StringIO(text), header=None, skipinitialspace=True, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise SignalError(f"has {name} that is not CSV ({e}); expected the E4 session layout: start time row, "
                          "sample rate row, then samples", reason="bad_csv", source=source) from None
    return df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)


def _signal(path: Path, name: str, limits: IngestLimits) -> tuple[np.ndarray, np.ndarray]:
    """(seconds [n], values [n, k]) of one fixed-rate E4 signal file."""
    rows = _table(_text(path, name, limits), name, path)
    if rows.shape[0] < 2 or not np.isfinite(rows[:2, 0]).all() or rows[1, 0] <= 0:
        raise SignalError(f"has {name} without a start time row and a positive sample rate row; expected the E4 "
                          "session layout (e.g. '1560279825.000000' then '1.000000')", reason="bad_timestamp",
                          source=path)
    start, rate = float(rows[0, 0]), float(rows[1, 0])
    values = rows[2:]
    return start + np.arange(values.shape[0]) / rate, values


def read(path: Path, wants: Wants, limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[DeviceRecording]:
    """The session as one recording of the patient named by the folder or zip."""
    try:
        present = _members(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise SignalError(f"cannot be opened as an E4 session ({type(e).__name__}: {e})", reason="bad_zip",
                          source=path) from None
    chans: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    unused: list[str] = []
    for name in (n for n in SIGNALS if n in present):
        base = name.removesuffix(".csv")
        natives = [f"ACC_{a}" for a in "XYZ"] if base == "ACC" else [base]
        if not any(wants(n) for n in natives):
            unused.extend(natives)
            continue
        if base == "IBI":  # `start, IBI` then (offset, interval) rows: an event series, in seconds
            rows = _table(_text(path, name, limits), name, path)
            if rows.shape[0] >= 2 and rows.shape[1] >= 2:
                chans["IBI"] = series(rows[0, 0] + rows[1:, 0], rows[1:, 1])
            continue
        seconds, values = _signal(path, name, limits)
        if base == "ACC":
            if values.shape[1] < 3:
                raise SignalError(f"has ACC.csv with {values.shape[1]} columns; expected 3 (x, y, z in 1/64 g)",
                                  reason="bad_csv", source=path)
            for k, n in enumerate(natives):
                if wants(n):
                    chans[n] = series(seconds, values[:, k] / ACC_PER_G)
        else:
            chans[base] = series(seconds, values[:, 0])
    yield DeviceRecording(path.stem if _is_zip(path) else path.name, chans, str(path), unused=tuple(unused))
