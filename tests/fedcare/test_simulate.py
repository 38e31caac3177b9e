"""fedcare simulate: the same study on the local engine and on a real Ray cluster (by its address); ingestion as
Ray tasks on that cluster; the table folder partitions."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from coordinator.api.study import CohortSpec
from fedcare.demo import DemoOptions, demo_spec
from fedcare.simulate import Engine, SimulationError, SimulationOptions, simulate
from fedcare.simulate_data import partition_tables, synthetic_silos
from pipelines.ingest import ingest_silo
from pipelines.parallel import SEQUENTIAL, Workers

RAY_START_S = 120  # a loaded 2-core machine starts a Ray node in 5-30 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A real Ray cluster of 2 CPUs started with the `ray` CLI of this environment; its address.

    `ray start --head --block` in a session of its own: ending that command (SIGTERM) ends the node's
    processes, which share its fate, so no broad `ray stop` touches other Ray instances on this machine.
    Its own temp dir and ports: a plain `ray.init()` elsewhere here neither finds it nor collides with it. No
    token authentication: `ray start` turns it on whenever ~/.ray/auth_token exists (any local `ray.init()` writes
    one), and a driver joining by address sends its token only with RAY_AUTH_MODE=token (docs/simulate.md)."""
    temp = Path(tempfile.mkdtemp(prefix="fedcare-ray-"))  # short: Ray's socket paths live under it
    port = _free_port()
    output = temp / "ray-start.log"
    with output.open("wb") as log:
        head = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
             f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        deadline = time.monotonic() + RAY_START_S
        while not (temp / "ray_current_cluster").exists():  # written once the head node runs
            if head.poll() is not None:
                raise RuntimeError(f"ray start failed: {output.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray start did not bring up a node within {RAY_START_S} s")
            time.sleep(0.2)
        yield (temp / "ray_current_cluster").read_text().strip()
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def tiny_spec():
    """The demo's study in the clear: 2 rounds of 1 local epoch, no DP, no encryption."""
    return demo_spec(DemoOptions(out=Path("unused"), rounds=2, silos=2, dp=False, encryption="none", local_epochs=1))


@pytest.mark.slow  # a Ray cluster of its own processes
def test_local_engine_and_a_ray_cluster_by_address_run_the_same_study(tmp_path: Path, ray_cluster: str) -> None:
    import ray  # a dependency of fedcare: never skipped
    silos = synthetic_silos(tmp_path / "data", silos=2, patients=30, seed=3)
    local = simulate(tiny_spec(), silos, SimulationOptions(out=tmp_path / "local", engine=Engine.LOCAL, seed=3))
    try:
        on_ray = simulate(tiny_spec(), silos, SimulationOptions(out=tmp_path / "ray", engine=Engine.RAY, seed=3,
                                                                address=ray_cluster))
        assert ray.get_runtime_context().gcs_address == ray_cluster  # joined the cluster, started no Ray of its own
    finally:
        ray.shutdown()
    for summary, out in ((local, tmp_path / "local"), (on_ray, tmp_path / "ray")):
        assert summary["state"] == "done"
        assert summary["silos"] == sorted(s.name for s in silos)
        assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
        assert all(t["rounds"] == 2 and t["bytes_up"] > 0 for t in summary["totals"].values())
        assert (out / "final_model.pt").exists() and (out / "summary.json").exists()
    # the same hospitals, seed and threads: the same model whichever engine hosts the silos
    assert local["final"]["model_sha256"] == on_ray["final"]["model_sha256"]
    assert local["rounds"][-1]["metrics"] == on_ray["rounds"][-1]["metrics"]


@pytest.mark.slow  # a Ray cluster of its own processes
def test_ingestion_as_ray_tasks_on_a_cluster_equals_sequential(tmp_path: Path, ray_cluster: str) -> None:
    """[data.workers] ray_address: a hospital's FHIR bundles and DICOM files parsed as Ray tasks on the cluster."""
    import ray

    hospital = synthetic_silos(tmp_path / "data", silos=1, patients=20, seed=4)[0].data
    key = b"fedcare-test-pseudonym-key-32byt"
    runs = {}
    try:
        for name, workers in (("sequential", SEQUENTIAL),
                              ("ray", Workers(processes=2, ray_address=ray_cluster, min_inputs=1))):
            runs[name] = ingest_silo(fhir=hospital.fhir, dicom=hospital.dicom, wearables=[], cohort=CohortSpec(),
                                     pseudonym_key=key, workers=workers)
        assert ray.is_initialized() and ray.get_runtime_context().gcs_address == ray_cluster
    finally:
        ray.shutdown()
    seq, on_ray = runs["sequential"], runs["ray"]
    assert seq.report.modalities["ehr"].records > 0 and seq.report.modalities["image"].records > 0
    assert on_ray.report.model_dump() == seq.report.model_dump()
    assert on_ray.quarantine.entries == seq.quarantine.entries
    assert on_ray.dataset.pseudonyms == seq.dataset.pseudonyms
    for field in ("ehr", "image", "label", "mask"):
        assert torch.equal(getattr(on_ray.dataset, field), getattr(seq.dataset, field))


def _tables(folder: Path) -> None:
    folder.mkdir()
    patients = [f"p{i:03d}" for i in range(60)]
    pd.DataFrame({"patient_id": patients, "site": ["a", "b", "c"] * 20, "label": ["0", "1"] * 30,
                  "age": range(60)}).to_csv(folder / "patients.csv", index=False)
    pd.DataFrame({"patient_id": patients * 2, "code": ["8480-6"] * 120, "value": range(120)}).to_csv(
        folder / "observations.csv", index=False)


def test_tables_partition_by_column_or_dirichlet_keeps_every_row_once(tmp_path: Path) -> None:
    _tables(tmp_path / "tables")
    by_site = partition_tables(tmp_path / "tables", tmp_path / "by-site", silos=3, patient_column="patient_id", seed=0,
                               by="site")
    sites = [set(pd.read_csv(s.data.tabular[0] / "patients.csv")["site"]) for s in by_site]
    assert sites == [{"a"}, {"b"}, {"c"}]
    skewed = partition_tables(tmp_path / "tables", tmp_path / "dirichlet", silos=4, patient_column="patient_id", seed=0,
                              dirichlet_column="label", alpha=0.1)
    seen: list[str] = []
    for s in skewed:
        obs = pd.read_csv(s.data.tabular[0] / "observations.csv", dtype=str)
        pts = pd.read_csv(s.data.tabular[0] / "patients.csv", dtype=str)
        assert set(obs["patient_id"]) <= set(pts["patient_id"])  # a patient's rows stay together
        seen += list(pts["patient_id"])
    assert sorted(seen) == [f"p{i:03d}" for i in range(60)]  # every patient in exactly one silo
    with pytest.raises(SimulationError, match="names 3 hospitals; --silos is 2"):
        partition_tables(tmp_path / "tables", tmp_path / "bad", silos=2, patient_column="patient_id", seed=0, by="site")


@pytest.mark.parametrize("args, says", [
    (["--engine", "spark"], "--engine must be one of local, ray, not 'spark'"),
    (["--dirichlet-alpha", "0.5"], "partition --tables or --fhir; name the folder"),
    (["--tables", "a", "--fhir", "b"], "--tables and --fhir are two populations to partition; name one folder"),
])
def test_cli_refuses_options_that_cannot_work_in_one_line(args: list[str], says: str) -> None:
    from typer.testing import CliRunner

    from fedcare.cli import app

    result = CliRunner().invoke(app, ["simulate", "examples/multimodal.toml", *args])
    assert result.exit_code != 0 and says in str(result.exception)
