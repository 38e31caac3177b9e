"""Fitabase minute- and second-level CSVs: many patients per file, keyed by Id, US 12-hour local times."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path


def _t(when: datetime) -> str:
    return f"{when.month}/{when.day}/{when.year} {when.strftime('%I:%M:%S %p').lstrip('0')}"


def _fitabase(folder: Path, *, hr_missing_for: str = "", bad_row: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    t0 = datetime(2023, 12, 31, 23, 0)
    hr = ["Id,Time,Value"]
    steps = ["Id,ActivityMinute,Steps"]
    for pid in ("1503960366", "2022484408"):
        for i in range(0, 40 * 60, 5):  # every 5 s for 40 min
            value = "" if pid == hr_missing_for and i % 10 else str(60 + i % 30)
            hr.append(f"{pid},{_t(t0 + timedelta(seconds=i))},{value}")
        for m in range(40):
            steps.append(f"{pid},{_t(t0 + timedelta(minutes=m))},{m % 7}")
    if bad_row:
        hr.append("1503960366,not a time,80")
    (folder / "heartrate_seconds_merged.csv").write_text("\n".join(hr) + "\n")
    (folder / "minuteStepsNarrow_merged.csv").write_text("\n".join(steps) + "\n")
    (folder / "minuteSleep_merged.csv").write_text("Id,date,value,logId\n1503960366,4/12/2016 2:47:30 AM,3,11380564589\n")
    (folder / "dailyActivity_merged.csv").write_text("Id,ActivityDate,TotalSteps\n1503960366,4/12/2016,13162\n")
    return folder


def test_one_recording_per_id_with_heart_rate_and_steps(tmp_path: Path, read):
    _fitabase(tmp_path / "fitabase", bad_row=True)
    got = read([tmp_path], channels=("heart_rate", "steps"), rate_hz=1 / 60, length=32,
               mrns=("1503960366", "2022484408"))
    assert set(got.windows) == {"1503960366", "2022484408"} and got.reasons() == []
    assert got.stats["inputs_read"] == 1 and got.stats["records"] == 2
    assert got.notes.devices == {"fitbit": 1}
    assert got.notes.mappings == {"fitbit: HeartRate": "heart_rate", "fitbit: Steps": "steps"}
    assert "['Sleep', 'dailyActivity_merged.csv']" in got.notes.warnings()[0]
    assert all(w.coverage > 0.95 for w in got.windows.values())  # minute steps: no gap between minutes


def test_missing_values_are_bridged_and_a_long_pause_is_a_gap(tmp_path: Path, read):
    folder = _fitabase(tmp_path, hr_missing_for="2022484408")  # every other 5-s value of this patient empty
    got = read([tmp_path], channels=("heart_rate",), rate_hz=0.2, length=64, mrns=("2022484408",))
    assert got.windows["2022484408"].coverage == 1.0
    lines = (folder / "heartrate_seconds_merged.csv").read_text().splitlines()
    pause = [ln for ln in lines if not any(f" 11:{m}:" in ln for m in range(30, 36))]  # 6 minutes off the wrist
    (folder / "heartrate_seconds_merged.csv").write_text("\n".join(pause))
    got = read([tmp_path], channels=("heart_rate",), rate_hz=0.2, length=64 * 4, mrns=("1503960366",))
    assert 0.5 < got.windows["1503960366"].coverage < 0.95


def test_a_patient_without_a_study_channel_is_quarantined_alone(tmp_path: Path, read):
    folder = _fitabase(tmp_path)
    lines = (folder / "heartrate_seconds_merged.csv").read_text().splitlines()
    (folder / "heartrate_seconds_merged.csv").write_text("\n".join(ln for ln in lines if not ln.startswith("2022484408")))
    got = read([tmp_path], channels=("heart_rate", "steps"), rate_hz=1 / 60, length=32,
               mrns=("1503960366", "2022484408"))
    assert set(got.windows) == {"1503960366"} and got.reasons() == ["missing_column"]


def test_wrong_columns_are_refused_with_the_expected_layout(tmp_path: Path, read):
    tmp_path.joinpath("heartrate_seconds_merged.csv").write_text("Id;Time;Value\n1;4/12/2016 7:21:00 AM;97\n")
    got = read([tmp_path], channels=("heart_rate",))
    assert got.reasons() == ["missing_column"]
    assert "Id,Time,Value" in got.quarantine.entries[0].message
