"""Every refused stream message is counted and audited in the node's hash-chained log, in bounded space."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from compliance.audit import AuditLog, Event
from compliance.verify import verify_log
from pipelines.wearables.stream_store import StreamStore
from silo_node.streams.service import stream_store_dir

from .test_streams import START, _intake_app, heart_rate_observation, wait_for


def refusals(audit: AuditLog) -> list[dict]:
    return [e.fields for e in audit.entries() if e.event == Event.STREAM_REFUSED]


def counted(audit: AuditLog) -> Counter:
    """Refused messages by (outcome, reason), as the log's events add them up."""
    out: Counter = Counter()
    for f in refusals(audit):
        out[f["outcome"], f["reason"]] += f["count"]
    return out


def test_a_flood_of_refusals_is_audited_as_counts_per_reason_not_one_entry_each(tmp_path: Path, node_audit: AuditLog):
    service, client = _intake_app(tmp_path, node_audit, audit_interval_s=3600, max_message_bytes=2048)
    for _ in range(30):
        assert client.post("/streams/w/MRN-1", content=b"{not json").status_code == 422
    hostile = client.post("/streams/w/MRN-1", content=b"[" + b" " * 4096 + b"]")
    assert hostile.status_code == 413 and "max_message_bytes (2048)" in hostile.json()["error"]
    assert client.post("/streams/w/MRN-1", content=heart_rate_observation(START, [70.0])).status_code == 201
    # the first refusal of each reason is in the log at once, the rest wait for the end of the interval
    assert sorted((f["reason"], f["count"]) for f in refusals(node_audit)) == [("bad_json", 1), ("too_large", 1)]
    assert service.store.counts()["quarantined"] == {"bad_json": 1, "too_large": 1}  # the first of each, with its message
    service.stop()  # ends the interval: the remaining counts are written
    assert counted(node_audit) == {("quarantined", "bad_json"): 30, ("quarantined", "too_large"): 1}
    assert len(refusals(node_audit)) == 3  # 31 refused messages, 3 entries
    with StreamStore(stream_store_dir(tmp_path)) as store:  # the store likewise: every message counted, 3 rows
        assert store.counts()["quarantined"] == {"bad_json": 30, "too_large": 1}
        rows = store._db.execute("SELECT reason, messages, message FROM quarantine ORDER BY id").fetchall()
    assert [r[:2] for r in rows] == [("bad_json", 1), ("too_large", 1), ("bad_json", 29)]
    assert "is not JSON" in rows[0][2] and "29 more messages refused as bad_json" in rows[2][2]
    assert verify_log(node_audit.path).ok


def test_counts_reach_the_log_when_the_interval_ends_without_stopping_the_receiver(tmp_path: Path,
                                                                                   node_audit: AuditLog):
    service, client = _intake_app(tmp_path, node_audit, audit_interval_s=0.2)
    bad_unit = {"header": {"schema_id": {"namespace": "omh", "name": "heart-rate", "version": "1.1"}},
                "body": {"heart_rate": {"value": 1, "unit": "Hz"},
                         "effective_time_frame": {"date_time": "2024-03-01T08:00:01Z"}}}
    for _ in range(12):
        assert client.post("/streams/band/MRN-2", content=json.dumps(bad_unit)).json()["reason"] == "unknown_unit"
    wait_for(lambda: counted(node_audit)[("quarantined", "unknown_unit")] == 12, timeout=30)
    assert service.refusals.totals[("quarantined", "unknown_unit", "http")] == 12
    service.stop()
    assert counted(node_audit) == {("quarantined", "unknown_unit"): 12}


def test_a_store_written_before_counted_rows_is_read_with_its_rows_as_one_message_each(tmp_path: Path):
    import sqlite3

    (tmp_path / "streams").mkdir()
    with sqlite3.connect(tmp_path / "streams" / "streams.sqlite") as db:  # the tables as the store wrote them before
        db.execute("CREATE TABLE quarantine (id INTEGER PRIMARY KEY, received REAL NOT NULL, source TEXT NOT NULL, "
                   "reason TEXT NOT NULL, message TEXT NOT NULL)")
        db.execute("CREATE TABLE refusals (id INTEGER PRIMARY KEY, received REAL NOT NULL, device TEXT NOT NULL, "
                   "reason TEXT NOT NULL, samples INTEGER NOT NULL)")
        db.executemany("INSERT INTO quarantine VALUES (?, 1.0, 'http device x', 'bad_json', 'is not JSON')", [(1,), (2,)])
        db.execute("INSERT INTO refusals VALUES (1, 1.0, 'x', 'rate_limited', 25)")
    with StreamStore(stream_store_dir(tmp_path)) as store:
        store.quarantine_more("bad_json", 5, "http")
        assert store.counts() == {"samples": 0, "quarantined": {"bad_json": 7}, "refused": {"rate_limited": 1}}
