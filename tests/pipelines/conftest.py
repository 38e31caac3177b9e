from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.api.study import CohortSpec
from pipelines.ingest import IngestResult, ingest_silo
from pipelines.synthetic import HospitalFiles, generate_federation

KEY = b"fedcare-test-pseudonym-key-32byt"


def ingest(h: HospitalFiles, *, key: bytes = KEY, cohort: CohortSpec | None = None) -> IngestResult:
    return ingest_silo(fhir=[h.fhir_dir], dicom=[h.dicom_dir], wearables=[h.wearables_dir],
                       cohort=cohort or CohortSpec(), pseudonym_key=key)


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> list[HospitalFiles]:
    """Large enough for the label-signal test; shared by the tests that only read it."""
    return generate_federation(tmp_path_factory.mktemp("federation"), n_hospitals=3, patients_per_hospital=200, seed=0)


@pytest.fixture(scope="session")
def ingested(federation: list[HospitalFiles]) -> dict[str, IngestResult]:
    return {h.name: ingest(h) for h in federation}


@pytest.fixture
def small_hospital(tmp_path: Path) -> HospitalFiles:
    """A fresh, writable hospital for tests that break its files."""
    return generate_federation(tmp_path, n_hospitals=1, patients_per_hospital=12, seed=3, missing_fraction=0.0)[0]
