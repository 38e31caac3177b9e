"""The chosen series' frames for the 3D path: slice geometry checked, then decoded one instance at a time.

A volume is only meaningful when its slices are one acquisition on one regular grid. Before
any pixel is decoded, the headers in the series index (`pipelines.imaging.series`) are checked: one
PixelSpacing, either every slice or none with an ImagePositionPatient, no two slices at the
same position, gaps between neighbouring slices within `GAP_TOLERANCE` of their median (a
missing or quarantined slice, or two interleaved acquisitions, break that), and a multi-frame
instance only on its own (frames of several multi-frame instances cannot be ordered without
their per-frame functional groups). While decoding, every instance must have the first one's
ImageOrientationPatient and frame size. A series that fails is refused with
`DicomError(reason="inconsistent_series_geometry")` whose source names the (remapped) series
and its first file, and ingestion quarantines it as a whole.

Slices come in the index's order: along the slice normal (ImagePositionPatient), then
InstanceNumber; frames of a multi-frame instance in stored order. Only one instance's pixels
are held at a time (`series_volume` reduces each frame as it arrives).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .dicom import read_frames
from ..errors import DicomError
from .series import Member

log = logging.getLogger(__name__)
GEOMETRY = "inconsistent_series_geometry"
GAP_TOLERANCE = 0.2  # largest relative deviation of a slice gap from the series' median gap
_COSINE_TOLERANCE = 1e-3
_SPACING_TOLERANCE = 1e-3  # relative


def series_source(series_uid: str, members: Sequence[Member]) -> str:
    """How a quarantine entry names a series: its remapped UID, size and first file (entries stay at the silo)."""
    first = members[0].source if members else "no instances"
    return f"series {series_uid} ({len(members)} instances, first {first})"


def check_geometry(members: Sequence[Member], source: str) -> None:
    """Refuse a series whose headers cannot form one volume; see the module docstring."""
    def refuse(what: str) -> DicomError:
        return DicomError(f"{what}; expected one acquisition on a regular grid to build a volume. Export the series "
                          "again from the PACS, or pick a complete one", reason=GEOMETRY, source=source)

    if len(members) > 1 and any(m.frames > 1 for m in members):
        raise refuse(f"mixes {sum(m.frames > 1 for m in members)} multi-frame instances with {len(members)} instances "
                     "in all, whose frames cannot be ordered")
    spacings = {m.spacing for m in members}
    ref = members[0].spacing
    if any(abs(a - b) > _SPACING_TOLERANCE * max(a, b) for sp in spacings for a, b in zip(sp, ref)):
        raise refuse(f"has {len(spacings)} different PixelSpacing values {sorted(spacings)}")
    positions = [m.position for m in members]
    known = [p for p in positions if p is not None]
    if known and len(known) != len(positions):
        raise refuse(f"has ImagePositionPatient on {len(known)} of its {len(positions)} slices")
    if len(known) < 2:
        return
    gaps = np.diff(np.asarray(known, dtype=np.float64))  # the index orders by position
    if (np.abs(gaps) < 1e-3).any():
        at = known[int(np.argmin(np.abs(gaps)))]
        raise refuse(f"has two slices at the same position ({at:.2f} mm along the slice normal)")
    median = float(np.median(gaps))
    worst = float(np.max(np.abs(gaps - median)))
    if worst > GAP_TOLERANCE * median:
        raise refuse(f"has slice gaps from {gaps.min():.2f} to {gaps.max():.2f} mm around a median of {median:.2f} mm "
                     "(a slice is missing, or two acquisitions are interleaved)")


def series_frames(members: Sequence[Member], read: Callable[[Member], bytes], source: str) -> Iterator[np.ndarray]:
    """Decode the members in order and yield their frames `[H, W]`; refuse a change of orientation or frame size.

    `read(member)` returns the instance's bytes; a decoding error is the instance's own (its source
    names the file), a geometry error names the series (`source`).
    """
    first: tuple[tuple[float, ...] | None, tuple[int, ...]] | None = None
    for m in members:
        frames, orientation = read_frames(read(m), m.source)
        shape = frames[0].shape
        if first is None:
            first = (orientation, shape)
        else:
            o0, s0 = first
            if (o0 is None) != (orientation is None) or (o0 is not None and orientation is not None and
                                                        max(abs(a - b) for a, b in zip(o0, orientation)) > _COSINE_TOLERANCE):
                raise DicomError(f"changes ImageOrientationPatient from {o0} to {orientation} at {m.source}; expected one "
                                 "acquisition to build a volume. Export the series again from the PACS, or pick a complete "
                                 "one", reason=GEOMETRY, source=source)
            if shape != s0:
                raise DicomError(f"changes frame size from {s0} to {shape} at {m.source}; expected one acquisition to "
                                 "build a volume. Export the series again from the PACS, or pick a complete one",
                                 reason=GEOMETRY, source=source)
        yield from frames
