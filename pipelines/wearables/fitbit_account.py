"""Fitbit's own account export ("Download your data"): one JSON file per day and measure.

Layout (Fitbit/Google "Export your account archive", folder `Physical Activity/`):
`heart_rate-2021-01-01.json` is `[{"dateTime": "01/01/21 00:00:05", "value": {"bpm": 67, "confidence": 2}}, ...]`
(about every 5 to 15 s) and `steps-2021-01-01.json` is `[{"dateTime": "01/01/21 00:00:00", "value": "0"}, ...]`
(per minute). Times are the account's local time without an offset (`MM/DD/YY HH:MM:SS`), taken as UTC
like Fitabase's; ISO 8601 times (other archive versions) are read too. A value that is missing, null,
not a number or not above 0 bpm (the tracker off the wrist) is a gap; a row whose time reads as no
date is left out and counted in the log. Other files of the folder (`calories-*.json`,
`sleep-*.json`, ...) are named as unused channels.

The archive's top folder is the account holder's name: a hospital renames it to the MRN. The patient
is the folder holding `Physical Activity/`, or the folder holding the files; all days of one folder
are one input (one recording per patient).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SignalError
from ..limits import DEFAULT_LIMITS, IngestLimits
from .device import DeviceRecording, Wants, series

log = logging.getLogger(__name__)
DEVICE = "fitbit_account"
ACTIVITY_FOLDER = "Physical Activity"
#: file prefix -> native channel
MEASURES = {"heart_rate": "heart_rate", "steps": "steps"}
TIME_FORMATS = ("%m/%d/%y %H:%M:%S", "%m/%d/%Y %H:%M:%S")
_DAY_FILE = re.compile(r"^([a-z_]+)-(\d{4}-\d{2}-\d{2})\.json$")


def _measure(path: Path) -> str | None:
    m = _DAY_FILE.match(path.name)
    return m.group(1) if m else None


def input_of(path: Path) -> Path | None:
    """A `heart_rate-YYYY-MM-DD.json` or `steps-YYYY-MM-DD.json` -> the folder holding it (one person's days)."""
    return path.parent if _measure(path) in MEASURES else None


def parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if _measure(p) in MEASURES)


def patient_of(folder: Path) -> str:
    return folder.parent.name if folder.name == ACTIVITY_FOLDER else folder.name


def _seconds(text: Any) -> float | None:
    text = str(text).strip()
    for layout in TIME_FORMATS:
        try:
            return datetime.strptime(text, layout).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _number(value: Any, measure: str) -> float:
    if measure == "heart_rate":
        value = value.get("bpm") if isinstance(value, dict) else None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return x if np.isfinite(x) and (x > 0 or measure != "heart_rate") else float("nan")


def _day(path: Path, measure: str, limits: IngestLimits) -> tuple[list[float], list[float], int]:
    size = path.stat().st_size
    if size > limits.max_document_bytes:
        raise SignalError(f"has {path.name} of {size} bytes, over limits.max_document_bytes "
                          f"({limits.max_document_bytes}); expected one day per file", reason="too_large", source=path)
    try:
        rows = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SignalError(f"has {path.name} that is not JSON ({e}); expected the Fitbit export's "
                          '[{"dateTime": "01/01/21 00:00:05", "value": ...}, ...]', reason="bad_json",
                          source=path) from None
    if not isinstance(rows, list):
        raise SignalError(f"has {path.name} holding a JSON {type(rows).__name__}; expected a list of "
                          '{"dateTime": ..., "value": ...}', reason="bad_json", source=path)
    t, v, bad = [], [], 0
    for row in rows:
        when = _seconds(row.get("dateTime")) if isinstance(row, dict) else None
        if when is None:
            bad += 1
            continue
        t.append(when)
        v.append(_number(row.get("value"), measure))
    return t, v, bad


def read(folder: Path, wants: Wants, limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[DeviceRecording]:
    """One recording of the folder's days: heart rate (bpm) and steps (per minute)."""
    samples: dict[str, tuple[list[float], list[float]]] = {}
    unused = sorted({m for p in folder.glob("*.json") if (m := _measure(p)) and m not in MEASURES})
    bad = 0
    for path in parts(folder):
        measure = _measure(path)
        assert measure is not None
        native = MEASURES[measure]
        if not wants(native):
            unused.append(native)
            continue
        t, v, n = _day(path, measure, limits)
        bad += n
        ts, vs = samples.setdefault(native, ([], []))
        ts.extend(t)
        vs.extend(v)
    if bad:
        log.warning("%s: %d rows without a dateTime like '01/01/21 00:00:05' are left out", folder, bad)
    chans = {k: series(np.array(t), np.array(v)) for k, (t, v) in samples.items()}
    yield DeviceRecording(patient_of(folder), chans, str(folder), unused=tuple(sorted(set(unused))))
