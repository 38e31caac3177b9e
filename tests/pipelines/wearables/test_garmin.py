"""Garmin FIT files built byte by byte after the FIT protocol (FIT SDK): header, definitions, data, CRC-16."""

from __future__ import annotations

import struct
from datetime import datetime, timezone
from pathlib import Path

FIT_EPOCH = datetime(1989, 12, 31, tzinfo=timezone.utc).timestamp()
CRC_TABLE = (0x0000, 0xCC01, 0xD801, 0x1400, 0xF001, 0x3C00, 0x2800, 0xE401,
             0xA001, 0x6C00, 0x7800, 0xB401, 0x5000, 0x9C01, 0x8801, 0x4400)


def fit_crc(data: bytes, crc: int = 0) -> int:
    """The FIT SDK's CRC-16 (nibble table)."""
    for byte in data:
        tmp = CRC_TABLE[crc & 0xF]
        crc = ((crc >> 4) & 0x0FFF) ^ tmp ^ CRC_TABLE[byte & 0xF]
        tmp = CRC_TABLE[crc & 0xF]
        crc = ((crc >> 4) & 0x0FFF) ^ tmp ^ CRC_TABLE[(byte >> 4) & 0xF]
    return crc


def definition(local: int, global_num: int, fields: list[tuple[int, int, int]]) -> bytes:
    """Definition message: header 0x40|local, reserved, little-endian, global number, (field, size, base type)*."""
    out = struct.pack("<BBBHB", 0x40 | local, 0, 0, global_num, len(fields))
    return out + b"".join(struct.pack("<BBB", *f) for f in fields)


def fit_file(samples: list[tuple[datetime, int | None]], *, monitoring_t16: bool = False) -> bytes:
    """A FIT activity: file_id (global 0) then `record`s (global 20) with timestamp (253, uint32) and heart_rate
    (3, uint8; 0xFF is FIT's invalid value); or monitoring (55) messages with timestamp_16 after the first."""
    t0 = int(samples[0][0].timestamp() - FIT_EPOCH)
    body = definition(0, 0, [(0, 1, 0x00), (4, 4, 0x86)]) + struct.pack("<BBI", 0, 4, t0)  # type = activity
    if monitoring_t16:
        body += definition(1, 55, [(253, 4, 0x86), (27, 1, 0x02)])  # timestamp, heart_rate
        body += definition(2, 55, [(26, 2, 0x84), (27, 1, 0x02)])  # timestamp_16, heart_rate
    else:
        body += definition(1, 20, [(253, 4, 0x86), (3, 1, 0x02), (5, 4, 0x86)])  # timestamp, heart_rate, distance
    for k, (when, hr) in enumerate(samples):
        t = int(when.timestamp() - FIT_EPOCH)
        value = 0xFF if hr is None else hr
        if monitoring_t16 and k:
            body += struct.pack("<BHB", 2, t & 0xFFFF, value)
        elif monitoring_t16:
            body += struct.pack("<BIB", 1, t, value)
        else:
            body += struct.pack("<BIBI", 1, t, value, 100 * k)
    header = struct.pack("<BBHI4s", 14, 0x20, 2132, len(body), b".FIT")
    header += struct.pack("<H", fit_crc(header))
    data = header + body
    return data + struct.pack("<H", fit_crc(data))


def _samples(n: int = 60, start: datetime = datetime(2023, 12, 31, 7, 0, tzinfo=timezone.utc)):
    return [(datetime.fromtimestamp(start.timestamp() + i, timezone.utc), 80 + i % 20) for i in range(n)]


def test_activity_record_heart_rate(tmp_path: Path, read):
    (tmp_path / "MRN-G1.fit").write_bytes(fit_file(_samples()))
    got = read([tmp_path], channels=("heart_rate",), length=32, mrns=("MRN-G1",))
    assert got.reasons() == [] and got.windows["MRN-G1"].coverage == 1.0
    hr = got.windows["MRN-G1"].values[0] * 15 + 75
    assert 80 <= hr.min() and hr.max() <= 99.01
    assert got.notes.devices == {"garmin_fit": 1} and got.notes.mappings == {"garmin_fit: heart_rate": "heart_rate"}
    assert "distance" in got.notes.warnings()[0]


def test_invalid_values_are_gaps_and_timestamp_16_rolls_forward(tmp_path: Path, read):
    samples = _samples(n=40)
    samples[35:] = [(w, None) for w, _ in samples[35:]]  # 0xFF: no heart rate for the last 5 s
    (tmp_path / "MRN-G2.fit").write_bytes(fit_file(samples, monitoring_t16=True))
    got = read([tmp_path], channels=("heart_rate",), length=32, mrns=("MRN-G2",))
    w = got.windows["MRN-G2"]
    assert got.reasons() == [] and w.coverage == 1.0
    assert w.end == datetime(2023, 12, 31, 7, 0, 34, tzinfo=timezone.utc).timestamp() - \
        datetime(2024, 1, 2, tzinfo=timezone.utc).timestamp()  # the last valid sample, relative to the index date's end


def test_a_bad_crc_is_refused_and_the_other_file_read(tmp_path: Path, read):
    data = bytearray(fit_file(_samples()))
    data[-5] ^= 0x01
    (tmp_path / "MRN-bad.fit").write_bytes(bytes(data))
    (tmp_path / "MRN-G3.fit").write_bytes(fit_file(_samples()))
    got = read([tmp_path], channels=("heart_rate",), length=32, mrns=("MRN-G3",))
    assert set(got.windows) == {"MRN-G3"} and got.reasons() == ["bad_fit"]


def test_fit2gpx_csv_without_header_semicolons_and_both_date_styles(tmp_path: Path, read):
    """`--hr-only` (time;hr;duration, ISO) and `--monitor-hr --iso-date=no` (time;hr), a missing value among them."""
    hr = [f"2023-12-31T07:00:{s:02d};{80 + s % 5};00:00:{s:02d}" for s in range(40)]
    hr[20] = "2023-12-31T07:00:20;;00:00:20"
    (tmp_path / "MRN-G4.fit.HR.csv").write_text("\n".join(hr) + "\n")
    monitor = [f"2023.12.31 06:{m:02d}:00;{50 + m % 3}" for m in range(40)]
    (tmp_path / "MRN-G5.fit.monitor-HR.csv").write_text("\n".join(monitor) + "\n")
    (tmp_path / "MRN-G5.fit.SpO2.csv").write_text("2023-12-31T06:00:00;97\n")
    got = read([tmp_path], channels=("heart_rate",), length=32, mrns=("MRN-G4",))
    assert got.windows["MRN-G4"].coverage == 1.0 and got.notes.devices == {"garmin_csv": 3}
    minute = read([tmp_path], channels=("heart_rate",), rate_hz=1 / 60, length=32, mrns=("MRN-G5",))
    assert minute.windows["MRN-G5"].coverage == 1.0
    assert "['SpO2']" in minute.notes.warnings()[0]


def test_a_headerless_semicolon_file_is_not_read_as_fedcare_csv(tmp_path: Path, read):
    (tmp_path / "MRN-G6.csv").write_text("2023-12-31T07:00:00;80\nnot a time;81\n")
    got = read([tmp_path], channels=("heart_rate",), length=8)
    assert got.notes.devices == {"garmin_csv": 1} and got.reasons() == ["too_short"]
