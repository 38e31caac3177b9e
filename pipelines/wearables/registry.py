"""The wearable readers, in one place: a new device export is one reader module and one line in `READERS`.

A `WearableReader` says which files are its own (`input_of`: the file itself, or the session folder or
multi-segment record it belongs to), what to hash for the cache (`parts`), and how to read one input
into `DeviceRecording`s (`read`, loading only the channels the study `wants`, within `limits`). Files are offered to the readers in `READERS` order, the specific
exports first and fedcare's own CSV layout last; the node config can name the device for a file
pattern instead (`pipelines.wearables.mapping.DevicePattern`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..limits import IngestLimits
from ..inputs import COMPRESSED, input_files
from ..quarantine import Quarantine
from . import (apple_ecg, apple_health, empatica, fitbit, fitbit_account, garmin, openmhealth, recordings, waveform_dicom,
               wfdb_records)
from .device import DeviceRecording, Wants


@dataclass(frozen=True)
class WearableReader:
    """One device export: `input_of(file)` -> the input it belongs to or None; `read(input, wants, limits)` -> recordings."""

    device: str
    input_of: Callable[[Path], Path | None]
    read: Callable[[Path, Wants, IngestLimits], Iterator[DeviceRecording]]
    parts: Callable[[Path], list[Path]] = lambda p: [p]


#: Most specific first; fedcare's own CSV takes any other .csv.
READERS: tuple[WearableReader, ...] = (
    WearableReader("empatica_e4", empatica.input_of, empatica.read, empatica.parts),
    WearableReader("fitbit", fitbit.input_of, fitbit.read, fitbit.parts),
    WearableReader(fitbit_account.DEVICE, fitbit_account.input_of, fitbit_account.read, fitbit_account.parts),
    WearableReader(apple_ecg.DEVICE, apple_ecg.input_of, apple_ecg.read),
    WearableReader("garmin_fit", garmin.fit_input_of, garmin.read_fit),
    WearableReader("garmin_csv", garmin.csv_input_of, garmin.read_csv),
    WearableReader("apple_health", apple_health.input_of, apple_health.read),
    WearableReader("open_mhealth", openmhealth.input_of, openmhealth.read),
    WearableReader("wfdb", wfdb_records.input_of, wfdb_records.read, wfdb_records.parts),
    WearableReader(waveform_dicom.DEVICE, waveform_dicom.input_of, waveform_dicom.read),
    WearableReader("fedcare_csv", recordings.input_of, recordings.read),
)
DEVICES: tuple[str, ...] = tuple(r.device for r in READERS)
_BY_DEVICE = {r.device: r for r in READERS}


def reader(device: str) -> WearableReader:
    return _BY_DEVICE[device]


def wearable_inputs(paths: Sequence[Path], quarantine: Quarantine | None,
                    device_for: Callable[[Path], str | None] = lambda p: None,
                    devices: Sequence[str] | None = None,
                    unclaimed: list[Path] | None = None) -> Iterator[tuple[WearableReader, Path]]:
    """Each input under `paths` once, with its reader (`device_for` names one by file pattern; else `READERS` order).

    Files given directly are always read (by the first reader claiming them, else as fedcare CSV); files
    found in folders that no reader claims are not inputs (signal files beside a WFDB header, notes).
    `devices`: only these readers, and only files they claim (DICOM waveforms among a node's DICOM folders).
    `unclaimed` collects the files no reader claimed (some are parts of an input: `unread_files`).
    """
    seen: set[Path] = set()
    named = {Path(p) for p in paths} if devices is None else set()
    readers = READERS if devices is None else tuple(_BY_DEVICE[d] for d in devices)
    for f in input_files(paths, lambda f: True, quarantine, "signal"):
        forced = device_for(f)
        candidates = (_BY_DEVICE[forced],) if forced else readers
        found = next(((r, i) for r in candidates if (i := r.input_of(f)) is not None), None)
        if found is None and (forced or f in named):
            found = (candidates[-1] if forced else _BY_DEVICE["fedcare_csv"], f)
        if found is None and f.name.lower().endswith(COMPRESSED) and quarantine is not None:
            quarantine.add("signal", InputError(
                "is compressed and no wearable reader reads it (only an Empatica E4 session zip is read); it was "
                "skipped. Decompress it into the input folder", reason="compressed_not_read", source=f))
        if found is None and unclaimed is not None:
            unclaimed.append(f)
        if found is None or found[1] in seen:
            continue
        seen.add(found[1])
        yield found


def unread_files(unclaimed: Sequence[Path], inputs: Sequence[tuple[WearableReader, Path]]) -> list[Path]:
    """The unclaimed files that are no part of any input read (a WFDB record's signal files are parts of it)."""
    parts = {p for r, i in inputs for p in r.parts(i)}
    return [f for f in unclaimed if f not in parts]


def input_digest(r: WearableReader, path: Path, block: int = 1 << 20) -> str:
    """SHA-256 over the input's files (names and bytes), read block by block: an export may be gigabytes."""
    h = hashlib.sha256(r.device.encode())
    for part in r.parts(path):
        h.update(part.name.encode() + b"\0")
        with part.open("rb") as f:
            while data := f.read(block):
                h.update(data)
    return h.hexdigest()
