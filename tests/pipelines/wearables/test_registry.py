"""One hospital folder holding every kind of export at once: each file goes to its own reader, once."""

from __future__ import annotations

import json
from pathlib import Path

from .test_apple_health import _export
from .test_empatica import _e4_files, _folder
from .test_fitbit import _fitabase
from .test_garmin import _samples, fit_file
from .test_openmhealth import _hr
from .test_waveform_dicom import ecg
from .test_wfdb import _record


def test_mixed_folder_each_file_to_its_reader(tmp_path: Path, read):
    root = tmp_path / "wearables"
    _folder(root / "e4", "MRN-E4", _e4_files())
    _fitabase(root / "fitabase")
    (root / "garmin").mkdir(parents=True)
    (root / "garmin" / "MRN-FIT.fit").write_bytes(fit_file(_samples()))
    (root / "garmin" / "MRN-GCSV.fit.HR.csv").write_text(
        "\n".join(f"2023-12-31T07:00:{s:02d};{80 + s % 5};00:00:{s:02d}" for s in range(40)) + "\n")
    _export(root / "MRN-APPLE" / "apple_health_export")
    (root / "omh").mkdir()
    (root / "omh" / "MRN-OMH.ndjson").write_text("".join(json.dumps(_hr(None, i)) + "\n" for i in range(40)))
    _record(root / "physionet", "100", ["MLII", "V5"], 20)
    ecg(root / "ecg" / "MRN-ECG.dcm", "MRN-ECG")
    (root / "own").mkdir()
    (root / "own" / "MRN-OWN.csv").write_text(
        "timestamp,heart_rate\n" + "\n".join(f"2023-12-31T12:00:{s:02d}Z,{70 + s % 3}" for s in range(40)) + "\n")
    mrns = ("MRN-E4", "1503960366", "2022484408", "MRN-FIT", "MRN-GCSV", "MRN-APPLE", "MRN-OMH", "MRN-OWN")
    got = read([root], channels=("heart_rate",), rate_hz=1.0, length=16, mrns=mrns)
    assert got.notes.devices == {d: 1 for d in ("empatica_e4", "fitbit", "garmin_fit", "garmin_csv", "apple_health",
                                                 "open_mhealth", "wfdb", "dicom_waveform", "fedcare_csv")}
    assert set(got.windows) == set(mrns)
    assert got.reasons() == ["missing_column", "missing_column"]  # the ECGs carry no heart rate, and say so
    assert got.stats["unused_not_a_wearable_export"] == 0
