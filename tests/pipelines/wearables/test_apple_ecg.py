"""Apple Watch ECG CSVs (Health app export, `electrocardiograms/ecg_YYYY-MM-DD.csv`), generated in that layout."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np

from pipelines.wearables import apple_ecg

RATE = 512
TOKENS = ("", "-", "NaN", "N/A")  # missing-value tokens, one every 97 samples


def _ecg(path: Path, *, recorded: str = "2021-02-26 17:43:24 +0100", seconds: float = 15.0,
         rate: str = "512 hertz", unit: str = "µV", decimal_comma: bool = False) -> np.ndarray:
    """An ECG file in the Health app's layout; returns its voltages in µV (NaN where a token was written)."""
    n = int(seconds * RATE)
    uv = 500.0 * np.sin(2 * np.pi * 1.2 * np.arange(n) / RATE)
    lines = []
    for k, x in enumerate(uv):
        if k % 97 == 50:
            lines.append(TOKENS[k % len(TOKENS)])
            uv[k] = np.nan
        else:
            text = f"{x:.3f}".replace("-", "\u2212" if k % 5 == 0 else "-")  # the Unicode minus of some locales
            lines.append(f'"{text.replace(".", ",")}"' if decimal_comma else text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'Name,"Appleseed, Jane"\nDate of Birth,"Jan 1, 1980"\nRecorded Date,{recorded}\n'
                    f'Classification,Sinus Rhythm\nSymptoms,\nSoftware Version,1.90\nDevice,"Watch6,1"\n'
                    f'Sample Rate,{rate}\n\nLead,Lead I\nUnit,{unit}\n\n' + "\n".join(lines) + "\n", encoding="utf-8")
    return uv


def test_an_export_ecg_is_lead_i_in_mv_placed_at_its_recorded_date_without_the_persons_identifiers(tmp_path: Path,
                                                                                                    read):
    path = tmp_path / "MRN-1" / "apple_health_export" / "electrocardiograms" / "ecg_2021-02-26.csv"
    uv = _ecg(path)
    (dev,) = apple_ecg.read(path, lambda name: True)
    t, mv = dev.channels["Lead I"]
    start = 1614357804.0  # 2021-02-26 16:43:24 UTC
    ok = np.isfinite(uv)
    np.testing.assert_allclose(t, start + np.flatnonzero(ok) / RATE)  # a missing sample is a gap, not a shift
    np.testing.assert_allclose(mv, uv[ok] / 1000.0, atol=1e-6)
    assert dev.patient_id == "MRN-1" and "Appleseed" not in repr(dev) and "1980" not in repr(dev)

    got = read([tmp_path], channels=("ecg_i",), rate_hz=128, length=1024, index_date=date(2021, 3, 1), mrns=("MRN-1",))
    assert got.notes.devices == {"apple_ecg": 1} and got.notes.mappings == {"apple_ecg: Lead I": "ecg_i"}
    assert got.windows["MRN-1"].coverage > 0.99 and got.reasons() == []
    assert "Appleseed" not in repr(got)  # neither the name nor the birth date reaches the report or the quarantine


def test_odd_dates_and_layouts_are_read_and_a_date_that_is_none_is_refused_naming_it(tmp_path: Path, read):
    _ecg(tmp_path / "MRN-2" / "ecg_2021-02-26.csv", recorded="2021-02-26T17:43:24Z", rate="512 Hz", unit="mV")
    _ecg(tmp_path / "MRN-3" / "ecg_2021-02-26_2.csv", recorded="2021-02-26 17:43", decimal_comma=True)
    _ecg(tmp_path / "MRN-4" / "ecg_2021-02-26.csv", recorded="26 février 2021 à 17:43")
    _ecg(tmp_path / "MRN-5" / "ecg_2021-02-26.csv", rate="fast")
    _ecg(tmp_path / "MRN-6" / "ecg_2021-03-05.csv", recorded="2021-03-05 08:00:00 -0500")  # after the index date
    got = read([tmp_path], channels=("ecg_i",), rate_hz=128, length=1024, index_date=date(2021, 3, 1),
               mrns=("MRN-2", "MRN-3", "MRN-6"))
    assert set(got.windows) == {"MRN-2", "MRN-3"}
    assert got.reasons() == ["bad_header", "bad_timestamp"]
    refused = {e.reason: e.message for e in got.quarantine.entries}
    assert "'26 février 2021 à 17:43'" in refused["bad_timestamp"] and "'fast'" in refused["bad_header"]
    assert got.stats["unused_after_index_date"] == 1
    (dev,) = apple_ecg.read(tmp_path / "MRN-3" / "ecg_2021-02-26_2.csv", lambda name: True)
    assert dev.notes and "no UTC offset" in dev.notes[0]
    assert abs(float(np.nanmax(dev.channels["Lead I"][1])) - 0.5) < 0.01  # decimal commas read, µV -> mV
