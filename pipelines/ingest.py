"""One silo's ingestion: FHIR + DICOM (files, DICOMweb) + wearables -> `MultimodalDataset` + `IngestReport`.

Steps: read each modality, de-identifying as it is read (`pipelines.deid`: the MRN becomes
the keyed pseudonym HMAC-SHA256(key, MRN), identical across modalities and runs; dates become
days relative to the index date); refused inputs go to the quarantine with a reason naming
the file; join per pseudonym; apply the cohort (age, prevalent label); build the tensors.
Each input's de-identified result is cached by content and cohort (`pipelines.cache`) when
`cache_dir` is given, so a re-run parses only new or changed inputs. No name, MRN, address or
file path is kept in the dataset or the report; quarantine entries (which name local files)
stay at the silo.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field

from .cache import IngestCache, cohort_hash
from .cohort import INDEX_DATE, MODALITIES, CohortLike
from .dataset import MultimodalDataset, normalise_ehr
from .deid import Deidentifier
from .dicom import DicomInput, file_inputs
from .ehr import check_features, ehr_values, has_observed_ehr, label_of
from .errors import ConfigurationError, InputError
from .fhir import read_fhir
from .images import read_images
from .quarantine import Quarantine
from .signals import read_signals

log = logging.getLogger(__name__)
MIN_KEY_BYTES = 16


class ModalityReport(BaseModel):
    inputs_read: int = 0  # files opened
    records: int = 0  # records accepted (FHIR resources, images, recordings)
    patients: int = 0  # distinct patients with a usable record of this modality
    samples: int = 0  # samples of the dataset with this modality present
    quarantined: dict[str, int] = Field(default_factory=dict)  # by reason
    unused: dict[str, int] = Field(default_factory=dict)  # valid but not used, by reason
    parsed: int = 0  # inputs parsed in this run
    cached: int = 0  # inputs taken from the silo's cache (not parsed again)
    series: int = 0  # DICOM series (image only)


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
    return Deidentifier(key).pseudonym(mrn)


def _fill(rep: ModalityReport, stats: Counter) -> None:
    for name in ("inputs_read", "records", "parsed", "cached", "series"):
        setattr(rep, name, int(stats.get(name, 0)))
    rep.unused = {k.removeprefix("unused_"): v for k, v in sorted(stats.items()) if k.startswith("unused_")}


def ingest_silo(*, fhir: Sequence[Path], dicom: Sequence[Path], wearables: Sequence[Path], cohort: CohortLike,
                pseudonym_key: bytes, index_date: date = INDEX_DATE, dicomweb: Sequence[str] = (),
                dicom_inputs: Iterable[DicomInput] = (), cache_dir: Path | None = None) -> IngestResult:
    """Turn one silo's inputs into training samples; see the module docstring for the steps.

    `dicomweb`: base URLs of DICOMweb services (QIDO-RS/WADO-RS) to read every study from;
    `dicom_inputs`: further DICOM instances from elsewhere; `cache_dir`: the silo's cache.
    """
    if not isinstance(pseudonym_key, bytes) or len(pseudonym_key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"pseudonym_key has {len(pseudonym_key) if isinstance(pseudonym_key, bytes) else 'no'} "
                                 f"bytes; expected at least {MIN_KEY_BYTES} random bytes kept secret at the silo")
    features = tuple(cohort.features)
    check_features(features)
    deid = Deidentifier(pseudonym_key)
    cache = IngestCache(cache_dir, cohort_hash(cohort, index_date, deid.fingerprint))
    q = Quarantine()
    reps = {m: ModalityReport() for m in MODALITIES}

    read = read_fhir(fhir, q, deid=deid, index_date=index_date, cache=cache)
    reps["ehr"].inputs_read, reps["ehr"].records = read.files, read.records
    reps["ehr"].parsed, reps["ehr"].cached = read.parsed, read.cached
    remote: Iterable[DicomInput] = ()
    if dicomweb:
        from .dicomweb import dicomweb_inputs  # dicomweb-client is only needed when a PACS is named

        remote = chain.from_iterable(dicomweb_inputs(url) for url in dicomweb)
    images, image_stats = read_images(chain(file_inputs(dicom), dicom_inputs, remote), deid=deid, index_date=index_date,
                                      image_size=cohort.image_size, cache=cache, quarantine=q)
    signals, signal_stats = read_signals(wearables, cohort=cohort, deid=deid, index_date=index_date, cache=cache, quarantine=q)
    _fill(reps["image"], image_stats)
    _fill(reps["signal"], signal_stats)
    for modality, found in (("image", images), ("signal", signals)):
        for pid in sorted(set(found) - set(read.patients)):
            q.add(modality, InputError("belongs to a patient with no FHIR Patient record (matched by MRN); expected one "
                                       "to read the label. Include the patient's FHIR export", reason="no_fhir_patient",
                                       source=found[pid].source))

    excluded: Counter = Counter()
    refused: set[str] = set()
    rows = []
    for pid in sorted(read.patients):  # sorted by pseudonym: no trace of MRN order
        p = read.patients[pid]
        if p.age is None or not p.age >= cohort.min_age:
            excluded["below_min_age_or_unknown_age"] += 1
            continue
        label = label_of(p, cohort)
        if label is None:
            excluded["prevalent_label_condition"] += 1
            continue
        values = ehr_values(p, features, q, refused)
        rows.append((pid, values, has_observed_ehr(values, features), images.get(pid), signals.get(pid), label))

    n, s, channels = len(rows), cohort.image_size, tuple(cohort.signal_channels)
    ehr = normalise_ehr(np.array([r[1] for r in rows]).reshape(n, len(features)), features)
    image = np.zeros((n, 1, s, s), np.float32)
    signal = np.zeros((n, len(channels), cohort.signal_length), np.float32)
    mask = np.zeros((n, 3), np.float32)
    for i, (_, _, has_ehr, img, win, _) in enumerate(rows):
        mask[i] = (has_ehr, img is not None, win is not None)
        if img is not None:
            image[i] = img.image
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

