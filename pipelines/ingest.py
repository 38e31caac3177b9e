"""One silo's ingestion: FHIR + tabular EHR + DICOM (files, DICOMweb) + wearables -> `MultimodalDataset` + `IngestReport`.

Ingestion is the composition `STEPS` of named steps (`pipelines.steps`), each reading and
filling named fields of one `IngestRun`, as MONAI composes transforms: read each modality,
de-identifying as it is read (`pipelines.deid`: the MRN becomes the keyed pseudonym
HMAC-SHA256(key, MRN), identical across modalities and runs; dates become days relative to
the index date); refused inputs go to the quarantine with a reason naming the file; join per
pseudonym; apply the cohort (age, prevalent label); build the tensors.
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
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from .cache import IngestCache, cohort_hash
from .cohort import INDEX_DATE, MODALITIES, CohortLike
from .dataset import MultimodalDataset
from .deid import Deidentifier
from .ehr.factstore import FactStore
from .ehr.features import check_features
from .ehr.fhir_fields import FhirValidation
from .ehr.table_source import TableSource
from .errors import ConfigurationError
from .imaging.dicom import DicomInput
from .limits import DEFAULT_LIMITS, IngestLimits
from .parallel import WorkerPool, Workers
from .quarantine import Quarantine
from .rowfiles import RowFiles
from .splits import NO_PART
from .wearables.mapping import WearableMapping
from .steps import (IngestRun, ModalityReport, ModalitySummaries, Sources, Step, allocate_rows, build_dataset,
                    build_mask, count_modalities,
                    quarantine_unlinked, read_dicom, read_fhir_resources, read_hospital_tables, read_sampled_data,
                    read_split_assignments, read_tables, read_wearable_files, resolve_references, select_cohort)

log = logging.getLogger(__name__)
MIN_KEY_BYTES = 16

#: Ingestion, in order. A new source is one reader and one line here.
STEPS: tuple[Step, ...] = (
    read_fhir_resources,  # EHR readers fill the fact store; FHIR first (its demographics win)
    read_tables,
    read_hospital_tables,  # tables as they come, described in the node config
    read_split_assignments,  # the split file, after the tables' split columns
    resolve_references,
    select_cohort,  # the rows: cohort criteria, label, EHR values
    allocate_rows,
    read_dicom,  # images and windows are written straight into the rows
    read_wearable_files,
    read_sampled_data,
    quarantine_unlinked,
    build_mask,
    build_dataset,
    count_modalities,
)


class IngestReport(BaseModel):
    """Counts only: safe to log and share (no identifiers, no file paths)."""

    index_date: date  # the reference date; a patient's own index date is chosen by `index_from`
    index_from: str = "fixed"  # "fixed" | "column" | "first_event" | "last_observation" (no index: `excluded`)
    modalities: dict[str, ModalityReport]  # keys: "ehr", "image", "signal"
    patients: int  # EHR patients: FHIR Patients with an MRN, OMOP persons, tabular patient rows (by pseudonym)
    samples: int
    positives: int
    excluded: dict[str, int]  # cohort criteria, by reason
    linked: dict[str, int]  # samples by modalities present, e.g. {"ehr+image+signal": 250}
    image_linked_by: dict[str, int] = Field(default_factory=dict)  # EHR patients with an image, by "patient_id" / "imaging_study"
    quarantined_total: int
    mean_signal_coverage: float | None = None
    # samples by the part their data names (pipelines.splits), "none": no part, the hash split decides
    split_assigned: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, run: IngestRun) -> "IngestReport":
        linked = Counter("+".join(m for k, m in enumerate(MODALITIES) if row[k]) or "none" for row in run.mask)
        image_links = Counter(img.linked_by for pid, img in run.images.items() if pid in run.known)
        return cls(index_date=run.index_date, index_from=run.cohort.index_from, modalities=run.reports, patients=len(run.known), samples=len(run.pseudonyms),
                   positives=int(run.labels.sum()), excluded=dict(run.excluded), linked=dict(sorted(linked.items())),
                   image_linked_by=dict(sorted(image_links.items())), quarantined_total=len(run.quarantine),
                   mean_signal_coverage=float(np.mean(run.coverage)) if run.coverage else None,
                   split_assigned=dict(sorted(Counter(str(run.splits.get(p, NO_PART)) for p in run.pseudonyms).items())))


@dataclass
class IngestResult:
    dataset: MultimodalDataset
    report: IngestReport
    quarantine: Quarantine  # names local files: keep at the silo
    summaries: ModalitySummaries | None = None  # per row: image series, wearable hours (pipelines.steps)


def pseudonym(mrn: str, key: bytes) -> str:
    return Deidentifier(key).pseudonym(mrn)


def ingest_silo(*, fhir: Sequence[Path], dicom: Sequence[Path], wearables: Sequence[Path], cohort: CohortLike,
                pseudonym_key: bytes, index_date: date | None = None, dicomweb: Sequence[str] = (),
                dicom_inputs: Iterable[DicomInput] = (), cache_dir: Path | None = None,
                tabular: Sequence[Path] = (), tables: Sequence[TableSource] = (), split_file: Path | None = None,
                fhir_mrn_system: str | None = None, fhir_validation: FhirValidation = FhirValidation.USED_FIELDS,
                wearable_mapping: WearableMapping = WearableMapping(),
                limits: IngestLimits = DEFAULT_LIMITS, steps: Sequence[Step] = STEPS,
                workers: Workers = Workers()) -> IngestResult:
    """Turn one silo's inputs into training samples by running `steps` (see the module docstring).

    The inputs are those of `pipelines.steps.Sources`; `cache_dir`: the silo's cache; `index_date`: the
    reference date relative dates count from (default: the cohort's, else `INDEX_DATE`); `limits`: bounds on
    what one input may make ingestion allocate (`pipelines.limits`); `wearable_mapping`: the node's `[wearables]`
    (`pipelines.wearables.mapping`); `fhir_validation`: the elements of each FHIR resource read, or every one
    (`pipelines.ehr.fhir_fields`); `workers`: who parses the inputs (`pipelines.parallel`; default every core), one pool for the whole run.
    """
    index_date = index_date or cohort.index_date or INDEX_DATE
    if not isinstance(pseudonym_key, bytes) or len(pseudonym_key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"pseudonym_key has {len(pseudonym_key) if isinstance(pseudonym_key, bytes) else 'no'} "
                                 f"bytes; expected at least {MIN_KEY_BYTES} random bytes kept secret at the silo")
    check_features(tuple(cohort.features))
    deid = Deidentifier(pseudonym_key)
    sources = Sources(fhir=fhir, tabular=tabular, dicom=dicom, dicomweb=dicomweb, dicom_inputs=dicom_inputs,
                      wearables=wearables, tables=tables, split_file=split_file, fhir_mrn_system=fhir_mrn_system,
                      fhir_validation=fhir_validation, wearable_mapping=wearable_mapping)
    with (FactStore() as store, RowFiles(cache_dir) as files, WorkerPool(workers) as pool,
          IngestCache(cache_dir, cohort_hash(cohort, index_date, deid.fingerprint)) as cache):
        run = IngestRun(sources=sources, cohort=cohort, deid=deid, index_date=index_date, cache=cache,
                        quarantine=Quarantine(), store=store, files=files, limits=limits, pool=pool)
        for step in steps:
            step(run)
            cache.commit()  # the step's entries, kept even if a later step fails
        assert run.dataset is not None, "the steps end with build_dataset"
        report = IngestReport.of(run)
        log.info("ingested %d samples (%d positive), %d quarantined", report.samples, report.positives,
                 report.quarantined_total)
        return IngestResult(run.dataset, report, run.quarantine, run.summaries)
