"""One silo's ingestion: FHIR + DICOM + wearable files -> `MultimodalDataset` + `IngestReport`.

Steps: read each modality (refused inputs go to the quarantine with a reason naming the
file), join per patient by MRN, apply the cohort (age, prevalent label), build the tensors,
then replace the MRN by a keyed pseudonym, HMAC-SHA256(pseudonym_key, MRN) (RFC 2104), so
that the same patient gets the same pseudonym in every run and modality at this silo while
nobody without the key can link it back. No name, MRN, address or file path is kept in the
dataset or the report; quarantine entries (which name local files) stay at the silo.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field

from .cohort import INDEX_DATE, MODALITIES, CohortLike
from .dataset import MultimodalDataset, normalise_ehr
from .dicom import DicomSlice, dicom_files, image_transform, read_slice, normalise_slice
from .ehr import age_at, check_features, ehr_values, has_observed_ehr, label_of
from .errors import ConfigurationError, DicomError, InputError, SignalError
from .fhir import read_fhir
from .quarantine import Quarantine
from .wearables import Window, read_recording, wearable_files, window

log = logging.getLogger(__name__)
MIN_KEY_BYTES = 16


class ModalityReport(BaseModel):
    inputs_read: int = 0  # files opened
    records: int = 0  # records accepted (FHIR resources, images, recordings)
    patients: int = 0  # distinct patients with a usable record of this modality
    samples: int = 0  # samples of the dataset with this modality present
    quarantined: dict[str, int] = Field(default_factory=dict)  # by reason
    unused: dict[str, int] = Field(default_factory=dict)  # valid but not used, by reason


class IngestReport(BaseModel):
    """Counts only: safe to log and share (no identifiers, no file paths)."""

    index_date: date
    modalities: dict[str, ModalityReport]  # keys: "ehr", "image", "signal"
    patients: int  # FHIR patients with an MRN
    samples: int
    positives: int
    excluded: dict[str, int]  # cohort criteria, by reason
    linked: dict[str, int]  # samples by modalities present, e.g. {"ehr+image+signal": 250}
    quarantined_total: int
    mean_signal_coverage: float | None = None


@dataclass
class IngestResult:
    dataset: MultimodalDataset
    report: IngestReport
    quarantine: Quarantine  # names local files: keep at the silo


def pseudonym(mrn: str, key: bytes) -> str:
    return hmac.new(key, mrn.encode("utf-8"), hashlib.sha256).hexdigest()


def _read_images(paths: Sequence[Path], index_date: date, q: Quarantine, rep: ModalityReport) -> dict[str, DicomSlice]:
    chosen: dict[str, DicomSlice] = {}
    unused: Counter = Counter()
    for path in dicom_files(paths):
        rep.inputs_read += 1
        try:
            s = read_slice(path)
        except DicomError as e:
            q.add("image", e)
            continue
        rep.records += 1
        if s.study_date is not None and s.study_date > index_date:
            unused["after_index_date"] += 1
            continue
        old = chosen.get(s.patient_id)
        if old is not None:
            unused["superseded"] += 1
            if (old.study_date or date.min) >= (s.study_date or date.min):
                continue
        chosen[s.patient_id] = s
    rep.unused = dict(unused)
    return chosen


def _read_signals(paths: Sequence[Path], cohort: CohortLike, index_date: date, q: Quarantine,
                  rep: ModalityReport) -> dict[str, Window]:
    chosen: dict[str, Window] = {}
    unused: Counter = Counter()
    channels = tuple(cohort.signal_channels)
    for path in wearable_files(paths):
        rep.inputs_read += 1
        try:
            rec = read_recording(path, channels)
            w = window(rec, channels, rate_hz=cohort.signal_rate_hz, length=cohort.signal_length, index_date=index_date)
        except SignalError as e:
            q.add("signal", e)
            continue
        rep.records += 1
        if w is None:
            unused["after_index_date"] += 1
            continue
        old = chosen.get(rec.patient_id)
        if old is not None:
            unused["superseded"] += 1
            if old.end >= w.end:
                continue
        chosen[rec.patient_id] = w
    rep.unused = dict(unused)
    return chosen


def ingest_silo(*, fhir: Sequence[Path], dicom: Sequence[Path], wearables: Sequence[Path], cohort: CohortLike,
                pseudonym_key: bytes, index_date: date = INDEX_DATE) -> IngestResult:
    """Turn one silo's files into training samples; see the module docstring for the steps."""
    if not isinstance(pseudonym_key, bytes) or len(pseudonym_key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"pseudonym_key has {len(pseudonym_key) if isinstance(pseudonym_key, bytes) else 'no'} "
                                 f"bytes; expected at least {MIN_KEY_BYTES} random bytes kept secret at the silo")
    features = tuple(cohort.features)
    check_features(features)
    q = Quarantine()
    reps = {m: ModalityReport() for m in MODALITIES}

    read = read_fhir(fhir, q)
    reps["ehr"].inputs_read, reps["ehr"].records = read.files, read.records
    images = _read_images(dicom, index_date, q, reps["image"])
    signals = _read_signals(wearables, cohort, index_date, q, reps["signal"])
    for modality, found in (("image", images), ("signal", signals)):
        for mrn in sorted(set(found) - set(read.patients)):
            q.add(modality, InputError("belongs to a patient with no FHIR Patient record (matched by MRN); expected one "
                                       "to read the label. Include the patient's FHIR export", reason="no_fhir_patient",
                                       source=found[mrn].source))

    excluded: Counter = Counter()
    refused: set[str] = set()
    rows = []
    for mrn in sorted(read.patients):
        p = read.patients[mrn]
        if not age_at(p.birth_date, index_date) >= cohort.min_age:  # also refuses an unknown age
            excluded["below_min_age_or_unknown_age"] += 1
            continue
        label = label_of(p, cohort, index_date)
        if label is None:
            excluded["prevalent_label_condition"] += 1
            continue
        values = ehr_values(p, features, index_date, q, refused)
        rows.append((pseudonym(mrn, pseudonym_key), values, has_observed_ehr(values, features),
                     images.get(mrn), signals.get(mrn), label))
    rows.sort(key=lambda r: r[0])  # order by pseudonym: no trace of MRN order

    n, s, channels = len(rows), cohort.image_size, tuple(cohort.signal_channels)
    ehr = normalise_ehr(np.array([r[1] for r in rows]).reshape(n, len(features)), features)
    image = np.zeros((n, 1, s, s), np.float32)
    signal = np.zeros((n, len(channels), cohort.signal_length), np.float32)
    mask = np.zeros((n, 3), np.float32)
    transform = image_transform(s)
    for i, (_, _, has_ehr, img, win, _) in enumerate(rows):
        mask[i] = (has_ehr, img is not None, win is not None)
        if img is not None:
            image[i] = normalise_slice(img.pixels, transform)
        if win is not None:
            signal[i] = win.values
    labels = np.array([r[5] for r in rows], np.float32)
    dataset = MultimodalDataset(ehr=torch.from_numpy(ehr), image=torch.from_numpy(image), signal=torch.from_numpy(signal),
                                mask=torch.from_numpy(mask), label=torch.from_numpy(labels), pseudonyms=[r[0] for r in rows],
                                feature_names=[f.name for f in features], signal_channels=channels)

    reps["ehr"].patients, reps["ehr"].unused = len(read.patients), dict(read.unused)
    reps["image"].patients, reps["signal"].patients = len(images), len(signals)
    for k, m in enumerate(MODALITIES):
        reps[m].samples = int(mask[:, k].sum())
        reps[m].quarantined = q.counts(m)
    linked = Counter("+".join(m for k, m in enumerate(MODALITIES) if row[k]) or "none" for row in mask)
    coverage = [r[4].coverage for r in rows if r[4] is not None]
    report = IngestReport(index_date=index_date, modalities=reps, patients=len(read.patients), samples=n,
                          positives=int(labels.sum()), excluded=dict(excluded), linked=dict(sorted(linked.items())),
                          quarantined_total=len(q), mean_signal_coverage=float(np.mean(coverage)) if coverage else None)
    log.info("ingested %d samples (%d positive), %d quarantined", n, report.positives, len(q))
    return IngestResult(dataset, report, q)

