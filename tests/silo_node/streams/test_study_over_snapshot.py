"""A study trains end to end on a snapshot of streamed data: one hospital's wearables arrive over HTTP at a real
`fedcare silo stream`, the other's as files; the coordinator and both silos are real processes over gRPC."""

from __future__ import annotations

import json
import sqlite3
import tomllib
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import tomli_w

from compliance.node_log import AUDIT_LOG_FILE
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec
from fedcare.demo import free_port, write_node_config
from pipelines.synthetic import generate_federation
from tests.e2e.conftest import Cluster

from .test_streams import wait_for

pytestmark = pytest.mark.slow


def _runs(csv: Path) -> list[dict]:
    """The recording as FHIR Observations, one per run of samples 1 s apart: heart rate and the 3 acceleration axes."""
    df = pd.read_csv(csv)
    t = pd.to_datetime(df["timestamp"], utc=True)
    breaks = np.flatnonzero(np.diff(t.astype("int64").to_numpy()) != 1_000_000_000) + 1
    out = []
    for part in np.split(np.arange(len(df)), breaks):
        def sampled(cols: list[str], unit: str) -> dict:
            data = " ".join(repr(float(v)) for v in df.loc[part, cols].to_numpy().ravel())
            return {"origin": {"value": 0, "code": unit, "system": "http://unitsofmeasure.org"}, "period": 1000,
                    "dimensions": len(cols), "data": data}

        out.append({"resourceType": "Observation", "status": "final", "code": {"text": "wearable"},
                    "effectiveDateTime": datetime.fromisoformat(str(t[part[0]])).isoformat(),
                    "component": [
                        {"code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                         "valueSampledData": sampled(["heart_rate"], "/min")},
                        {"code": {"text": "acc"}, "valueSampledData": sampled(["acc_x", "acc_y", "acc_z"], "g")}]})
    return out


def _ingested(state: Path) -> dict:
    with sqlite3.connect(f"file:{state / AUDIT_LOG_FILE}?mode=ro", uri=True) as db:
        (fields,) = db.execute("SELECT fields FROM entries WHERE event = 'data_ingested'").fetchone()
    return json.loads(fields)


def test_a_study_trains_on_a_snapshot_of_streamed_wearable_data(tmp_path: Path):
    streamed, filed = generate_federation(tmp_path / "data", n_hospitals=2, patients_per_hospital=40, seed=7)
    cluster = Cluster(root=tmp_path, target=f"127.0.0.1:{free_port()}", hospitals=[streamed, filed])
    try:
        client = cluster.start_coordinator()
        port = free_port()
        cfg = tmp_path / "silos" / streamed.name / "node.toml"
        write_node_config(cfg, name=streamed.name, coordinator=cluster.target, data=streamed,
                          dataset=f"{streamed.name}-ehr",
                          streams={"http": {"listen": f"127.0.0.1:{port}", "insecure": True}})
        node = tomllib.loads(cfg.read_text())
        node["data"]["wearables"] = []  # no wearable files: the stream only
        cfg.write_text(tomli_w.dumps(node))
        cluster._spawn("stream", ["silo", "stream", "--config", str(cfg)])
        url = f"http://127.0.0.1:{port}/streams"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=180)
        recordings = sorted(streamed.wearables_dir.glob("*.csv"))
        for csv in recordings:
            r = httpx.post(f"{url}/watch-{csv.stem}/{csv.stem}", content=json.dumps(_runs(csv)), timeout=60)
            assert r.status_code == 201, r.text
        for h in (streamed, filed):
            cluster.start_silo(h)
        spec = StudySpec(name="streamed", training=TrainingSpec(rounds=1, local_epochs=1, learning_rate=0.05,
                                                                min_silos=2, expected_silos=2, round_timeout_s=240),
                         privacy=PrivacySpec(dp=False, encryption="none"))
        study = client.submit(spec)
        summary = cluster.wait_for(client, study, lambda st, s: st.state == "done", timeout=600)
        assert summary["rounds"][-1]["bytes_up"][streamed.name] > 1000  # the streamed hospital trained and sent an update
        ingested = _ingested(cfg.parent / "state")
        snapshot, signal = ingested["stream_snapshot"], ingested["report"]["modalities"]["signal"]
        assert snapshot["samples"] > 0 and len(snapshot["sha256"]) == 64
        assert signal["sources"] == {"stream": len(recordings)} and signal["samples"] > 0  # windows came from the snapshot only
    finally:
        cluster.stop()
