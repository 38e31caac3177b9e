from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from pipelines.deid import Deidentifier
from pipelines.errors import SignalError
from pipelines.ehr.factstore import FactStore
from pipelines.ehr.fhir import read_fhir
from pipelines.quarantine import Quarantine
from pipelines.wearables.recordings import MAX_GAP_S, read_recording, window

KEY = b"fedcare-test-pseudonym-key-32byt"
CHANNELS = ("heart_rate", "acc_x", "acc_y", "acc_z")


def _csv(path: Path, seconds) -> Path:
    rows = ["timestamp,heart_rate,acc_x,acc_y,acc_z"]
    rows += [f"2023-12-31T10:{s // 60:02d}:{s % 60:02d}Z,90,0,0,1" for s in seconds]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_signal_gaps_are_interpolated_or_zeroed(tmp_path: Path):
    short_gap = [s for s in range(128) if s not in (50, 51, 52)]
    w = window(read_recording(_csv(tmp_path / "a.csv", short_gap), CHANNELS), CHANNELS, rate_hz=1.0, length=128,
               index_date=date(2024, 1, 1))
    assert w.coverage == 1.0 and np.allclose(w.values[0], 1.0)  # (90 - 75) / 15 everywhere
    long_gap = [s for s in range(128) if not 40 <= s < 40 + 3 * MAX_GAP_S]
    w = window(read_recording(_csv(tmp_path / "b.csv", long_gap), CHANNELS), CHANNELS, rate_hz=1.0, length=128,
               index_date=date(2024, 1, 1))
    assert w.coverage < 1.0 and np.all(w.values[0, 45:50] == 0) and w.values[0, 0] == pytest.approx(1.0)


def test_signal_too_short_and_after_index(tmp_path: Path):
    rec = read_recording(_csv(tmp_path / "c.csv", range(20)), CHANNELS)
    with pytest.raises(SignalError, match="c.csv: covers 16%"):
        window(rec, CHANNELS, rate_hz=1.0, length=128, index_date=date(2024, 1, 1))
    assert window(rec, CHANNELS, rate_hz=1.0, length=128, index_date=date(2023, 12, 30)) is None


def test_bulk_data_ndjson(tmp_path: Path):
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female",
               "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                               "system": "urn:oid:1.2.3", "value": "MRN-1"}]}
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}, "effectiveDateTime": "2023-06-01",
           "valueQuantity": {"value": 99, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}
    (tmp_path / "Patient.ndjson").write_text(json.dumps(patient) + "\n")
    (tmp_path / "Observation.ndjson").write_text(json.dumps(obs) + "\n")
    with FactStore() as store:
        read = read_fhir([tmp_path], Quarantine(), deid=Deidentifier(KEY), index_date=date(2024, 1, 1), store=store)
        store.resolve(Quarantine())
        p = store.patient(Deidentifier(KEY).pseudonym("MRN-1"))
    assert read.files == 2 and p.gender == "female" and p.measurements[0].value == 99 and p.measurements[0].day == -214
