"""Open mHealth data points (omh:heart-rate:1.x, omh:step-count:1.0 and 2.0) as one JSON, an array, or NDJSON."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

T0 = datetime(2023, 12, 31, 20, 0, tzinfo=timezone.utc)


def _hr(user: str | None, i: int, unit: str = "beats/min") -> dict:
    header = {"id": f"hr-{user}-{i}", "creation_date_time": "2024-01-02T00:00:00Z",
              "schema_id": {"namespace": "omh", "name": "heart-rate", "version": "1.1"},
              "acquisition_provenance": {"source_name": "Polar H10", "modality": "sensed"}}
    if user:
        header["user_id"] = user
    when = (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
    return {"header": header, "body": {"heart_rate": {"value": 60 + i % 10, "unit": unit},
                                       "effective_time_frame": {"date_time": when}}}


def _steps(user: str, i: int, v2: bool) -> dict:
    start = T0 + timedelta(seconds=10 * i)
    frame = {"time_interval": {"start_date_time": start.isoformat(), "end_date_time": (start + timedelta(seconds=10)).isoformat()}}
    return {"header": {"id": f"s-{i}", "user_id": user, "schema_id": {"namespace": "omh", "name": "step-count",
                                                                       "version": "2.0" if v2 else "1.0"}},
            "body": {"step_count": {"value": 12, "unit": "steps"} if v2 else 12, "effective_time_frame": frame}}


def test_array_with_two_users_and_both_step_count_versions(tmp_path: Path, read):
    points = [_hr(u, i) for u in ("MRN-O1", "MRN-O2") for i in range(80)]
    points += [_steps(u, i, v2=(i % 2 == 0)) for u in ("MRN-O1", "MRN-O2") for i in range(8)]
    points.append({"header": {"schema_id": {"namespace": "omh", "name": "body-weight", "version": "1.0"},
                              "user_id": "MRN-O1"}, "body": {"body_weight": {"value": 61, "unit": "kg"}}})
    (tmp_path / "export.json").write_text(json.dumps(points))
    got = read([tmp_path], channels=("heart_rate", "steps"), rate_hz=0.1, length=8, mrns=("MRN-O1", "MRN-O2"))
    assert set(got.windows) == {"MRN-O1", "MRN-O2"} and got.reasons() == []
    assert got.notes.mappings == {"open_mhealth: heart-rate": "heart_rate", "open_mhealth: step-count": "steps"}
    assert "body-weight" in got.notes.warnings()[0]


def test_ndjson_without_user_is_the_file_stem_and_a_wrong_unit_is_left_out(tmp_path: Path, read):
    lines = [_hr(None, i) for i in range(30)] + [_hr(None, 30, unit="Hz")]
    (tmp_path / "MRN-O3.ndjson").write_text("\n".join(json.dumps(p) for p in lines) + "\n")
    got = read([tmp_path], channels=("heart_rate",), rate_hz=1.0, length=16, mrns=("MRN-O3",))
    w = got.windows["MRN-O3"]
    assert w.coverage == 1.0 and w.end == (T0 + timedelta(seconds=29)).timestamp() - \
        datetime(2024, 1, 2, tzinfo=timezone.utc).timestamp()


def test_broken_json_is_quarantined(tmp_path: Path, read):
    (tmp_path / "MRN-O4.json").write_text('{"header": {"schema_id": {"name": "heart-rate"}}, "body": ')
    got = read([tmp_path], channels=("heart_rate",))
    assert got.reasons() == ["bad_json"]
