"""Fitbit's own account export (`Physical Activity/heart_rate-YYYY-MM-DD.json`, `steps-...json`), in that layout."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from pipelines.wearables import fitbit_account


def _days(folder: Path) -> int:
    """Two days of heart rate every 10 s and steps per minute around midnight, with missing values and odd rows;
    returns how many heart-rate rows carry a usable bpm."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = datetime(2021, 1, 1, 23, 30)
    hr: dict[str, list] = {}
    usable = 0
    for k in range(360):  # an hour: 23:30 to 00:30
        when = t0 + timedelta(seconds=10 * k)
        stamp = when.strftime("%m/%d/%y %H:%M:%S") if k % 50 else when.isoformat()  # some rows in ISO 8601
        value: object = {"bpm": 60 + k % 20, "confidence": 2}
        if k % 31 == 7:
            value = {"bpm": None, "confidence": 0}
        elif k % 31 == 13:
            value = {"bpm": 0, "confidence": 0}  # off the wrist
        elif k % 31 == 21:
            value = {"confidence": 1}
        else:
            usable += 1
        hr.setdefault(f"heart_rate-{when.date().isoformat()}.json", []).append({"dateTime": stamp, "value": value})
    hr["heart_rate-2021-01-01.json"].append({"dateTime": "13/45/21 99:00:00", "value": {"bpm": 70}})
    hr["heart_rate-2021-01-01.json"].append({"value": {"bpm": 70}})
    for name, rows in hr.items():
        (folder / name).write_text(json.dumps(rows))
    steps = [{"dateTime": (t0 + timedelta(minutes=m)).strftime("%m/%d/%y %H:%M:%S"),
              "value": "-" if m == 3 else str(m % 9)} for m in range(60)]
    (folder / "steps-2021-01-01.json").write_text(json.dumps(steps))
    (folder / "calories-2021-01-01.json").write_text(json.dumps([{"dateTime": "01/01/21 00:00:00", "value": "1.2"}]))
    return usable


def test_a_persons_days_are_one_recording_of_heart_rate_and_steps_with_gaps_for_missing_values(tmp_path: Path, read):
    folder = tmp_path / "MRN-7" / "Physical Activity"
    usable = _days(folder)
    (dev,) = fitbit_account.read(folder, lambda name: True)
    assert dev.patient_id == "MRN-7" and dev.unused == ("calories",)
    t, bpm = dev.channels["heart_rate"]
    assert t.size == usable and np.all(bpm > 0) and np.all(np.diff(t) > 0)  # across midnight, in order
    assert t[0] == datetime(2021, 1, 1, 23, 30, tzinfo=UTC).timestamp()  # local time taken as UTC
    assert dev.channels["steps"][0].size == 59  # the "-" minute is a gap

    got = read([tmp_path], channels=("heart_rate", "steps"), rate_hz=1 / 60, length=32, index_date=date(2021, 1, 2),
               mrns=("MRN-7",))
    assert got.reasons() == [] and got.notes.devices == {"fitbit_account": 1}
    assert got.notes.mappings == {"fitbit_account: heart_rate": "heart_rate", "fitbit_account: steps": "steps"}
    assert "calories" in got.notes.warnings()[0]
    assert got.windows["MRN-7"].coverage > 0.9


def test_a_day_file_that_is_not_the_exports_layout_is_refused_naming_it(tmp_path: Path, read):
    folder = tmp_path / "MRN-8"
    folder.mkdir()
    (folder / "heart_rate-2021-01-01.json").write_text('{"activities-heart": []}')
    got = read([tmp_path], channels=("heart_rate",))
    assert got.reasons() == ["bad_json"]
    assert "heart_rate-2021-01-01.json holding a JSON dict" in got.quarantine.entries[0].message
