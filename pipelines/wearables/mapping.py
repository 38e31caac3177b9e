"""The node's wearable mapping (`[wearables]` in node.toml) and the step from a device's channels to the study's.

    [wearables]
    channels = { "Pulse" = "heart_rate", "MLII" = "ecg_ii" }   # native name -> study channel
    [[wearables.devices]]
    pattern = "garmin/*.csv"                                    # glob on the path below the input folder
    device = "garmin_csv"                                       # one of registry.DEVICES

A native channel belongs to a study channel when the node's `channels` maps it there, else when
both name the same canonical channel (`pipelines.wearables.device.ALIASES`: II, MLII and 'lead II'
are one lead). What the study cannot use is reported by name (`WearableNotes`), never dropped silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import SignalError
from .device import DeviceRecording, canonical

if TYPE_CHECKING:
    from .recordings import Recording


class DevicePattern(BaseModel):
    """Files whose path matches `pattern` (fnmatch, on the path below the input folder or the file name) are `device`."""

    model_config = ConfigDict(extra="forbid")
    pattern: str = Field(min_length=1)
    device: str

    @field_validator("device")
    @classmethod
    def _known(cls, v: str) -> str:
        from .registry import DEVICES  # the registry imports the readers, which need nothing from here

        if v not in DEVICES:
            raise ValueError(f"device {v!r} is not a wearable reader; expected one of {list(DEVICES)}")
        return v


class WearableMapping(BaseModel):
    """`[wearables]` of the node config: native channel names to study channels, and the device per file pattern."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    channels: dict[str, str] = {}
    devices: list[DevicePattern] = []

    def device_for(self, path: Path) -> str | None:
        text = path.as_posix()
        return next((d.device for d in self.devices if fnmatch(path.name, d.pattern) or fnmatch(text, f"*/{d.pattern}")),
                    None)

    def study_channel(self, native: str, channels: Sequence[str]) -> str | None:
        """The study channel `native` fills, or None (the study has no use for it)."""
        named = {k.strip().lower(): v for k, v in self.channels.items()}.get(native.strip().lower())
        if named is not None:
            return named if named in channels else None
        c = canonical(native)
        return next((s for s in channels if canonical(s) == c), None)


@dataclass
class WearableNotes:
    """What the ingest report says about wearable files: inputs per device, the mapping used, channels left out."""

    devices: Counter = field(default_factory=Counter)
    mappings: dict[str, str] = field(default_factory=dict)  # "device: native" -> study channel
    unused: dict[str, set[str]] = field(default_factory=dict)  # device -> native channels the study did not use

    def add(self, device: str, used: dict[str, str], unused: Sequence[str]) -> None:
        self.mappings.update({f"{device}: {k}": v for k, v in used.items()})
        if unused:
            self.unused.setdefault(device, set()).update(unused)

    def warnings(self) -> list[str]:
        return [f"{device}: channels {sorted(names)} map to no study channel; map them in [wearables] channels of the "
                "node config if the study should use them" for device, names in sorted(self.unused.items())]


def channel_map(dev: DeviceRecording, channels: Sequence[str], mapping: WearableMapping) -> dict[str, str]:
    """Native channel -> the study channel it fills (the first native channel wins a study channel)."""
    used: dict[str, str] = {}
    for native in dev.channels:
        target = mapping.study_channel(native, channels)
        if target is not None and target not in used.values():
            used[native] = target
    return used


def to_recording(dev: DeviceRecording, channels: Sequence[str], mapping: WearableMapping) -> tuple[Recording, dict[str, str]]:
    """The study's channels on one time axis (the union of the channels' sample times, NaN where a channel has no
    sample); also the mapping used (native -> study). Raises `SignalError` when a study channel has no source."""
    used = channel_map(dev, channels, mapping)
    missing = [c for c in channels if c not in used.values()]
    if missing:
        found = sorted([*dev.channels, *dev.unused])
        raise SignalError(f"(patient record {dev.patient_id!r}) has channels {found} but none for the study's {missing}; "
                          "expected each study channel (map a native name to it in [wearables] channels of the node "
                          "config)", reason="missing_column", source=dev.source)
    times = [dev.channels[n][0] for n in used]
    seconds = np.unique(np.concatenate(times)) if times else np.zeros(0)
    if seconds.size == 0:
        raise SignalError(f"(patient record {dev.patient_id!r}) has no samples", reason="no_samples", source=dev.source)
    values = np.full((len(channels), seconds.size), np.nan)
    for native, target in used.items():
        t, v = dev.channels[native]
        values[list(channels).index(target), np.searchsorted(seconds, t)] = v
    from .recordings import Recording  # pandas: only when data is read, not when node.toml is

    return Recording(dev.patient_id, seconds, values, dev.source, relative=dev.relative), used
