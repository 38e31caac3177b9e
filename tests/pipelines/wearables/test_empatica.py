"""Empatica E4 sessions in the layout E4 connect exports (one CSV per signal: start time row, rate row, samples)."""

from __future__ import annotations

import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

START = datetime(2023, 12, 31, 22, 0, tzinfo=timezone.utc).timestamp()
CHANNELS = ("heart_rate", "acc_x", "acc_y", "acc_z")


def _e4_files(start: float = START, seconds: int = 40) -> dict[str, str]:
    acc = "\n".join(f"{i % 5}, -{i % 3}, 64" for i in range(32 * seconds))
    hr = "\n".join(f"{70 + i % 4}.{i % 10}0" for i in range(seconds - 10))  # HR starts 10 s in (from BVP)
    ibi = "\n".join(f"{1.5 + 0.8 * i:.6f},0.812500" for i in range(10))
    return {
        "ACC.csv": f"{start:.6f}, {start:.6f}, {start:.6f}\n32.000000, 32.000000, 32.000000\n{acc}\n",
        "HR.csv": f"{start + 10:.6f}\n1.000000\n{hr}\n",
        "BVP.csv": f"{start:.6f}\n64.000000\n" + "\n".join("-0.53" for _ in range(64 * 4)) + "\n",
        "EDA.csv": f"{start:.6f}\n4.000000\n" + "\n".join("0.000000" for _ in range(16)) + "\n",
        "TEMP.csv": f"{start:.6f}\n4.000000\n" + "\n".join("31.13" for _ in range(16)) + "\n",
        "IBI.csv": f"{start:.6f}, IBI\n{ibi}\n",
        "tags.csv": "",
        "info.txt": ".csv files in this archive are in the following format: ...\n",
    }


def _folder(root: Path, name: str, files: dict[str, str]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for k, v in files.items():
        (d / k).write_text(v)
    return d


def test_session_folder_gives_heart_rate_and_acceleration_in_g(tmp_path: Path, read):
    _folder(tmp_path / "in", "MRN-E4-1", _e4_files())
    got = read([tmp_path / "in"], channels=CHANNELS, length=16, mrns=("MRN-E4-1",))
    w = got.windows["MRN-E4-1"]
    assert got.stats["inputs_read"] == 1 and got.stats["records"] == 1 and got.reasons() == []
    # ACC z = 64/64 g = 1 g: the reference level of acc_z, so 0 after normalisation; x, y vary
    assert np.allclose(w.values[3], 0.0) and np.abs(w.values[0]).max() > 0
    assert 70 <= (w.values[0][:-1] * 15 + 75).min() and w.coverage > 0.95  # HR ends 1 s before ACC
    assert got.notes.devices == {"empatica_e4": 1}
    assert got.notes.mappings == {"empatica_e4: HR": "heart_rate", "empatica_e4: ACC_X": "acc_x",
                                  "empatica_e4: ACC_Y": "acc_y", "empatica_e4: ACC_Z": "acc_z"}
    assert "['BVP', 'EDA', 'IBI', 'TEMP']" in got.notes.warnings()[0]


def test_zip_as_downloaded_is_read_and_named_by_its_stem(tmp_path: Path, read):
    with zipfile.ZipFile(tmp_path / "MRN-E4-2.zip", "w") as z:
        for k, v in _e4_files().items():
            z.writestr(k, v)
    got = read([tmp_path], channels=CHANNELS, mrns=("MRN-E4-2",))
    assert set(got.windows) == {"MRN-E4-2"} and got.notes.devices == {"empatica_e4": 1}


def test_rate_row_is_honoured_when_resampling(tmp_path: Path, read):
    """4 Hz study rate from a 1 Hz HR: 16 samples span 4 s, all within the recording."""
    _folder(tmp_path, "p", _e4_files())
    got = read([tmp_path / "p"], channels=("heart_rate",), rate_hz=4.0, length=16, mrns=("p",))
    assert got.windows["p"].coverage == 1.0


def test_missing_rate_row_and_empty_session_are_quarantined_and_the_rest_goes_on(tmp_path: Path, read):
    _folder(tmp_path, "broken", {"HR.csv": "abc\n"})  # no start time row, no rate row
    _folder(tmp_path, "good", _e4_files())
    got = read([tmp_path], channels=CHANNELS, mrns=("good", "broken"))
    assert set(got.windows) == {"good"} and got.reasons() == ["bad_timestamp"]


def test_session_after_the_index_date_is_unused(tmp_path: Path, read):
    _folder(tmp_path, "late", _e4_files(start=datetime(2024, 3, 1, tzinfo=timezone.utc).timestamp()))
    got = read([tmp_path], channels=CHANNELS, mrns=("late",))
    assert got.windows == {} and got.stats["unused_after_index_date"] == 1


def test_fast_acceleration_is_averaged_not_aliased_on_a_slow_grid(tmp_path: Path, read):
    """ACC at 32 Hz alternating +-1 g on x: point sampling on a 1 Hz grid would see +1 or -1; the mean is 0."""
    files = _e4_files()
    acc = "\n".join(f"{64 if i % 2 else -64}, 0, 64" for i in range(32 * 40))
    files["ACC.csv"] = f"{START:.6f}, {START:.6f}, {START:.6f}\n32.000000, 32.000000, 32.000000\n{acc}\n"
    _folder(tmp_path, "p", files)
    got = read([tmp_path / "p"], channels=("acc_x",), rate_hz=1.0, length=16, mrns=("p",))
    assert abs(got.windows["p"].values[0][1:-1]).max() < 0.2  # 0 g +- one sample in 32, in units of 0.5 g
