"""Apple Watch ECG recordings as the Health app exports them: `electrocardiograms/ecg_YYYY-MM-DD.csv`.

Layout (Health > Export All Health Data; one file per 30-second recording, `ecg_2021-02-26_1.csv` for a
second one that day): a header block of `key,value` lines, `Name`, `Date of Birth`, `Recorded Date`
(`2021-02-26 17:43:24 +0100`), `Classification`, `Symptoms`, `Software Version`, `Device`, `Sample Rate`
(`512 hertz`), then `Lead` (`Lead I`) and `Unit` (`µV`), a blank line, and one voltage per line. Name and
Date of Birth identify the person: they are skipped unread, never logged or reported. Voltages are
converted to mV (as WFDB and DICOM ECGs are read); a line that is no number (empty, `-`, `NaN`,
`N/A`) is a missing sample, a gap; a decimal comma and the Unicode minus sign are read. A Recorded Date
in another layout (ISO 8601, no seconds, no offset: taken as UTC, with a note) is read; one that is
no date at all refuses the file, since the samples could not be placed before or after the index date.

The patient is the folder holding the export (`<MRN>/apple_health_export/electrocardiograms/ecg_….csv`,
as `pipelines.wearables.apple_health`), or the folder holding the file.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..errors import SignalError
from ..limits import DEFAULT_LIMITS, IngestLimits
from .apple_health import EXPORT_FOLDER
from .device import DeviceRecording, Wants, head

DEVICE = "apple_ecg"
ECG_FOLDER = "electrocardiograms"
IDENTIFYING = frozenset({"name", "date of birth"})  # header keys never read
#: Recorded Date layouts seen in exports, the Health app's own first
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S %z", "%Y-%m-%d %H:%M %z", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")
TO_MV = {"µv": 1e-3, "μv": 1e-3, "uv": 1e-3, "microvolts": 1e-3, "mv": 1.0, "millivolts": 1.0}
_NAME = re.compile(r"^ecg_\d{4}-\d{2}-\d{2}(_\d+)?\.csv$", re.IGNORECASE)


def input_of(path: Path) -> Path | None:
    """`ecg_YYYY-MM-DD.csv` (or any CSV) whose header block names a Sample Rate and a Lead."""
    if path.suffix.lower() != ".csv":
        return None
    start = head(path, 2048)
    if _NAME.match(path.name) or start.startswith(b"Name,"):
        return path if b"Sample Rate" in start and b"Lead" in start else None
    return None


def patient_of(path: Path) -> str:
    folder = path.parent.parent if path.parent.name.lower() == ECG_FOLDER else path.parent
    return (folder.parent if folder.name == EXPORT_FOLDER else folder).name


def _recorded(text: str, path: Path) -> tuple[float, str | None]:
    text = text.strip().replace("T", " ").replace("Z", " +0000").strip()
    for layout in DATE_FORMATS:
        try:
            when = datetime.strptime(text, layout)
        except ValueError:
            continue
        if when.tzinfo is None:
            return when.replace(tzinfo=UTC).timestamp(), f"{path}: Recorded Date {text!r} has no UTC offset; taken as UTC"
        return when.timestamp(), None
    raise SignalError(f"has Recorded Date {text!r}; expected a date like '2021-02-26 17:43:24 +0100' (the Health "
                      "app's export)", reason="bad_timestamp", source=path)


def _rate(text: str, path: Path) -> float:
    m = re.match(r"^\s*([0-9]+(?:[.,][0-9]+)?)\s*(hertz|hz)?\s*$", text, re.IGNORECASE)
    rate = float(m.group(1).replace(",", ".")) if m else 0.0
    if not rate > 0:
        raise SignalError(f"has Sample Rate {text!r}; expected e.g. '512 hertz'", reason="bad_header", source=path)
    return rate


def _voltage(line: str) -> float:
    text = line.strip().strip('"').replace("\u2212", "-").replace(",", ".")
    try:
        return float(text)
    except ValueError:
        return float("nan")  # a missing-value token: a gap


def read(path: Path, wants: Wants, limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[DeviceRecording]:
    """One recording: the lead the file names, in mV, at its sample rate from its Recorded Date."""
    size = path.stat().st_size
    if size > limits.max_document_bytes:
        raise SignalError(f"has {size} bytes, over limits.max_document_bytes ({limits.max_document_bytes}); expected "
                          "one 30-second recording per file", reason="too_large", source=path)
    lines = path.read_text("utf-8-sig", errors="replace").splitlines()
    header: dict[str, str] = {}
    body = len(lines)
    for k, line in enumerate(lines):
        if not line.strip():
            if "unit" in header:  # the blank line after Unit: the voltages follow
                body = k + 1
                break
            continue
        if math.isfinite(_voltage(line)):  # a number: the header block ended without a blank line
            body = k
            break
        row = next(csv.reader(io.StringIO(line)), [])
        key = row[0].strip().lower() if row else ""
        if key not in IDENTIFYING and len(row) >= 2:
            header[key] = ",".join(row[1:]).strip()
    missing = [k for k in ("recorded date", "sample rate", "lead") if k not in header]
    if missing:
        raise SignalError(f"has no {', '.join(missing)} in its header block; expected the Apple Health ECG layout "
                          "(Recorded Date, Sample Rate, Lead, Unit, then one value per line)", reason="bad_header",
                          source=path)
    start, note = _recorded(header["recorded date"], path)
    rate = _rate(header["sample rate"], path)
    unit = header.get("unit", "µV").strip().lower()
    if unit not in TO_MV:
        raise SignalError(f"has Unit {header.get('unit')!r}; expected µV (or mV)", reason="unknown_unit", source=path)
    lead = header["lead"] or "Lead I"
    if not wants(lead):
        yield DeviceRecording(patient_of(path), {}, str(path), unused=(lead,))
        return
    values = np.array([_voltage(ln) for ln in lines[body:]], dtype=np.float64) * TO_MV[unit]
    if not np.isfinite(values).any():
        raise SignalError("has no voltage after its header block; expected one value per line", reason="no_samples",
                          source=path)
    seconds = start + np.arange(values.size) / rate
    ok = np.isfinite(values)  # a missing sample is a gap, not a shift of the ones after it
    yield DeviceRecording(patient_of(path), {lead: (seconds[ok], values[ok])}, str(path),
                          notes=[note] if note else [])
