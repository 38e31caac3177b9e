"""WFDB records as PhysioNet publishes them: MIT-BIH style (MLII, V5, no base date), MIMIC multi-segment
records with a layout header and a shifted year, written with wfdb and headers in the header(5) format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import wfdb

FS = 8


def _record(folder: Path, name: str, leads: list[str], seconds: int, *, base: str = "", comment: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(seconds * FS) / FS
    sig = np.stack([np.sin(2 * np.pi * (k + 1) * t) for k in range(len(leads))], axis=1)
    wfdb.wrsamp(name, fs=FS, units=["mV"] * len(leads), sig_name=leads, p_signal=sig, fmt=["16"] * len(leads),
                write_dir=str(folder), comments=[comment] if comment else None)
    if base:  # "HH:MM:SS DD/MM/YYYY" on the record line
        h = folder / f"{name}.hea"
        lines = h.read_text().splitlines()
        lines[0] = f"{lines[0]} {base}"
        h.write_text("\n".join(lines) + "\n")


def test_mit_bih_style_leads_by_alias_and_no_base_date_is_relative(tmp_path: Path, read):
    _record(tmp_path, "100", ["MLII", "V5"], 20)
    got = read([tmp_path], channels=("II", "V5"), rate_hz=FS, length=64, mrns=("100",))
    w = got.windows["100"]
    assert got.reasons() == [] and w.coverage == 1.0
    assert got.notes.mappings == {"wfdb: MLII": "II", "wfdb: V5": "V5"}
    assert w.end == -1e12  # relative time: windowed at the recording's end, never "after the index date"


def test_shifted_year_is_relative_not_after_the_index_date(tmp_path: Path, read):
    _record(tmp_path, "3000003_0001", ["II", "ABP"], 20, base="14:00:00 12/03/2704", comment="MRN: p3000003")
    got = read([tmp_path], channels=("ecg_ii",), rate_hz=FS, length=64, mrns=("p3000003",))
    assert set(got.windows) == {"p3000003"} and got.stats["unused_after_index_date"] == 0
    assert "['ABP']" in got.notes.warnings()[0]


def test_a_dated_record_after_the_index_date_is_unused(tmp_path: Path, read):
    _record(tmp_path, "s1", ["lead II"], 20, base="09:00:00 02/02/2024")
    got = read([tmp_path], channels=("ecg_ii",), rate_hz=FS, length=64, mrns=("s1",))
    assert got.windows == {} and got.stats["unused_after_index_date"] == 1


def test_multi_segment_record_with_layout_is_one_record(tmp_path: Path, read):
    """MIMIC layout: master header `name/4`, a layout segment (0 samples), two segments and a gap (`~`)."""
    _record(tmp_path, "3000003_0001", ["II", "V"], 10)
    _record(tmp_path, "3000003_0002", ["II"], 10)
    (tmp_path / "3000003_layout.hea").write_text(
        f"3000003_layout 2 {FS} 0 14:00:00 12/03/2704\n~ 0 1(0)/mV 16 0 0 0 0 II\n~ 0 1(0)/mV 16 0 0 0 0 V\n")
    (tmp_path / "3000003.hea").write_text(
        f"3000003/4 2 {FS} {30 * FS} 14:00:00 12/03/2704\n3000003_layout 0\n3000003_0001 {10 * FS}\n~ {10 * FS}\n"
        f"3000003_0002 {10 * FS}\n")
    got = read([tmp_path], channels=("II",), rate_hz=FS, length=64, mrns=("3000003",))
    assert got.reasons() == [] and got.stats["inputs_read"] == 1 and got.stats["records"] == 1
    assert got.windows["3000003"].coverage == 1.0  # the last 8 s lie in segment 0002


def test_missing_lead_is_refused_naming_what_the_record_has(tmp_path: Path, read):
    _record(tmp_path, "101", ["MLII", "V1"], 20)
    got = read([tmp_path], channels=("II", "V5"), rate_hz=FS, length=64)
    assert got.reasons() == ["missing_column"]
    assert "['MLII', 'V1']" in got.quarantine.entries[0].message
