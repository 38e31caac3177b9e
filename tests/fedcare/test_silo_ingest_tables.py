"""#22 done-when: a headerless `.data` table with '?' tokens, an age column, 0/1 sex, a categorical column and an
outcome column trains with only a node config (examples/tabular-node.toml) and a study spec
(examples/tabular-heart.toml): no reshaping by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from coordinator.api.study import StudySpec
from fedcare.cli import app
from pipelines.dataset import split_silo
from pipelines.ingest import ingest_silo
from pipelines.normalise import fit_on_training
from silo_node.config import NodeConfig
from silo_node.trainer import LocalTrainer

from ..pipelines.heart_tables import heart_rows, write_heart

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _node_toml(root: Path) -> Path:
    """The example node config as a hospital would adapt it: its own folder, a local demo without TLS."""
    text = (EXAMPLES / "tabular-node.toml").read_text()
    text = text.replace('path = "/data/heart"', 'path = "heart"').replace('state_dir = "/var/lib/fedcare"', 'state_dir = "state"')
    text = text.split("[tls]")[0].replace('[data]', 'insecure = true\n\n[data]', 1)
    (root / "node.toml").write_text(text)
    return root / "node.toml"


def test_heart_table_ingests_and_trains_from_node_config_and_spec(tmp_path: Path):
    write_heart(tmp_path / "heart" / "cleveland.data", heart_rows(300, seed=7))
    config = NodeConfig.load(_node_toml(tmp_path))
    spec = StudySpec.from_toml(EXAMPLES / "tabular-heart.toml")

    done = CliRunner().invoke(app, ["silo", "ingest", "--config", str(tmp_path / "node.toml"), "--spec",
                                    str(EXAMPLES / "tabular-heart.toml"), "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "out" / "ingest-report.json").read_text())
    assert report["samples"] == 300 and report["quarantined_total"] == 0
    assert report["modalities"]["ehr"]["mappings"]["table 1: cp"] == "feature cp: categorical ['1', '2', '3', '4']"
    assert report["modalities"]["ehr"]["warnings"] == [] and "warning" not in done.output

    d = config.data
    result = ingest_silo(fhir=d.fhir, dicom=d.dicom, wearables=d.wearables, tables=d.tables, cohort=spec.cohort,
                         pseudonym_key=b"s" * 32)
    c = spec.cohort
    parts = split_silo(result.dataset, test_fraction=c.test_fraction, validation_fraction=c.validation_fraction,
                       seed=spec.training.seed, stratify=c.stratify_split)
    train, validation, test = fit_on_training(*parts, features=c.features)
    spec = spec.model_copy(update={"privacy": spec.privacy.model_copy(update={"dp": False})})  # fast; DP has its tests
    trainer = LocalTrainer(spec, train, test, validation=validation)
    _, weights = trainer.initial_weights()
    for r in range(8):
        out = trainer.train_round(weights, noise_multiplier=None, round_seed=r)
        weights = [w + dw for w, dw in zip(weights, out.delta)]
    metrics = trainer.evaluate(weights)
    assert np.isfinite(metrics["loss"]) and metrics["auroc"] > 0.7, metrics
