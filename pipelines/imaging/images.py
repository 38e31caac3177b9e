"""DICOM instances -> one image per patient: grouped into series, the latest series chosen.

Instances are streamed: each is read once for its header (de-identified at once, see
`pipelines.deid`), grouped by (patient pseudonym, SeriesInstanceUID) into series in an on-disk
index (`pipelines.imaging.series`, so memory does not grow with the number of instances), and a
series' slices are ordered along the slice normal (ImagePositionPatient, then
InstanceNumber). Per patient the latest series on or before the index date is chosen and
only its middle slice (or the middle frame of a multi-frame instance) is decoded, so memory
does not grow with the size of the series. A study with `cohort.image_dims = 3` gets the whole
series instead: its slice geometry is checked from the index and its slices are decoded one
instance at a time (`pipelines.imaging.series_frames`) into a `[1, D, S, S]` volume
(`pipelines.imaging.volumes`); a series that is not one regular acquisition is quarantined as a whole.
Headers, images and volumes are cached per instance content (`pipelines.cache`; a volume by
the content of all its instances, in order). An instance whose PatientID is unknown to the EHR is linked
through a FHIR ImagingStudy that names its StudyInstanceUID (both remapped alike).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Container, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np

from ..cache import IngestCache, content_hash
from ..deid import Deidentifier
from .dicom import DicomHeader, DicomInput, normalise_slice, read_frame, read_header
from ..errors import EXHAUSTION, DicomError, InputError, exhausted
from ..limits import DEFAULT_LIMITS, IngestLimits
from ..quarantine import Quarantine
from ..rowfiles import RowFile
from ..wearables.waveform_dicom import WaveformNotImage
from .series import Member, Series, SeriesIndex
from .series_frames import GEOMETRY, check_geometry, series_frames, series_source
from .volumes import series_volume

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChosenImage:
    image: np.ndarray | None  # float32 [1, S, S] (or [1, D, S, S] in 3D); None once written to the dataset's row file
    day: int | None  # relative to the index date
    slices: int  # instances (or frames) in the chosen series
    source: str
    linked_by: str = "patient_id"  # or "imaging_study": PatientID unknown, study named by a FHIR ImagingStudy
    series: int = 1  # the patient's series on or before the index date, among which this one was chosen


def _header(inp: DicomInput, deid: Deidentifier, index_date: date, cache: IngestCache, stats: Counter,
            limits: IngestLimits) -> tuple[DicomHeader, str]:
    try:
        data = inp.read()
    except OSError as e:
        raise DicomError(f"cannot be read ({e}); check the path and its permissions", reason="unreadable",
                         source=inp.source) from None
    digest = content_hash(data)
    hit = cache.get("dicom-header", digest)
    if hit is not None:
        meta = hit[0]
        stats["cached"] += 1
        return DicomHeader(**{**meta, "spacing": tuple(meta["spacing"])}), digest
    try:
        header = read_header(data, inp.source, deid, index_date, limits)
    except EXHAUSTION as e:  # one file never aborts the run
        why = exhausted(e, inp.source)
        raise DicomError(str(why).removeprefix(f"{inp.source}: "), reason=why.reason, source=inp.source) from None
    stats["parsed"] += 1
    cache.put("dicom-header", digest, asdict(header))
    return header, digest


def read_images(inputs: Iterable[DicomInput], *, deid: Deidentifier, index_date: date, image_size: int,
                cache: IngestCache, quarantine: Quarantine, patients: Container[str] | None = None,
                study_owners: Mapping[str, str] | None = None,
                into: tuple[Mapping[str, int], RowFile] | None = None, image_dims: int = 2,
                image_depth: int = 16, limits: IngestLimits = DEFAULT_LIMITS) -> tuple[dict[str, ChosenImage], Counter]:
    """Per patient pseudonym, the chosen image; plus counters (inputs_read, records, parsed, cached, series, unused_*).

    Linking: an instance belongs to the patient its PatientID names. When that pseudonym is not
    among `patients` (the EHR's) but a FHIR ImagingStudy of a known patient names the instance's
    (remapped) StudyInstanceUID, `study_owners` links it to that patient instead.
    `into` = (row by pseudonym, `RowFile` [N, 1, S, S] or [N, 1, D, S, S]): images of those patients are
    written to their row on disk and no image is kept in memory (`ChosenImage.image` is None), so memory
    does not grow with the number of patients. `image_dims` 3: a `[1, image_depth, S, S]` volume of the
    whole chosen series instead of its middle slice.
    """
    if image_dims not in (2, 3):
        raise ValueError(f"image_dims must be 2 (slices) or 3 (volumes), got {image_dims!r}")
    stats: Counter = Counter()
    remote: dict[int, DicomInput] = {}  # inputs that are no local file: only these are kept to be read again
    with SeriesIndex() as index:
        for k, inp in enumerate(inputs):
            stats["inputs_read"] += 1
            try:
                header, digest = _header(inp, deid, index_date, cache, stats, limits)
            except WaveformNotImage:  # read by the wearable readers instead
                stats[f"unused_{WaveformNotImage.reason}"] += 1
                continue
            except DicomError as e:
                quarantine.add("image", e)
                continue
            stats["records"] += 1
            pid, via_study = header.pseudonym, False
            if patients is not None and pid not in patients and study_owners and header.study_uid in study_owners:
                header, via_study = replace(header, pseudonym=study_owners[header.study_uid]), True
            if inp.path is None:
                remote[k] = inp
            index.add(k, header, digest, inp.source, inp.path, via_study)
        stats["series"] = len(index)
        chosen: dict[str, ChosenImage] = {}
        eligible: Counter = Counter()
        _choose_latest(index, stats, eligible)
        for s in index.chosen():
            members = index.members(s)
            mid = members[len(members) // 2]
            slices = len(members) if len(members) > 1 else mid.frames
            if image_dims == 3:
                image = _volume(s, members, slices, remote, image_size, image_depth, cache, quarantine, stats)
            else:
                image = _image(mid, slices, remote, image_size, cache, quarantine)
            if image is None:
                continue
            kept: np.ndarray | None = image
            if into is not None:
                row = into[0].get(s.pid)
                if row is not None:
                    into[1].write(row, image)
                kept = None  # on disk, or no row: an excluded or unknown patient's image is not needed
            chosen[s.pid] = ChosenImage(kept, mid.day, slices, mid.source,
                                        "imaging_study" if index.via_study(s.uid) else "patient_id", eligible[s.pid])
    log.info("DICOM: %d instances in %d series, %d patients with an image", stats["records"], stats["series"], len(chosen))
    return chosen, stats


def _choose_latest(index: SeriesIndex, stats: Counter, eligible: Counter) -> None:
    """Per patient, choose the latest series on or before the index date (ties: the one that arrived first).

    Choices are kept in the index, ordered by when each patient's first eligible series arrived;
    the other series are counted as unused; `eligible` counts each patient's series on or before the index date.
    """
    current: tuple[int, Series] | None = None  # (arrival of the patient's first eligible series, best so far)
    for s in index.series():  # by patient, then arrival
        if current is not None and current[1].pid != s.pid:
            index.choose(*current)
            current = None
        if s.day is not None and s.day > 0:
            stats["unused_after_index_date"] += s.size
            continue
        eligible[s.pid] += 1
        if current is None:
            current = (s.first, s)
            continue
        old = current[1]
        if (old.day if old.day is not None else -10**9) >= (s.day if s.day is not None else -10**9):
            stats["unused_superseded"] += s.size
            continue
        stats["unused_superseded"] += old.size
        current = (current[0], s)
    if current is not None:
        index.choose(*current)


def _image(mid: Member, slices: int, remote: Mapping[int, DicomInput], image_size: int, cache: IngestCache,
           quarantine: Quarantine) -> np.ndarray | None:
    """The chosen slice as `[1, S, S]`, from the cache or decoded; None (quarantined) if it cannot be decoded."""
    hit = cache.get("image", mid.digest)
    if hit is not None:
        return hit[1]["image"]
    try:
        data = remote[mid.k].read() if mid.path is None else Path(mid.path).read_bytes()
        pixels = read_frame(data, mid.source)
    except (DicomError, OSError) as e:
        quarantine.add("image", e if isinstance(e, DicomError) else DicomError(str(e), reason="unreadable", source=mid.source))
        return None
    image = normalise_slice(pixels, image_size, mid.spacing)
    cache.put("image", mid.digest, {"slices": slices}, {"image": image})
    return image


def _volume(s: Series, members: list[Member], slices: int, remote: Mapping[int, DicomInput], image_size: int, depth: int,
            cache: IngestCache, quarantine: Quarantine, stats: Counter) -> np.ndarray | None:
    """The chosen series as `[1, depth, S, S]`, from the cache or built slice by slice; None (quarantined) if it cannot be."""
    key = content_hash("\n".join(m.digest for m in members).encode())  # the series' content, in slice order
    hit = cache.get("volume", key)
    if hit is not None:
        return hit[1]["image"]
    source = series_source(s.uid, members)

    def read(m: Member) -> bytes:
        try:
            return remote[m.k].read() if m.path is None else Path(m.path).read_bytes()
        except OSError as e:
            raise DicomError(str(e), reason="unreadable", source=m.source) from None

    try:
        check_geometry(members, source)
        volume = series_volume(series_frames(members, read, source), image_size=image_size, depth=depth,
                               spacing=members[0].spacing, source=source)
    except InputError as e:
        quarantine.add("image", e)
        if e.reason != GEOMETRY:  # one instance failed: the rest of its series is valid but cannot be used alone
            stats["unused_incomplete_series"] += len(members) - 1
        return None
    log.debug("%s: %d slices -> volume of depth %d", source, slices, depth)
    cache.put("volume", key, {"slices": slices}, {"image": volume})
    return volume
