"""The named steps of one silo's ingestion, composed by `pipelines.ingest` (as MONAI composes transforms).

Each step is a small callable that reads and fills named fields of one `IngestRun`:
EHR readers fill the on-disk `FactStore`; `resolve_references` joins them; `select_cohort`
turns each EHR patient into a row (or an exclusion); the image and wearable readers write
straight into those rows; `quarantine_unlinked`, `build_mask` and `build_dataset` finish the
samples. A new source is one reader (`EhrReader` for EHR inputs) and one line in
`pipelines.ingest.STEPS`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from pydantic import BaseModel, Field

from .cache import IngestCache
from .cohort import MODALITIES, CohortLike
from .dataset import MultimodalDataset
from .deid import Deidentifier
from .ehr.factstore import FactStore
from .ehr.features import has_observed_ehr
from .ehr.own_tables import read_own_tables
from .ehr.table_source import TableSource
from .ehr.fhir import read_fhir
from .ehr.fhir_fields import FhirValidation
from .ehr.tabular import read_tabular
from .ehr.selection import ranges as patient_ranges
from .ehr.selection import select_patients
from .errors import InputError
from .imaging.dicom import DicomInput, file_inputs
from .imaging.images import ChosenImage, read_images
from .limits import DEFAULT_LIMITS, IngestLimits
from .parallel import WorkerPool, map_ordered
from .normalise import normalise_ehr
from .quarantine import Quarantine
from .rowfiles import RowFile, RowFiles
from .splits import SplitPart, read_split_file
from .wearables.mapping import WearableMapping, WearableNotes
from .wearables.waveform_dicom import DEVICE as WAVEFORM_DEVICE
from .wearables.signals import ChosenSignal, LatestWindows, read_signals, sampled_signals

log = logging.getLogger(__name__)


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
    mappings: dict[str, str] = Field(default_factory=dict)  # EHR: "table N: column", signal: "device: channel" -> what it was read as
    warnings: list[str] = Field(default_factory=list)  # columns and channels that map to nothing, features no table holds


@dataclass(frozen=True)
class Sources:
    """Where one silo's inputs are: files and folders per modality, PACS URLs, further DICOM inputs."""

    fhir: Sequence[Path] = ()
    tabular: Sequence[Path] = ()  # CSV/Parquet EHR extracts (generic or OMOP CDM), files or folders
    dicom: Sequence[Path] = ()
    dicomweb: Sequence[str] = ()  # base URLs of DICOMweb services (QIDO-RS/WADO-RS)
    dicom_inputs: Iterable[DicomInput] = ()  # further DICOM instances from elsewhere
    wearables: Sequence[Path] = ()
    tables: Sequence[TableSource] = ()  # a hospital's own tables, described in the node config
    fhir_mrn_system: str | None = None  # the identifier system of the MRN where no identifier is typed MR
    fhir_validation: FhirValidation = FhirValidation.USED_FIELDS  # what of each resource is validated
    split_file: Path | None = None  # mrn,split per patient, kept at the silo (pipelines.splits.read_split_file)
    wearable_mapping: WearableMapping = WearableMapping()  # [wearables] of the node config


@dataclass
class IngestRun:
    """The named fields the steps read and fill, from the inputs to the dataset."""

    sources: Sources
    cohort: CohortLike
    deid: Deidentifier
    index_date: date
    cache: IngestCache
    quarantine: Quarantine
    store: FactStore
    files: RowFiles
    limits: IngestLimits = DEFAULT_LIMITS
    pool: WorkerPool = field(default_factory=WorkerPool)  # the run's workers, shared by its readers (pipelines.parallel)
    reports: dict[str, ModalityReport] = field(default_factory=lambda: {m: ModalityReport() for m in MODALITIES})
    ehr_unused: Counter = field(default_factory=Counter)
    fhir_sampled: int = 0  # Observations with valueSampledData for a study channel
    known: set[str] = field(default_factory=set)  # pseudonyms of EHR patients
    excluded: Counter = field(default_factory=Counter)  # cohort criteria, by reason
    pseudonyms: list[str] = field(default_factory=list)  # one per row of the dataset
    splits: dict[str, SplitPart] = field(default_factory=dict)  # pseudonym -> the part its data names
    index_days: dict[str, int] = field(default_factory=dict)  # pseudonym -> its index date, days after `index_date`
    raw: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # [N, F] EHR values in cohort units, NaN missing
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    image: RowFile | None = None
    signal: RowFile | None = None
    images: dict[str, ChosenImage] = field(default_factory=dict)
    dicom_waveforms: list[Path] = field(default_factory=list)  # DICOM files the image reader found are waveforms
    latest: LatestWindows | None = None
    signal_stats: Counter = field(default_factory=Counter)
    wearable_notes: WearableNotes = field(default_factory=WearableNotes)  # devices, mapping used, channels left out
    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, len(MODALITIES)), np.float32))
    coverage: list[float] = field(default_factory=list)
    summaries: ModalitySummaries | None = None
    dataset: MultimodalDataset | None = None

    @property
    def features(self) -> tuple:
        return tuple(self.cohort.features)

    @property
    def row_of(self) -> dict[str, int]:
        return {pid: i for i, pid in enumerate(self.pseudonyms)}


@dataclass(frozen=True)
class ModalitySummaries:
    """Per row of the dataset, what its image and wearable inputs held beyond the one image and window kept
    (NaN where the row lacks the modality): released by an analysis study (`pipelines.analytics`)."""

    image_series: np.ndarray  # [N] series on or before the index date (`ChosenImage.series`)
    wearable_hours: np.ndarray  # [N] hours of recordings with a window, summed (`LatestWindows.hours`)


class Step(Protocol):
    """One step: reads and fills named fields of the run."""

    def __call__(self, run: IngestRun) -> None: ...


class EhrRead(Protocol):
    """What an EHR reader reports; the facts themselves went to the run's `FactStore`."""

    files: int
    records: int
    parsed: int
    cached: int
    unused: Counter


@dataclass(frozen=True)
class EhrReader:
    """An EHR source as a step: `read(run)` fills the fact store; its counts go to the EHR report.

    `formats(read)` names the inputs by format for `ModalityReport.sources`.
    """

    name: str
    read: Callable[[IngestRun], EhrRead]
    formats: Callable[[EhrRead], dict[str, int]]

    def __call__(self, run: IngestRun) -> None:
        got = self.read(run)
        rep = run.reports["ehr"]
        rep.inputs_read += got.files
        rep.records += got.records
        rep.parsed += got.parsed
        rep.cached += got.cached
        run.ehr_unused.update(got.unused)
        rep.sources.update({k: v for k, v in self.formats(got).items() if v})


def _fhir(run: IngestRun) -> EhrRead:
    got = read_fhir(run.sources.fhir, run.quarantine, deid=run.deid, index_date=run.index_date, store=run.store,
                    channels=tuple(run.cohort.signal_channels), cache=run.cache, limits=run.limits,
                    mrn_system=run.sources.fhir_mrn_system, workers=run.pool,
                    validation=run.sources.fhir_validation)
    run.fhir_sampled += got.sampled
    return got


def _tables(run: IngestRun) -> EhrRead:
    return read_tabular(run.sources.tabular, run.quarantine, deid=run.deid, index_date=run.index_date,
                        features=run.features, store=run.store, cache=run.cache, limits=run.limits)


def _own_tables(run: IngestRun) -> EhrRead:
    got = read_own_tables(run.sources.tables, run.quarantine, deid=run.deid, index_date=run.index_date,
                          cohort=run.cohort, store=run.store, limits=run.limits)
    rep = run.reports["ehr"]
    rep.mappings.update(got.mappings)
    rep.warnings.extend(got.warnings)
    run.splits.update(got.splits)
    return got


#: FHIR is read before tables: the first demographics seen for a patient are kept (`FactStore.add_patient`).
read_fhir_resources = EhrReader("fhir", _fhir, lambda r: {"fhir": r.files})
read_tables = EhrReader("tabular", _tables, lambda r: {f"tabular_{k}": v for k, v in sorted(r.layouts.items())})
read_hospital_tables = EhrReader("tables", _own_tables, lambda r: {"tables": r.files})


def read_split_assignments(run: IngestRun) -> None:
    """The split file of the node config, if any: its part wins over a table's split column for the same patient."""
    if run.sources.split_file is not None:
        run.splits.update(read_split_file(run.sources.split_file, run.deid, unused=run.ehr_unused))


def resolve_references(run: IngestRun) -> None:
    """Join events to their patients once every EHR input is read; the patients become the known ones."""
    run.store.resolve(run.quarantine)
    run.known = run.store.pseudonyms()


def select_cohort(run: IngestRun) -> None:
    """One patient at a time, in pseudonym order: the index date, the cohort criteria, the label and the EHR
    values of each row; patients left out are counted by reason. Decided over ranges of patients by the run's
    workers (`pipelines.ehr.selection`), merged in that order."""
    cohort = run.cohort
    pids = sorted(run.known)  # the store's patients (resolve_references), in its order: pseudonyms are ASCII
    raw = np.full((len(pids), len(cohort.ehr_columns)), np.nan)
    labels = np.zeros(len(pids), np.float32)
    decide = partial(select_patients, cohort=cohort)
    path = str(run.store.path)
    for decisions in map_ordered(decide, [(path, first, last) for first, last in patient_ranges(pids)], run.pool):
        for d in decisions:  # in pseudonym order: no trace of MRN or file order
            for e in d.refused:
                run.quarantine.add("ehr", e)
            if d.excluded is not None:
                run.excluded[d.excluded] += 1
                continue
            n = len(run.pseudonyms)
            raw[n], labels[n] = d.values, d.label
            run.pseudonyms.append(d.pseudonym)
            run.index_days[d.pseudonym] = d.day
    n = len(run.pseudonyms)
    run.raw, run.labels = raw[:n], labels[:n]


def allocate_rows(run: IngestRun) -> None:
    """On-disk row files for the image and signal of each row, written by the readers that follow."""
    c, n, s = run.cohort, len(run.pseudonyms), run.cohort.image_size
    run.image = run.files.field("image", n, (1, s, s) if c.image_dims == 2 else (1, c.image_depth, s, s))
    run.signal = run.files.field("signal", n, (len(c.signal_channels), c.signal_length))
    run.latest = LatestWindows(into=(run.row_of, run.signal))  # the latest recording wins, whatever its format


def _fill(rep: ModalityReport, stats: Counter) -> None:
    for name in ("inputs_read", "records", "parsed", "cached", "series"):
        setattr(rep, name, int(stats.get(name, 0)))
    rep.unused = {k.removeprefix("unused_"): v for k, v in sorted(stats.items()) if k.startswith("unused_")}


def read_dicom(run: IngestRun) -> None:
    """DICOM from files, further inputs and PACS; each patient's chosen image written to its row."""
    remote: Iterable[DicomInput] = ()
    if run.sources.dicomweb:
        from .imaging.dicomweb import dicomweb_inputs  # dicomweb-client is only needed when a PACS is named

        remote = chain.from_iterable(dicomweb_inputs(url) for url in run.sources.dicomweb)
    c = run.cohort
    assert run.image is not None, "allocate_rows runs before read_dicom"
    run.images, stats = read_images(chain(file_inputs(run.sources.dicom, run.quarantine), run.sources.dicom_inputs, remote),
                                    deid=run.deid, index_date=run.index_date, image_size=c.image_size, cache=run.cache,
                                    quarantine=run.quarantine, patients=run.known,
                                    study_owners=run.store.study_owners(), into=(run.row_of, run.image),
                                    image_dims=c.image_dims, image_depth=c.image_depth, limits=run.limits,
                                    workers=run.pool, waveforms=run.dicom_waveforms)
    _fill(run.reports["image"], stats)
    run.reports["image"].patients = len(run.images)


def read_wearable_files(run: IngestRun) -> None:
    """Wearable files of every known device (`pipelines.wearables.registry`): each patient's latest window offered to its row."""
    assert run.latest is not None, "allocate_rows runs before read_wearable_files"
    run.signal_stats.update(read_signals(run.sources.wearables, cohort=run.cohort, deid=run.deid,
                                         index_date=run.index_date, cache=run.cache, quarantine=run.quarantine,
                                         latest=run.latest, limits=run.limits, mapping=run.sources.wearable_mapping,
                                         notes=run.wearable_notes, index_days=run.index_days, workers=run.pool))
    if run.dicom_waveforms:  # DICOM waveforms (12-lead ECG) among the node's DICOM files are signals, not images
        run.signal_stats.update(read_signals(run.dicom_waveforms, cohort=run.cohort, deid=run.deid, index_date=run.index_date,
                                             cache=run.cache, quarantine=run.quarantine, latest=run.latest,
                                             limits=run.limits, mapping=run.sources.wearable_mapping,
                                             notes=run.wearable_notes, devices=(WAVEFORM_DEVICE,),
                                             index_days=run.index_days, workers=run.pool))


def read_sampled_data(run: IngestRun) -> None:
    """FHIR valueSampledData segments, cut to windows and offered like recordings; then the signal report."""
    assert run.latest is not None, "allocate_rows runs before read_sampled_data"
    sampled = sampled_signals(run.store, cohort=run.cohort, index_date=run.index_date, quarantine=run.quarantine,
                              latest=run.latest, index_days=run.index_days)
    stats = run.signal_stats
    if run.latest.superseded:
        stats["unused_superseded"] += run.latest.superseded
    stats["records"] += run.fhir_sampled
    stats["unused_after_index_date"] += sampled["unused_after_index_date"]
    rep = run.reports["signal"]
    _fill(rep, stats)
    notes = run.wearable_notes
    rep.sources = {k: v for k, v in (*sorted(notes.devices.items()), ("fhir_sampled_data", run.fhir_sampled)) if v}
    rep.mappings, rep.warnings = dict(sorted(notes.mappings.items())), notes.warnings()
    rep.patients = len(run.latest.chosen)


def quarantine_unlinked(run: IngestRun) -> None:
    """Images and recordings of patients with no EHR record cannot be labelled: quarantined with the reason."""
    assert run.latest is not None
    found_by: tuple[tuple[str, dict[str, ChosenImage] | dict[str, ChosenSignal]], ...] = (
        ("image", run.images), ("signal", run.latest.chosen))
    for modality, found in found_by:
        for pid in sorted(set(found) - run.known):
            run.quarantine.add(modality, InputError(
                "belongs to a patient with no EHR record (no FHIR Patient, OMOP person or tabular patient row with that "
                "MRN, and no ImagingStudy naming the study); expected one to read the label. Include the patient's EHR "
                "export", reason="no_ehr_patient", source=found.pop(pid).source))


def build_mask(run: IngestRun) -> None:
    """Which modalities each row has: observed EHR features, a chosen image, a wearable window; and per row its
    image series and wearable hours (`ModalitySummaries`)."""
    assert run.latest is not None
    windows = run.latest.chosen
    run.mask = np.zeros((len(run.pseudonyms), len(MODALITIES)), np.float32)
    series, hours = np.full(len(run.pseudonyms), np.nan), np.full(len(run.pseudonyms), np.nan)
    for i, pid in enumerate(run.pseudonyms):
        win = windows.pop(pid, None)
        run.mask[i] = (has_observed_ehr(run.raw[i], run.features), pid in run.images, win is not None)
        if pid in run.images:
            series[i] = run.images[pid].series
        if win is not None:
            run.coverage.append(win.coverage)
            hours[i] = run.latest.hours[pid]
    run.summaries = ModalitySummaries(series, hours)


def build_dataset(run: IngestRun) -> None:
    """The tensors; image and signal were checked finite row by row as they were written (`pipelines.rowfiles`)."""
    assert run.image is not None and run.signal is not None
    # provisional: features without a reference use every row's statistics until the silo refits on its
    # training part (`pipelines.normalise.fit_on_training`)
    run.dataset = MultimodalDataset(
        ehr=torch.from_numpy(normalise_ehr(run.raw, run.features)), image=torch.from_numpy(run.image.open()),
        signal=torch.from_numpy(run.signal.open()), mask=torch.from_numpy(run.mask),
        label=torch.from_numpy(run.labels), pseudonyms=run.pseudonyms, feature_names=list(run.cohort.ehr_columns),
        signal_channels=tuple(run.cohort.signal_channels), checked=("image", "signal"),
        ehr_raw=torch.from_numpy(np.ascontiguousarray(run.raw, dtype=np.float64)),
        assigned=[run.splits.get(pid) for pid in run.pseudonyms])


def count_modalities(run: IngestRun) -> None:
    """Per modality: EHR patients and unused counts, samples with the modality, quarantined by reason."""
    ehr = run.reports["ehr"]
    ehr.patients, ehr.unused = len(run.known), dict(sorted(run.ehr_unused.items()))
    for k, m in enumerate(MODALITIES):
        run.reports[m].samples = int(run.mask[:, k].sum())
        run.reports[m].quarantined = run.quarantine.counts(m)
