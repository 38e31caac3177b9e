"""fedcare simulate: the same study on the local engine and on Ray; the table folder partitions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedcare.demo import DemoOptions, demo_spec
from fedcare.simulate import Engine, SimulationError, SimulationOptions, simulate
from fedcare.simulate_data import partition_tables, synthetic_silos


def tiny_spec():
    """The demo's study in the clear: 2 rounds of 1 local epoch, no DP, no encryption."""
    return demo_spec(DemoOptions(out=Path("unused"), rounds=2, silos=2, dp=False, encryption="none", local_epochs=1))


def test_local_and_ray_engines_run_the_same_study(tmp_path: Path) -> None:
    import ray  # a dependency of fedcare: never skipped
    silos = synthetic_silos(tmp_path / "data", silos=2, patients=30, seed=3)
    local = simulate(tiny_spec(), silos, SimulationOptions(out=tmp_path / "local", engine=Engine.LOCAL, seed=3))
    try:
        on_ray = simulate(tiny_spec(), silos, SimulationOptions(out=tmp_path / "ray", engine=Engine.RAY, seed=3,
                                                                local_cpus=2))
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
    (["--dirichlet-alpha", "0.5"], "partition --tables; name the folder"),
])
def test_cli_refuses_options_that_cannot_work_in_one_line(args: list[str], says: str) -> None:
    from typer.testing import CliRunner

    from fedcare.cli import app

    result = CliRunner().invoke(app, ["simulate", "examples/multimodal.toml", *args])
    assert result.exit_code != 0 and says in str(result.exception)
