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
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np

from ..cache import IngestCache, content_hash
from ..deid import Deidentifier
from ..errors import DicomError, InputError
from ..limits import DEFAULT_LIMITS, IngestLimits
from ..parallel import SEQUENTIAL, Workers, map_ordered
from ..quarantine import Quarantine
from ..rowfiles import RowFile
from ..wearables.waveform_dicom import WaveformNotImage
from .dicom import DicomInput
from .instances import decode_local, decode_slice, headers
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


def read_images(inputs: Iterable[DicomInput], *, deid: Deidentifier, index_date: date, image_size: int,
                cache: IngestCache, quarantine: Quarantine, patients: Container[str] | None = None,
                study_owners: Mapping[str, str] | None = None,
                into: tuple[Mapping[str, int], RowFile] | None = None, image_dims: int = 2,
                image_depth: int = 16, limits: IngestLimits = DEFAULT_LIMITS,
                workers: Workers = SEQUENTIAL) -> tuple[dict[str, ChosenImage], Counter]:
    """Per patient pseudonym, the chosen image; plus counters (inputs_read, records, parsed, cached, series, unused_*).

    Linking: an instance belongs to the patient its PatientID names. When that pseudonym is not
    among `patients` (the EHR's) but a FHIR ImagingStudy of a known patient names the instance's
    (remapped) StudyInstanceUID, `study_owners` links it to that patient instead.
    `into` = (row by pseudonym, `RowFile` [N, 1, S, S] or [N, 1, D, S, S]): images of those patients are
    written to their row on disk and no image is kept in memory (`ChosenImage.image` is None), so memory
    does not grow with the number of patients. `image_dims` 3: a `[1, image_depth, S, S]` volume of the
    whole chosen series instead of its middle slice. With `into`, only the images of patients with a row are
    decoded (the series the cohort chooses); another patient's chosen series is reported, never decoded.
    `workers` parse the local files' headers and decode their chosen slices (`pipelines.imaging.instances`).
    """
    if image_dims not in (2, 3):
        raise ValueError(f"image_dims must be 2 (slices) or 3 (volumes), got {image_dims!r}")
    stats: Counter = Counter()
    remote: dict[int, DicomInput] = {}  # inputs that are no local file: only these are kept to be read again
    with SeriesIndex() as index:
        passes = headers(inputs, deid=deid, index_date=index_date, cache=cache, stats=stats, limits=limits,
                         workers=workers)
        for k, (inp, parsed) in enumerate(passes):
            stats["inputs_read"] += 1
            if isinstance(parsed.refused, WaveformNotImage):  # read by the wearable readers instead
                stats[f"unused_{WaveformNotImage.reason}"] += 1
                continue
            if parsed.header is None:
                assert parsed.refused is not None
                quarantine.add("image", parsed.refused)
                continue
            header, digest = parsed.header, parsed.digest
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
        picks = [(s, index.members(s)) for s in index.chosen()]
        decoded = iter(()) if image_dims == 3 else _decode_slices(
            [members[len(members) // 2] for s, members in picks if into is None or s.pid in into[0]], remote,
            image_size, cache, workers)
        for s, members in picks:
            mid = members[len(members) // 2]
            slices = len(members) if len(members) > 1 else mid.frames
            row = into[0].get(s.pid) if into is not None else None
            image: np.ndarray | None = None
            if into is not None and row is None:
                pass  # an excluded or unknown patient's image is not needed: never decoded
            elif image_dims == 3:
                image = _volume(s, members, slices, remote, image_size, image_depth, cache, quarantine, stats)
            else:
                image = _slice(mid, slices, next(decoded), cache, quarantine)
            if image is None and (into is None or row is not None):
                continue  # quarantined
            if into is not None and row is not None:
                into[1].write(row, image)
            chosen[s.pid] = ChosenImage(image if into is None else None, mid.day, slices, mid.source,
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


def _decode_slices(mids: list[Member], remote: Mapping[int, DicomInput], image_size: int, cache: IngestCache,
                   workers: Workers) -> Iterator[tuple[np.ndarray | DicomError, bool]]:
    """For each chosen middle slice in order: (its image or why it cannot be decoded, whether from the cache).
    Slices not in the cache are decoded: local files by `workers`, PACS instances here."""
    cached = [cache.get("image", m.digest) is not None for m in mids]
    local = [(m.source, m.path, m.spacing) for m, hit in zip(mids, cached) if not hit and m.path is not None]
    decoded = map_ordered(partial(decode_local, image_size=image_size), local, workers)
    for m, hit in zip(mids, cached):
        entry = cache.get("image", m.digest) if hit else None
        if entry is not None:
            yield entry[1]["image"], True
        elif not hit and m.path is not None:
            yield next(decoded), False
        else:  # a PACS instance, or a cache entry gone since it was listed
            read = remote[m.k].read if m.path is None else Path(m.path).read_bytes
            yield decode_slice(m.source, read, spacing=m.spacing, image_size=image_size), False


def _slice(mid: Member, slices: int, decoded: tuple[np.ndarray | DicomError, bool], cache: IngestCache,
           quarantine: Quarantine) -> np.ndarray | None:
    """The chosen slice as `[1, S, S]` (cached once decoded); None (quarantined) if it could not be decoded."""
    image, from_cache = decoded
    if isinstance(image, DicomError):
        quarantine.add("image", image)
        return None
    if not from_cache:
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
