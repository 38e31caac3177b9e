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
from ..parallel import SEQUENTIAL, WorkerPool, Workers, fetch_ordered, map_ordered
from ..quarantine import Quarantine
from ..rowfiles import RowFile
from ..wearables.waveform_dicom import WaveformNotImage
from .dicom import DicomInput
from .instances import build_volume, decode_local, decode_slice, fetch, headers, read_member, replay, volume_local
from .series import Member, Series, SeriesIndex
from .series_frames import GEOMETRY

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
                workers: Workers | WorkerPool = SEQUENTIAL,
                waveforms: list[Path] | None = None) -> tuple[dict[str, ChosenImage], Counter]:
    """Per patient pseudonym, the chosen image; plus counters (inputs_read, records, parsed, cached, series, unused_*).

    Linking: an instance belongs to the patient its PatientID names. When that pseudonym is not
    among `patients` (the EHR's) but a FHIR ImagingStudy of a known patient names the instance's
    (remapped) StudyInstanceUID, `study_owners` links it to that patient instead.
    `into` = (row by pseudonym, `RowFile` [N, 1, S, S] or [N, 1, D, S, S]): images of those patients are
    written to their row on disk and no image is kept in memory (`ChosenImage.image` is None), so memory
    does not grow with the number of patients. `image_dims` 3: a `[1, image_depth, S, S]` volume of the
    whole chosen series instead of its middle slice. With `into`, only the images of patients with a row are
    decoded (the series the cohort chooses); another patient's chosen series is reported, never decoded.
    Waveform instances (an ECG) are no image: counted as unused, and the local files among them appended to
    `waveforms` for the signal readers (`pipelines.wearables.waveform_dicom`), so that no file is opened twice to
    find them.
    `workers` (a run's pool, or settings for a pool of this read's own) parse the local files' headers, decode their
    chosen slices and build their volumes (`pipelines.imaging.instances`); a PACS's instances are fetched by threads.
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
                if waveforms is not None and inp.path is not None:
                    waveforms.append(Path(inp.path))
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
        wanted = [(s, members) for s, members in picks if into is None or s.pid in into[0]]
        if image_dims == 3:
            decoded = _build_volumes(wanted, remote, image_size, image_depth, cache, workers)
        else:
            decoded = _decode_slices([members[len(members) // 2] for s, members in wanted], remote, image_size, cache,
                                     workers)
        for s, members in picks:
            mid = members[len(members) // 2]
            slices = len(members) if len(members) > 1 else mid.frames
            row = into[0].get(s.pid) if into is not None else None
            image: np.ndarray | None = None
            if into is not None and row is None:
                pass  # an excluded or unknown patient's image is not needed: never decoded
            elif image_dims == 3:
                image = _volume(members, slices, next(decoded), cache, quarantine, stats)
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
                   workers: Workers | WorkerPool) -> Iterator[tuple[np.ndarray | DicomError, bool]]:
    """For each chosen middle slice in order: (its image or why it cannot be decoded, whether from the cache).
    Slices not in the cache are decoded: local files by `workers`, PACS instances here (fetched by threads)."""
    cached = [cache.has("image", m.digest) for m in mids]
    local = [(m.source, m.path, m.spacing) for m, hit in zip(mids, cached) if not hit and m.path is not None]
    decoded = map_ordered(partial(decode_local, image_size=image_size), local, workers)
    fetched = fetch_ordered(fetch, [remote[m.k] for m, hit in zip(mids, cached) if not hit and m.path is None], workers)
    for m, hit in zip(mids, cached):
        entry = cache.get("image", m.digest) if hit else None
        if entry is not None:
            yield entry[1]["image"], True
        elif not hit:
            if m.path is not None:
                yield next(decoded), False
            else:
                yield decode_slice(m.source, partial(replay, next(fetched)), spacing=m.spacing,
                                   image_size=image_size), False
        else:  # a cache entry gone or found damaged since it was listed
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


def _volume_key(members: list[Member]) -> str:
    return content_hash("\n".join(m.digest for m in members).encode())  # the series' content, in slice order


def _build_volumes(picks: list[tuple[Series, list[Member]]], remote: Mapping[int, DicomInput], image_size: int,
                   depth: int, cache: IngestCache,
                   workers: Workers | WorkerPool) -> Iterator[tuple[np.ndarray | InputError, str | None]]:
    """For each chosen series in order: (its volume or why it cannot be built, its cache key if it was built here,
    None if it came from the cache). Series not in the cache are built: of local files by `workers`; with a PACS
    instance here, its instances fetched one by one."""
    keys = [_volume_key(members) for _, members in picks]
    cached = [cache.has("volume", key) for key in keys]
    local = [all(m.path is not None for m in members) for _, members in picks]
    built = map_ordered(partial(volume_local, image_size=image_size, depth=depth),
                        [(s.uid, members) for (s, members), hit, ok in zip(picks, cached, local) if not hit and ok],
                        workers)

    def read(m: Member) -> bytes:
        if m.path is not None:
            return read_member(m)
        try:
            return remote[m.k].read()
        except OSError as e:
            raise DicomError(str(e), reason="unreadable", source=m.source) from None

    for (s, members), key, hit, ok in zip(picks, keys, cached, local):
        entry = cache.get("volume", key) if hit else None
        if entry is not None:
            yield entry[1]["image"], None
        elif not hit and ok:
            yield next(built), key
        else:  # a PACS instance among its members, or a cache entry gone or found damaged since it was listed
            yield build_volume(s.uid, members, read, image_size=image_size, depth=depth), key


def _volume(members: list[Member], slices: int, built: tuple[np.ndarray | InputError, str | None], cache: IngestCache,
            quarantine: Quarantine, stats: Counter) -> np.ndarray | None:
    """The chosen series as `[1, depth, S, S]` (cached under its key once built); None (quarantined) if it could not
    be built."""
    volume, key = built
    if isinstance(volume, InputError):
        quarantine.add("image", volume)
        if volume.reason != GEOMETRY:  # one instance failed: the rest of its series is valid but cannot be used alone
            stats["unused_incomplete_series"] += len(members) - 1
        return None
    if key is not None:
        log.debug("%s: %d slices -> volume of depth %d", members[0].source, slices, volume.shape[1])
        cache.put("volume", key, {"slices": slices}, {"image": volume})
    return volume
