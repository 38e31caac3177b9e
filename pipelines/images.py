"""DICOM instances -> one image per patient: grouped into series, the latest series chosen.

Instances are streamed: each is read once for its header (de-identified at once, see
`pipelines.deid`), grouped by (patient pseudonym, SeriesInstanceUID) into series, and a
series' slices are ordered along the slice normal (ImagePositionPatient, then
InstanceNumber). Per patient the latest series on or before the index date is chosen and
only its middle slice (or the middle frame of a multi-frame instance) is decoded, so memory
does not grow with the size of the series. Headers and images are cached per instance
content (`pipelines.cache`). An instance whose PatientID is unknown to the EHR is linked
through a FHIR ImagingStudy that names its StudyInstanceUID (both remapped alike).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Container, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import date

import numpy as np

from .cache import IngestCache, content_hash
from .deid import Deidentifier
from .dicom import DicomHeader, DicomInput, normalise_slice, read_frame, read_header
from .errors import DicomError
from .quarantine import Quarantine
from .rowfiles import RowFile

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChosenImage:
    image: np.ndarray | None  # float32 [1, S, S]; None once written to the dataset's row file
    day: int | None  # relative to the index date
    slices: int  # instances (or frames) in the chosen series
    source: str
    linked_by: str = "patient_id"  # or "imaging_study": PatientID unknown, study named by a FHIR ImagingStudy


@dataclass(slots=True)
class _Member:
    header: DicomHeader
    digest: str
    input: DicomInput


def _header(inp: DicomInput, deid: Deidentifier, index_date: date, cache: IngestCache, stats: Counter) -> tuple[DicomHeader, str]:
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
    header = read_header(data, inp.source, deid, index_date)
    stats["parsed"] += 1
    cache.put("dicom-header", digest, asdict(header))
    return header, digest


def _slice_order(m: _Member) -> tuple[float, int]:
    return (m.header.position if m.header.position is not None else float(m.header.instance), m.header.instance)


def read_images(inputs: Iterable[DicomInput], *, deid: Deidentifier, index_date: date, image_size: int,
                cache: IngestCache, quarantine: Quarantine, patients: Container[str] | None = None,
                study_owners: Mapping[str, str] | None = None,
                into: tuple[Mapping[str, int], RowFile] | None = None) -> tuple[dict[str, ChosenImage], Counter]:
    """Per patient pseudonym, the chosen image; plus counters (inputs_read, records, parsed, cached, series, unused_*).

    Linking: an instance belongs to the patient its PatientID names. When that pseudonym is not
    among `patients` (the EHR's) but a FHIR ImagingStudy of a known patient names the instance's
    (remapped) StudyInstanceUID, `study_owners` links it to that patient instead.
    `into` = (row by pseudonym, `RowFile` [N, 1, S, S]): images of those patients are written to their
    row on disk and no image is kept in memory (`ChosenImage.image` is None), so memory does not
    grow with the number of patients.
    """
    stats: Counter = Counter()
    series: dict[tuple[str, str], list[_Member]] = defaultdict(list)
    via_study: set[str] = set()
    for inp in inputs:
        stats["inputs_read"] += 1
        try:
            header, digest = _header(inp, deid, index_date, cache, stats)
        except DicomError as e:
            quarantine.add("image", e)
            continue
        stats["records"] += 1
        pid = header.pseudonym
        if patients is not None and pid not in patients and study_owners and header.study_uid in study_owners:
            pid = study_owners[header.study_uid]
            header = replace(header, pseudonym=pid)
            via_study.add(header.series_uid)
        series[(pid, header.series_uid)].append(_Member(header, digest, inp))
    stats["series"] = len(series)

    best: dict[str, list[_Member]] = {}
    for (pid, _), members in series.items():
        days = [m.header.day for m in members if m.header.day is not None]
        day = max(days) if days else None
        if day is not None and day > 0:
            stats["unused_after_index_date"] += len(members)
            continue
        old = best.get(pid)
        if old is not None:
            old_day = max((m.header.day for m in old if m.header.day is not None), default=None)
            if (old_day if old_day is not None else -10**9) >= (day if day is not None else -10**9):
                stats["unused_superseded"] += len(members)
                continue
            stats["unused_superseded"] += len(old)
        best[pid] = members

    chosen: dict[str, ChosenImage] = {}
    for pid, members in best.items():
        members.sort(key=_slice_order)
        mid = members[len(members) // 2]
        slices = len(members) if len(members) > 1 else mid.header.frames
        hit = cache.get("image", mid.digest)
        if hit is not None:
            image = hit[1]["image"]
        else:
            try:
                pixels = read_frame(mid.input.read(), mid.input.source)
            except (DicomError, OSError) as e:
                quarantine.add("image", e if isinstance(e, DicomError) else DicomError(str(e), reason="unreadable",
                                                                                       source=mid.input.source))
                continue
            image = normalise_slice(pixels, image_size, mid.header.spacing)
            cache.put("image", mid.digest, {"slices": slices}, {"image": image})
        kept: np.ndarray | None = image
        if into is not None:
            row = into[0].get(pid)
            if row is not None:
                into[1].write(row, image)
            kept = None  # on disk, or no row: an excluded or unknown patient's image is not needed
        chosen[pid] = ChosenImage(kept, mid.header.day, slices, mid.input.source,
                                  "imaging_study" if mid.header.series_uid in via_study else "patient_id")
    log.info("DICOM: %d instances in %d series, %d patients with an image", stats["records"], len(series), len(chosen))
    return chosen, stats
