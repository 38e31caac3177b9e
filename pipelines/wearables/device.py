"""A recording as a device exported it, before it is mapped onto the study's channels.

Every wearable reader (`pipelines.wearables.registry`) yields `DeviceRecording`s: one patient, the
device's own channel names, each channel with its own sample times (a heart rate at 1 Hz and an
accelerometer at 32 Hz stay apart until `pipelines.wearables.mapping.to_recording` puts them on one
time axis). A reader is told which native channels the study can use (`wants`) and loads only
those; the others are named in `unused` so the ingest report can say what was left out.

Time: POSIX seconds (UTC) when the export states a calendar time; seconds from the start of the
recording (`relative=True`) when it does not (a WFDB header without a base date) or when the
stated date is a de-identification shift (`is_shifted`: MIMIC moves dates to years such as 2704).
A relative recording cannot be placed before or after the index date; its window is its end.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

#: `wants(native channel name)`: whether the study can use the channel (after the node's mapping and aliases).
Wants = Callable[[str], bool]

#: Canonical channel -> names devices and formats use for it (compared after `normal_name`).
ALIASES: dict[str, tuple[str, ...]] = {
    "heart_rate": ("hr", "heartrate", "heart_rate_bpm", "pulse", "bpm", "hkquantitytypeidentifierheartrate"),
    "steps": ("step_count", "stepcount", "step", "hkquantitytypeidentifierstepcount"),
    "spo2": ("sao2", "oxygen_saturation", "hkquantitytypeidentifieroxygensaturation"),
    "ecg_i": ("i", "lead_i", "ecg_lead_i"),
    "ecg_ii": ("ii", "mlii", "lead_ii", "ecg_lead_ii", "ml2"),
    "ecg_iii": ("iii", "lead_iii", "ecg_lead_iii"),
    "ecg_avr": ("avr", "lead_avr"), "ecg_avl": ("avl", "lead_avl"), "ecg_avf": ("avf", "lead_avf"),
    **{f"ecg_v{k}": (f"v{k}", f"lead_v{k}", f"mlv{k}") for k in range(1, 7)},
}
_CANONICAL = {alias: name for name, aliases in ALIASES.items() for alias in (name, *aliases)}


def normal_name(name: str) -> str:
    """'Lead II' -> 'lead_ii', 'ACC X' -> 'acc_x': lower case, runs of spaces/hyphens/dots as one underscore."""
    return re.sub(r"[\s\-.]+", "_", str(name).strip().lower()).strip("_")


def canonical(name: str) -> str:
    """The canonical channel a name stands for (`ALIASES`), else its `normal_name`: II, MLII and 'lead II' are ecg_ii."""
    n = normal_name(name)
    return _CANONICAL.get(n, n)


def head(path: Path, size: int = 4096) -> bytes:
    """The first `size` bytes of a file (b"" if it cannot be read): how a reader recognises its own exports."""
    try:
        with path.open("rb") as f:
            return f.read(size)
    except OSError:
        return b""


def is_shifted(when: datetime, *, now: datetime | None = None) -> bool:
    """A date after today cannot be a real recording: it is a de-identification shift (MIMIC's year 2704)."""
    now = now or datetime.now(timezone.utc)
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return when > now


@dataclass
class DeviceRecording:
    """One patient's recording with the device's channel names; `channels[name] = (seconds [n], values [n])`."""

    patient_id: str
    channels: dict[str, tuple[np.ndarray, np.ndarray]]
    source: str
    relative: bool = False
    unused: tuple[str, ...] = ()  # native channels present but not loaded (the study cannot use them)
    notes: list[str] = field(default_factory=list)  # what the reader assumed, for the log (e.g. a shifted date)


def series(seconds: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One channel as float64 (seconds, values), sorted by time; samples without a finite time or value (a missing
    value, NaN, Inf) are left out, so they are gaps; duplicate times: the first one wins."""
    t = np.asarray(seconds, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(v)
    t, v = t[ok], v[ok]
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    keep = np.concatenate([[True], np.diff(t) > 0]) if t.size else np.zeros(0, bool)
    return t[keep], v[keep]
