"""Garmin FIT files (activity and monitoring/wellness), decoded with `fitdecode`.

FIT is Garmin's published binary protocol (FIT SDK, "Flexible and Interoperable Data Transfer"
protocol): a 12/14-byte header ending in `.FIT`, definition messages that lay out the local
message types, data messages, and a CRC-16 over the file. Heart rate comes from `record`
messages (global number 20: `timestamp`, `heart_rate` in bpm; steps as `cadence` are not read)
and from `monitoring` messages (55: `heart_rate` with a `timestamp` or a `timestamp_16`, the low
16 bits of the time, rolled forward from the last full timestamp as the SDK describes).
FIT times count from 1989-12-31T00:00:00Z; fitdecode returns them as UTC datetimes. A damaged
file (bad CRC, truncated) is refused whole. The patient is the file name (`<MRN>.fit`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import fitdecode
import numpy as np

from ..errors import SignalError
from ..limits import DEFAULT_LIMITS, IngestLimits
from .device import DeviceRecording, Wants, series

#: FIT message -> its fields read as native channels
FIT_CHANNELS: dict[str, tuple[str, ...]] = {"record": ("heart_rate",), "monitoring": ("heart_rate",)}
FIT_EPOCH = 631065600  # 1989-12-31T00:00:00Z in POSIX seconds


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
