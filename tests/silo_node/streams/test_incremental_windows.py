"""Incremental windowing: the receiver keeps studies' windows up to date as samples arrive; a snapshot reads the
same windows twice while data keeps arriving, and takes the kept windows instead of windowing them again."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from compliance.audit import AuditLog
from pipelines.deid import Deidentifier
from pipelines.wearables.mapping import WearableMapping, to_recording
from pipelines.wearables.recordings import window
from pipelines.wearables.stream_store import SampleBatch
from pipelines.wearables.stream_windows import (
    SnapshotWindows,
    WindowSpec,
    read_snapshot,
    register,
)
from silo_node.streams.service import StreamService
from silo_node.streams.settings import HttpSettings, StreamsConfig

from .test_streams import KEY, START, wait_for

SPEC = WindowSpec(("heart_rate",), 1.0, 60, WearableMapping())
PATIENTS = [Deidentifier(KEY).pseudonym(f"MRN-{k}") for k in range(3)]
LATER = date(2030, 1, 1)  # an index date after every sample


def batch(patient: str, k: int) -> SampleBatch:
    """The k-th 30 s of one patient's heart rate (a level per patient and stretch, so windows differ over time)."""
    t = START.timestamp() + 30.0 * k + np.arange(30.0)
    return SampleBatch(patient, "watch", "heart_rate", t, 60.0 + PATIENTS.index(patient) * 5 + (k % 7) + np.sin(t))


def read(service: StreamService, upto: int, index: date = LATER) -> tuple[dict[str, np.ndarray], SnapshotWindows]:
    counts = SnapshotWindows()
    db = service.store.connect()
    try:
        got = {p: w.values for p, _, w in read_snapshot(db, upto, SPEC, lambda _: index, counts)}
    finally:
        db.close()
    return got, counts


def test_two_reads_of_a_snapshot_give_the_same_windows_while_data_arrives_and_kept_windows_are_reused(
        tmp_path: Path, node_audit: AuditLog):
    cfg = StreamsConfig(http=HttpSettings(insecure=True), window_every_s=0.05)
    service = StreamService(cfg, state_dir=tmp_path, pseudonym_key=KEY, audit=node_audit)
    db = service.store.connect()
    register(db, SPEC)  # a study's ingestion registers its spec; from then on the receiver keeps its windows
    db.close()

    def submit(k: int) -> None:
        done = threading.Event()
        service.writer.submit([batch(p, k) for p in PATIENTS], lambda error: done.set(), wait_s=5)
        assert done.wait(30)

    def kept(sql: str, *args: object) -> int:
        db = service.store.connect()
        try:
            return int(db.execute(sql, args).fetchone()[0])
        finally:
            db.close()

    def up_to_date() -> bool:  # every recording's kept window is of its newest row
        return kept("SELECT COUNT(*) FROM (SELECT patient, device, MAX(seq) AS v FROM samples GROUP BY patient, device) "
                    "s JOIN windows w ON w.patient = s.patient AND w.device = s.device AND w.version = s.v") == 3

    for k in range(4):
        submit(k)
    wait_for(up_to_date)
    snap = service.store.snapshot()

    first, counts = read(service, snap.upto)
    assert counts.reused == len(PATIENTS) and counts.windowed == 0  # nothing windowed again at snapshot time
    arriving = threading.Thread(target=lambda: [submit(k) for k in range(4, 12)])
    arriving.start()
    during, _ = read(service, snap.upto)
    arriving.join()
    wait_for(up_to_date)  # the keeper moved on with the data
    submit(12)
    wait_for(up_to_date)  # ... and keeps only the newest versions (KEEP_VERSIONS)
    assert kept("SELECT COUNT(*) FROM windows WHERE version <= ?", snap.upto) == 0
    again, counts_again = read(service, snap.upto)  # the snapshot's cached versions are gone: windowed again
    for got in (during, again):
        assert sorted(got) == sorted(first)
        for p in first:
            np.testing.assert_array_equal(got[p], first[p])
    assert counts_again.windowed == len(PATIENTS)

    for p in PATIENTS:  # the kept windows are the windows of exactly the snapshot's rows
        (dev,) = [d for d in service.store.snapshot(snap.at).recordings() if d.patient_id == p]
        rec, _ = to_recording(dev, SPEC.channels, SPEC.mapping)
        np.testing.assert_array_equal(window(rec, SPEC.channels, rate_hz=1.0, length=60, index_date=LATER).values,
                                      first[p])
    latest, counts_latest = read(service, service.store.snapshot().upto)
    assert counts_latest.reused == len(PATIENTS)
    assert not np.array_equal(latest[PATIENTS[0]], first[PATIENTS[0]])
    cut, counts_cut = read(service, service.store.snapshot().upto, index=START.date() - timedelta(days=1))
    assert counts_cut.windowed == len(PATIENTS)  # samples after the index date: the uncut kept windows do not apply
    assert all(v is None for v in cut.values())  # nothing recorded on or before it
    service.stop()
