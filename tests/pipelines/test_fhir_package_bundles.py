"""#22 done-when: FHIR R4 bundles that a package produces, not ones written for these tests, give EHR features with an
index date per patient.

No package on PyPI that we found ships HL7's example resources or Synthea bundles in its wheel (fhir.resources 8.3.0
and 6.5.0 ship none). carebundle (pinned in the dev extras) generates US Core R4 transaction bundles offline and
deterministically: Patients referenced by `urn:uuid` fullUrls, no `id`, and an MRN whose identifier carries a system
but no type MR, as many real exports do; labs and vitals dated around each cohort's own reference date, years after
fedcare's default index date. Nothing is reshaped: the node config names the MRN's system (`fhir_mrn_system`) and the
study takes each patient's last observation as the index date.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import torch
from carebundle import generate_cohort, to_json

from coordinator.api.study import CohortSpec
from pipelines.ingest import ingest_silo

KEY = b"k" * 32
YEARS = (2017, 2020, 2023, 2026)  # each generated cohort's reference date: labs and vitals are dated around it


def _bundles(root: Path) -> str:
    """Four cohorts of five patients, one bundle file each; returns the system of the Patients' MRN identifier."""
    systems = set()
    root.mkdir()
    for year in YEARS:
        for i, bundle in enumerate(generate_cohort(count=5, seed=year, reference_date=date(year, 6, 1))):
            text = to_json(bundle)
            (root / f"{year}-{i}.json").write_text(text)
            doc = json.loads(text)
            systems |= {ident["system"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient"
                        for ident in e["resource"].get("identifier", [])}
    assert len(systems) == 1, systems  # the one system a hospital would name in its node config
    return systems.pop()


def test_generated_bundles_give_ehr_features_with_an_index_date_per_patient(tmp_path: Path):
    mrn_system = _bundles(tmp_path / "fhir")
    cohort = CohortSpec(index_from="last_observation")
    result = ingest_silo(fhir=[tmp_path / "fhir"], dicom=[], wearables=[], cohort=cohort, pseudonym_key=KEY,
                         fhir_mrn_system=mrn_system)
    report, d = result.report, result.dataset
    assert report.patients == 20 and report.samples == 20 and report.excluded == {}, report
    assert report.quarantined_total == 0
    assert report.modalities["ehr"].samples == 20  # every patient has observed EHR features at its own index date
    labs = [d.feature_names.index(f) for f in ("creatinine", "systolic_bp")]
    assert bool((~torch.isnan(d.ehr_raw[:, labs])).all()), d.ehr_raw[:, labs]

    # the fixed default index date (2024-01-01) sees only the cohorts dated before it within the look-back
    fixed = ingest_silo(fhir=[tmp_path / "fhir"], dicom=[], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY,
                        fhir_mrn_system=mrn_system).report
    assert fixed.samples == 20 and fixed.modalities["ehr"].samples == 5


def test_without_the_mrn_system_each_patient_is_refused_naming_the_systems_it_has_even_after_a_cached_run(tmp_path: Path):
    mrn_system = _bundles(tmp_path / "fhir")
    cohort, cache = CohortSpec(index_from="last_observation"), tmp_path / "cache"
    # a run that named the system cached its files; a run that does not must not read those cached Patients
    assert ingest_silo(fhir=[tmp_path / "fhir"], dicom=[], wearables=[], cohort=cohort, pseudonym_key=KEY, cache_dir=cache,
                       fhir_mrn_system=mrn_system).report.patients == 20
    result = ingest_silo(fhir=[tmp_path / "fhir"], dicom=[], wearables=[], cohort=cohort, pseudonym_key=KEY, cache_dir=cache)
    assert result.report.patients == 0
    assert result.quarantine.counts("ehr")["no_mrn"] == 20
    first = next(e for e in result.quarantine.entries if e.reason == "no_mrn")
    assert mrn_system in first.message and "fhir_mrn_system" in first.message
