"""One silo's ingestion: FHIR + tabular EHR + DICOM (files, DICOMweb) + wearables -> `MultimodalDataset` + `IngestReport`.

Steps: read each modality, de-identifying as it is read (`pipelines.deid`: the MRN becomes
the keyed pseudonym HMAC-SHA256(key, MRN), identical across modalities and runs; dates become
days relative to the index date); refused inputs go to the quarantine with a reason naming
the file; join per pseudonym; apply the cohort (age, prevalent label); build the tensors.
EHR facts (FHIR, CSV/Parquet/OMOP extracts) are spilled to an on-disk `FactStore` as they are
read and reduced to feature values one patient at a time, so memory stays flat as the
hospital grows; each chosen image and wearable window is written straight to its sample's row
in an on-disk file (`pipelines.rowfiles`, under `cache_dir` when given) that the dataset maps
instead of holding it in memory.
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
from .imaging.dicom import DicomInput, file_inputs
from .ehr.features import check_features, ehr_values, has_observed_ehr, label_of
from .errors import ConfigurationError, InputError
from .ehr.factstore import FactStore
from .ehr.fhir import read_fhir
from .imaging.images import read_images
from .quarantine import Quarantine
from .rowfiles import RowFiles
from .wearables.signals import LatestWindows, read_signals, sampled_signals
from .ehr.tabular import read_tabular

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
    sources: dict[str, int] = Field(default_factory=dict)  # inputs by format, e.g. {"fhir": 12, "tabular_measurement": 1}


class IngestReport(BaseModel):
    """Counts only: safe to log and share (no identifiers, no file paths)."""

    index_date: date
    modalities: dict[str, ModalityReport]  # keys: "ehr", "image", "signal"
    patients: int  # EHR patients: FHIR Patients with an MRN, OMOP persons, tabular patient rows (by pseudonym)
    samples: int
    positives: int
    excluded: dict[str, int]  # cohort criteria, by reason
    linked: dict[str, int]  # samples by modalities present, e.g. {"ehr+image+signal": 250}
    image_linked_by: dict[str, int] = Field(default_factory=dict)  # EHR patients with an image, by "patient_id" / "imaging_study"
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
                dicom_inputs: Iterable[DicomInput] = (), cache_dir: Path | None = None,
                tabular: Sequence[Path] = ()) -> IngestResult:
    """Turn one silo's inputs into training samples; see the module docstring for the steps.

    `dicomweb`: base URLs of DICOMweb services (QIDO-RS/WADO-RS) to read every study from;
    `dicom_inputs`: further DICOM instances from elsewhere; `cache_dir`: the silo's cache;
    `tabular`: CSV/Parquet EHR extracts (generic or OMOP CDM), files or folders.
    """
    if not isinstance(pseudonym_key, bytes) or len(pseudonym_key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"pseudonym_key has {len(pseudonym_key) if isinstance(pseudonym_key, bytes) else 'no'} "
                                 f"bytes; expected at least {MIN_KEY_BYTES} random bytes kept secret at the silo")
    features = tuple(cohort.features)
    check_features(features)
    deid = Deidentifier(pseudonym_key)
    cache = IngestCache(cache_dir, cohort_hash(cohort, index_date, deid.fingerprint))
    q = Quarantine()
    with FactStore() as store, RowFiles(cache_dir) as files:
        return _ingest(store, files, fhir=fhir, dicom=dicom, wearables=wearables, cohort=cohort, deid=deid, index_date=index_date,
                       dicomweb=dicomweb, dicom_inputs=dicom_inputs, cache=cache, tabular=tabular, q=q)


def _ingest(store: FactStore, files: RowFiles, *, fhir: Sequence[Path], dicom: Sequence[Path], wearables: Sequence[Path],
            cohort: CohortLike, deid: Deidentifier, index_date: date, dicomweb: Sequence[str],
            dicom_inputs: Iterable[DicomInput], cache: IngestCache, tabular: Sequence[Path], q: Quarantine) -> IngestResult:
    features = tuple(cohort.features)
    channels = tuple(cohort.signal_channels)
    reps = {m: ModalityReport() for m in MODALITIES}
    read = read_fhir(fhir, q, deid=deid, index_date=index_date, store=store, channels=channels, cache=cache)
    tab = read_tabular(tabular, q, deid=deid, index_date=index_date, features=features, store=store, cache=cache)
    store.resolve(q)
    ehr = reps["ehr"]
    ehr.inputs_read, ehr.records = read.files + tab.files, read.records + tab.records
    ehr.parsed, ehr.cached = read.parsed + tab.parsed, read.cached + tab.cached
    ehr.sources = {k: v for k, v in (("fhir", read.files), *((f"tabular_{k}", v) for k, v in sorted(tab.layouts.items())))
                   if v}
    known = store.pseudonyms()

    # EHR first, one patient at a time: the rows of the dataset, so images are written straight into them
    excluded: Counter = Counter()
    refused: set[str] = set()
    n_max, s, f = len(known), cohort.image_size, len(features)
    raw = np.full((n_max, f), np.nan)
    labels = np.zeros(n_max, np.float32)
    pseudonyms: list[str] = []
    for p in store.patients():  # in pseudonym order: no trace of MRN or file order
        if p.age is None or not p.age >= cohort.min_age:
            excluded["below_min_age_or_unknown_age"] += 1
            continue
        label = label_of(p, cohort)
        if label is None:
            excluded["prevalent_label_condition"] += 1
            continue
        raw[len(pseudonyms)], labels[len(pseudonyms)] = ehr_values(p, features, q, refused), label
        pseudonyms.append(p.pseudonym)
    n = len(pseudonyms)
    row_of = {pid: i for i, pid in enumerate(pseudonyms)}
    image = files.field("image", n, (1, s, s) if cohort.image_dims == 2 else (1, cohort.image_depth, s, s))
    signal = files.field("signal", n, (len(channels), cohort.signal_length))

    remote: Iterable[DicomInput] = ()
    if dicomweb:
        from .imaging.dicomweb import dicomweb_inputs  # dicomweb-client is only needed when a PACS is named

        remote = chain.from_iterable(dicomweb_inputs(url) for url in dicomweb)
    images, image_stats = read_images(chain(file_inputs(dicom), dicom_inputs, remote), deid=deid, index_date=index_date,
                                      image_size=cohort.image_size, cache=cache, quarantine=q, patients=known,
                                      study_owners=store.study_owners(), into=(row_of, image),
                                      image_dims=cohort.image_dims, image_depth=cohort.image_depth)
    latest = LatestWindows(into=(row_of, signal))  # the latest recording wins, whatever its format
    signal_stats = read_signals(wearables, cohort=cohort, deid=deid, index_date=index_date, cache=cache, quarantine=q,
                                latest=latest)
    sampled_stats = sampled_signals(store, cohort=cohort, index_date=index_date, quarantine=q, latest=latest)
    signals = latest.chosen
    if latest.superseded:
        signal_stats["unused_superseded"] += latest.superseded
    signal_stats["records"] += read.sampled
    signal_stats["unused_after_index_date"] += sampled_stats["unused_after_index_date"]
    _fill(reps["image"], image_stats)
    _fill(reps["signal"], signal_stats)
    reps["signal"].sources = {k: v for k, v in (("files", signal_stats["inputs_read"]), ("fhir_sampled_data", read.sampled)) if v}
    reps["image"].patients, reps["signal"].patients = len(images), len(signals)
    image_links = Counter(img.linked_by for pid, img in images.items() if pid in known)
    for modality, found in (("image", images), ("signal", signals)):
        for pid in sorted(set(found) - known):
            q.add(modality, InputError("belongs to a patient with no EHR record (no FHIR Patient, OMOP person or tabular "
                                       "patient row with that MRN, and no ImagingStudy naming the study); expected one to "
                                       "read the label. Include the patient's EHR export", reason="no_ehr_patient",
                                       source=found.pop(pid).source))

    mask = np.zeros((n, 3), np.float32)
    coverage: list[float] = []
    for i, pid in enumerate(pseudonyms):
        win = signals.pop(pid, None)
        mask[i] = (has_observed_ehr(raw[i], features), pid in images, win is not None)
        if win is not None:
            coverage.append(win.coverage)
    labels = labels[:n]
    # image and signal were checked finite row by row as they were written (`pipelines.rowfiles`)
    dataset = MultimodalDataset(ehr=torch.from_numpy(normalise_ehr(raw[:n], features)),
                                image=torch.from_numpy(image.open()), signal=torch.from_numpy(signal.open()),
                                mask=torch.from_numpy(mask), label=torch.from_numpy(labels), pseudonyms=pseudonyms,
                                feature_names=[f.name for f in features], signal_channels=channels,
                                checked=("image", "signal"))

    ehr.patients, ehr.unused = len(known), dict(sorted((read.unused + tab.unused).items()))
    for k, m in enumerate(MODALITIES):
        reps[m].samples = int(mask[:, k].sum())
        reps[m].quarantined = q.counts(m)
    linked = Counter("+".join(m for k, m in enumerate(MODALITIES) if row[k]) or "none" for row in mask)
    report = IngestReport(index_date=index_date, modalities=reps, patients=len(known), samples=n,
                          positives=int(labels.sum()), excluded=dict(excluded), linked=dict(sorted(linked.items())),
                          image_linked_by=dict(sorted(image_links.items())), quarantined_total=len(q),
                          mean_signal_coverage=float(np.mean(coverage)) if coverage else None)
    log.info("ingested %d samples (%d positive), %d quarantined", n, report.positives, len(q))
    return IngestResult(dataset, report, q)
