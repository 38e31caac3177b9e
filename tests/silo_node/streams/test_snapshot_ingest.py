"""A study's ingestion over a stream snapshot gives the windows the same recordings give as files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from coordinator.api.study import CohortSpec
from pipelines.deid import Deidentifier
from pipelines.ingest import STEPS, ingest_silo
from pipelines.synthetic import generate_federation
from pipelines.wearables.stream_store import SampleBatch, StreamStore, with_snapshot

KEY = b"fedcare-stream-test-key-32-bytes"


def test_snapshot_of_streamed_recordings_ingests_like_the_files(tmp_path: Path):
    (h,) = generate_federation(tmp_path / "data", n_hospitals=1, patients_per_hospital=12, seed=3, signal_length=64)
    cohort = CohortSpec(signal_length=64)
    deid = Deidentifier(KEY)
    with StreamStore(tmp_path / "streams") as store:
        for csv in sorted(h.wearables_dir.glob("*.csv")):  # each file's samples, as a device would stream them
            df = pd.read_csv(csv)
            t = (pd.to_datetime(df["timestamp"], utc=True) - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
            store.append([SampleBatch(deid.pseudonym(csv.stem), "dev", c, t, df[c].to_numpy(np.float64))
                          for c in df.columns if c != "timestamp"])
        snapshot = store.snapshot()
    common = dict(fhir=[h.fhir_dir], dicom=[], cohort=cohort, pseudonym_key=KEY)
    files = ingest_silo(wearables=[h.wearables_dir], **common)
    streamed = ingest_silo(wearables=[], steps=with_snapshot(STEPS, snapshot), **common)
    signal_files, signal_streams = files.dataset.signal, streamed.dataset.signal
    assert streamed.report.modalities["signal"].samples == files.report.modalities["signal"].samples > 0
    assert streamed.report.modalities["signal"].sources == {"stream": 12}
    np.testing.assert_allclose(signal_streams.numpy(), signal_files.numpy(), atol=1e-5)
    assert streamed.report.modalities["signal"].cached == 0  # the first study over the store windows every recording
    again = ingest_silo(wearables=[], steps=with_snapshot(STEPS, snapshot), **common)
    assert again.report.modalities["signal"].cached == 12  # the next one takes the windows kept for the same rows
    np.testing.assert_array_equal(again.dataset.signal.numpy(), signal_streams.numpy())
