"""Wearables as FHIR Observations with valueSampledData: the same window as the same samples in a CSV."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from coordinator.api.study import CohortSpec
from pipelines.deid import Deidentifier
from pipelines.ingest import ingest_silo

from .fixtures import LOINC, UCUM, patient, write_bundle

KEY = b"fedcare-test-pseudonym-key-32byt"
START = datetime(2023, 12, 31, 10, 0, tzinfo=timezone.utc)
N = 200
LOW, HIGH = 40.0, 200.0


def _heart_rate() -> tuple[list[str], np.ndarray]:
    """Tokens for valueSampledData.data and the values they stand for (NaN for E)."""
    values = 70 + 5 * np.sin(np.arange(N) / 10)
    tokens = [f"{v:.2f}" for v in values]
    values = np.round(values, 2)
    for i in (150, 151, 152):
        tokens[i], values[i] = "E", np.nan
    tokens[160], values[160] = "L", LOW
    tokens[170], values[170] = "U", HIGH
    return tokens, values


def _sampled(oid: str, subject: str, code: dict, data: str, *, unit: str, dims: int = 1, factor: float | None = None,
             **limits) -> dict:
    sd = {"origin": {"value": 0, "unit": unit, "system": UCUM, "code": unit}, "period": 1000, "dimensions": dims,
          "data": data, **limits}
    if factor is not None:
        sd["factor"] = factor
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": subject},
            "code": code, "effectiveDateTime": START.isoformat(), "valueSampledData": sd}


def test_sampled_data_matches_csv_and_broken_streams_are_quarantined(tmp_path: Path):
    tokens, hr = _heart_rate()
    t = np.arange(N)
    acc = np.stack([np.round(np.cos(t / 7), 2), np.zeros(N), np.full(N, 1.0)], axis=1)  # in g
    acc_raw = np.round(acc * 9.80665 / 0.01).astype(int)  # m/s2 in steps of 0.01
    acc = acc_raw * 0.01 / 9.80665
    hr_code = {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]}
    fhir = tmp_path / "fhir"
    fhir.mkdir()
    bundle = write_bundle(fhir / "a.json", [
        patient("a1", "MRN-A", birth="1950-01-01"), patient("b1", "MRN-B", birth="1951-01-01"),
        _sampled("hr", "Patient/a1", hr_code, " ".join(tokens), unit="/min", lowerLimit=LOW, upperLimit=HIGH),
        _sampled("acc", "Patient/a1", {"text": "acc"}, " ".join(str(v) for v in acc_raw.ravel()), unit="m/s2", dims=3,
                 factor=0.01),
        _sampled("bad-token", "Patient/a1", hr_code, "70 71 x 72", unit="/min"),
        _sampled("bad-dims", "Patient/a1", {"text": "acceleration"}, "1 2 3 4", unit="m/s2", dims=3),
        _sampled("bad-unit", "Patient/a1", hr_code, "70 71 72", unit="furlong/h"),
        _sampled("nobody", "Patient/zz", hr_code, "70 71 72", unit="/min"),
    ], base="https://ehr.example.org/fhir/")
    wear = tmp_path / "wearables"
    wear.mkdir()
    rows = ["timestamp,heart_rate,acc_x,acc_y,acc_z"]
    for i in range(N):
        ts = (START + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append(f"{ts},{'' if np.isnan(hr[i]) else hr[i]},{acc[i, 0]:.12g},{acc[i, 1]:.12g},{acc[i, 2]:.12g}")
    (wear / "MRN-B.csv").write_text("\n".join(rows) + "\n")

    result = ingest_silo(fhir=[fhir], dicom=[], wearables=[wear], cohort=CohortSpec(), pseudonym_key=KEY)
    d, r = result.dataset, result.report
    deid = Deidentifier(KEY)
    a, b = d.pseudonyms.index(deid.pseudonym("MRN-A")), d.pseudonyms.index(deid.pseudonym("MRN-B"))
    assert d.mask[a, 2] == 1 and d.mask[b, 2] == 1
    assert np.allclose(d.signal[a].numpy(), d.signal[b].numpy(), atol=1e-5)
    # the window ends at the last sample (199): L (sample 160) took lowerLimit, U (170) upperLimit, E (150-152) a gap
    assert d.signal[a, 0, -40].item() == np.float32((LOW - 75) / 15) and d.signal[a, 0, -30].item() == np.float32((HIGH - 75) / 15)
    assert d.signal[a, 2].abs().max() == 0 and np.allclose(d.signal[a, 3].numpy(), 0.0, atol=1e-3)  # ~1 g = reference (0.01 m/s2 steps)
    # Observations read with a study channel (as FHIR records: before their subject is resolved)
    assert r.modalities["signal"].sources == {"fedcare_csv": 1, "fhir_sampled_data": 3}
    assert r.modalities["signal"].records == 4
    entries = {e.source: (e.modality, e.reason, e.message) for e in result.quarantine.entries}
    assert entries.keys() == {f"{bundle}#Observation/{i}" for i in ("bad-token", "bad-dims", "bad-unit", "nobody")}
    assert entries[f"{bundle}#Observation/bad-token"][:2] == ("signal", "bad_sampled_data")
    assert "'x'" in entries[f"{bundle}#Observation/bad-token"][2]
    assert entries[f"{bundle}#Observation/bad-dims"][:2] == ("signal", "bad_sampled_data")
    assert "4 values for dimensions 3" in entries[f"{bundle}#Observation/bad-dims"][2]
    assert entries[f"{bundle}#Observation/bad-unit"][:2] == ("signal", "unknown_unit")
    assert entries[f"{bundle}#Observation/nobody"][:2] == ("signal", "unknown_subject")
    assert r.modalities["ehr"].unused.get("observation_not_used", 0) == 0


def test_sampled_data_after_the_index_date_is_unused(tmp_path: Path):
    late = _sampled("late", "Patient/a1", {"coding": [{"system": LOINC, "code": "8867-4"}]}, "70 71 72", unit="/min")
    late["effectiveDateTime"] = "2024-02-01T08:00:00Z"
    write_bundle(tmp_path / "a.json", [patient("a1", "MRN-A"), late])
    result = ingest_silo(fhir=[tmp_path], dicom=[], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY)
    assert result.dataset.mask[0, 2] == 0 and len(result.quarantine) == 0
    assert result.report.modalities["signal"].unused == {"after_index_date": 1}
    json.loads(result.report.model_dump_json())
