"""How FHIR references find their patient: inside a Bundle, the Bundle's own Patient (as FHIR resolves a reference
to a Bundle's entry first); across files (Bulk NDJSON), the patient read with that reference, once every file is read."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from pipelines.deid import Deidentifier
from pipelines.ehr.factstore import FactStore
from pipelines.ehr.fhir import read_fhir
from pipelines.quarantine import Quarantine

from .fixtures import patient, quantity, write_bundle

KEY = b"fedcare-test-pseudonym-key-32byt"


def test_a_reference_resolves_to_its_own_bundles_patient_first(tmp_path: Path) -> None:
    folder = tmp_path / "fhir"
    folder.mkdir()
    # two searchset exports from different servers: each has its own Patient/1, a different person
    write_bundle(folder / "a.json", [patient("1", "MRN-A"), quantity("2345-7", 101, "mg/dL", "2023-06-01", "Patient/1", "oa")],
                 kind="searchset", base="https://a.example/fhir/")
    write_bundle(folder / "b.json", [patient("1", "MRN-B"), quantity("2345-7", 202, "mg/dL", "2023-06-02", "Patient/1", "ob")],
                 kind="searchset", base="https://b.example/fhir/")
    # a Bulk export's Observation, in a file without patients: resolved once every file is read
    (folder / "c.ndjson").write_text(json.dumps(quantity("2345-7", 303, "mg/dL", "2023-06-03", "Patient/1", "oc")) + "\n")
    deid, quarantine = Deidentifier(KEY), Quarantine()
    with FactStore() as store:
        read_fhir([folder], quarantine, deid=deid, index_date=date(2024, 1, 1), store=store)
        store.resolve(quarantine)
        a, b = store.patient(deid.pseudonym("MRN-A")), store.patient(deid.pseudonym("MRN-B"))
    assert len(quarantine) == 0
    assert [m.value for m in b.measurements] == [202.0]  # its own bundle's patient, not the first Patient/1 read
    assert [m.value for m in a.measurements] == [101.0, 303.0]  # and the NDJSON one: the first patient with that reference
    assert a.measurements[1].source.endswith("c.ndjson#Observation/oc")
