"""WFDB records (PhysioNet: MIT-BIH, PTB, MIMIC waveforms), single- and multi-segment, read with the wfdb package.

The header format is PhysioNet's "WFDB header format" (header(5)): the record line is
`name[/segments] signals [fs [samples [base_time [base_date]]]]`. A multi-segment record's header
(`name/3 ...`) lists its segments, one per line (`segment samples`; `~` is a gap); the first
segment of a variable-layout record is its layout header (`name_layout`, 0 samples), which names
the signals but holds none. The record is read from its top header (wfdb joins the segments, gaps
as NaN); segment and layout headers are parts of it and never read as records of their own.

Signals are named as the record names them (`MLII`, `V5`, `II`, `ABP`); they are matched to the
study's channels through the aliases of `pipelines.wearables.device` and the node's mapping.
The patient is a header comment `MRN: X` (or `patient_id: X`), else the record name.
A header without a base date gives a relative-time recording (seconds from its start); a base
date after today is a de-identification shift (MIMIC's year 2704) and is treated the same way.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from datetime import timezone
from pathlib import Path

import numpy as np
import wfdb

from ..errors import SignalError
from ..limits import DEFAULT_LIMITS, IngestLimits
from .device import DeviceRecording, Wants, is_shifted, series
from .recordings import Recording

log = logging.getLogger(__name__)


def _lines(header: Path) -> list[str]:
    with header.open("rb") as f:
        text = f.read(1 << 20).decode("latin-1")  # headers are small; a huge one is not a header
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _segments(header: Path) -> list[str] | None:
    """The segment names of a multi-segment header, None for a single-segment one."""
    lines = _lines(header)
    if not lines or "/" not in lines[0].split()[0]:
        return None
    n = int(lines[0].split()[0].split("/")[1])
    return [ln.split()[0] for ln in lines[1:1 + n]]


@functools.lru_cache(maxsize=64)
def _masters(folder: Path, stamp: float) -> dict[str, Path]:
    """Segment name -> its multi-segment header, for the headers of one folder (`stamp`: the folder's mtime)."""
    found: dict[str, Path] = {}
    for h in sorted(folder.glob("*.hea")):
        try:
            segs = _segments(h)
        except (OSError, ValueError, IndexError):
            continue
        for s in segs or ():
            found[s] = h
    return found


def input_of(path: Path) -> Path | None:
    """A `.hea`; a segment or layout header belongs to the multi-segment record that lists it."""
    if path.suffix.lower() != ".hea":
        return None
    try:
        if _segments(path) is not None:
            return path
    except (OSError, ValueError, IndexError):
        return path  # read, and refused with the reason
    return _masters(path.parent, path.parent.stat().st_mtime).get(path.stem, path)


def parts(header: Path) -> list[Path]:
    """The header and every file it names (signal files; a multi-segment record's segment headers and theirs)."""
    out = [header]
    try:
        lines = _lines(header)
        segs = _segments(header)
    except (OSError, ValueError, IndexError):
        return out
    if segs is not None:
        for s in segs:
            h = header.parent / f"{s}.hea"
            if s != "~" and h.is_file():
                out.extend(parts(h))
        return out
    names = sorted({ln.split()[0] for ln in lines[1:]})
    return out + [header.parent / n for n in names if (header.parent / n).is_file()]


def read(header: Path, wants: Wants, limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[DeviceRecording]:
    """The record whose top header is `header` (see the module docstring); raises `SignalError`."""
    try:
        rec = wfdb.rdrecord(str(header.with_suffix("")), m2s=True)
    except Exception as e:  # wfdb raises many types for damaged records; the record is quarantined
        raise SignalError(f"cannot be read as a WFDB record ({type(e).__name__}: {e}); expected a .hea header and "
                          "its signal files side by side", reason="bad_wfdb", source=header) from None
    names = [str(n) for n in rec.sig_name or []]
    signal = rec.p_signal if rec.p_signal is not None else np.zeros((0, len(names)))
    relative = rec.base_date is None
    start = 0.0
    notes = []
    if not relative:
        when = rec.base_datetime
        when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when
        if is_shifted(when):
            relative = True
            notes.append(f"base date {when.date()} is a de-identification shift; time taken relative to the start")
        else:
            start = when.timestamp()
    seconds = start + np.arange(signal.shape[0]) / float(rec.fs)
    chans = {n: series(seconds, signal[:, i]) for i, n in enumerate(names) if wants(n)}
    mrn = next((c.split(":", 1)[1].strip() for c in rec.comments or []
                if c.lower().replace(" ", "").startswith(("mrn:", "patient_id:"))), rec.record_name)
    yield DeviceRecording(mrn, chans, str(header), relative=relative, unused=tuple(n for n in names if n not in chans),
                          notes=notes)


def read_wfdb(header: Path, channels: Sequence[str]) -> Recording:
    """One WFDB record on the study's `channels` (aliases apply), without a node mapping."""
    from .mapping import WearableMapping, to_recording  # mapping imports the registry, which imports this module

    mapping = WearableMapping()
    dev = next(read(header, lambda n: mapping.study_channel(n, channels) is not None))
    return to_recording(dev, channels, mapping)[0]
