"""#22 item 6: splits a study controls. A split column of a hospital's table, or a split file kept at the silo, is
honoured exactly when the study says `cohort.split = "column"`; patients without a part take the hash split and
are counted; normalisation statistics still come from training rows only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coordinator.api.study import StudySpec
from fedcare.cli import app
from pipelines.dataset import MultimodalDataset, split_silo
from pipelines.deid import Deidentifier
from pipelines.errors import DatasetError
from pipelines.ingest import ingest_silo
from pipelines.normalise import fit_on_training
from pipelines.splits import SplitPart
from silo_node.config import NodeConfig

from .heart_tables import COLUMNS, heart_rows, write_heart

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KEY = b"k" * 32
CELLS = ["train", "val", "TEST", "", "validation", "train", "training", "bogus"]  # "" and "bogus": no part
PART = {"train": "train", "training": "train", "val": "validation", "validation": "validation", "test": "test"}


def _table(tmp_path: Path, n: int = 240) -> tuple[list, list[str]]:
    """The example's heart table with an MRN and a split column appended; the table source that reads it."""
    rows = heart_rows(n, seed=3)
    cells = [CELLS[i % len(CELLS)] for i in range(n)]
    write_heart(tmp_path / "heart" / "h.data", [r + [f"MRN{i:05d}", c] for i, (r, c) in enumerate(zip(rows, cells))])
    text = (EXAMPLES / "tabular-node.toml").read_text().replace('path = "/data/heart"', f'path = "{tmp_path / "heart"}"')
    (tmp_path / "node.toml").write_text(text.split("[tls]")[0].replace("[data]", "insecure = true\n\n[data]", 1))
    table = NodeConfig.load(tmp_path / "node.toml").data.tables[0]
    table = table.model_copy(update={"columns": (*COLUMNS, "mrn", "split"), "patient_id": "mrn", "split_column": "split"})
    return [table], cells


def _spec(split: str) -> StudySpec:
    spec = StudySpec.from_toml(EXAMPLES / "tabular-heart.toml")
    return spec.model_copy(update={"cohort": spec.cohort.model_copy(update={"split": split})})


def test_split_column_is_honoured_exactly_and_the_rest_take_the_hash_split(tmp_path: Path):
    tables, cells = _table(tmp_path)
    spec = _spec("column")
    result = ingest_silo(fhir=[], dicom=[], wearables=[], tables=tables, cohort=spec.cohort, pseudonym_key=KEY)
    deid = Deidentifier(KEY)
    want = {deid.pseudonym(f"MRN{i:05d}"): PART.get(c.lower()) for i, c in enumerate(cells)}
    d = result.dataset
    assert len(d) == len(cells)
    c = spec.cohort
    parts = split_silo(d, test_fraction=c.test_fraction, validation_fraction=c.validation_fraction,
                       seed=spec.training.seed, stratify=c.stratify_split, by_column=True)
    for name, part in zip(("train", "validation", "test"), parts):
        for pid in part.pseudonyms:
            assert want[pid] in (name, None), (pid, want[pid], name)
    assert {p for part in parts for p in part.pseudonyms} == set(d.pseudonyms)
    counts = {k: sum(v == k for v in want.values()) for k in ("train", "validation", "test")}
    assert result.report.split_assigned == {**counts, "none": len(cells) - sum(counts.values())}
    assert result.report.modalities["ehr"].unused["unknown_split_value"] == cells.count("bogus")
    assert result.report.modalities["ehr"].mappings["table 1: split"] == "split part (train/validation/test)"
    # the patients without a part (blank, "bogus") are hash-split among themselves: some land in each part
    rest = {p for p, v in want.items() if v is None}
    assert all(set(part.pseudonyms) & rest for part in parts)

    # the hash split (the default) ignores the column
    hashed = split_silo(d, test_fraction=c.test_fraction, validation_fraction=c.validation_fraction,
                        seed=spec.training.seed, stratify=c.stratify_split)
    assert any(want[p] not in ("test", None) for p in hashed.test.pseudonyms)


def test_normalisation_uses_training_rows_of_the_column_split_only(tmp_path: Path):
    tables, _ = _table(tmp_path)
    spec = _spec("column")
    d = ingest_silo(fhir=[], dicom=[], wearables=[], tables=tables, cohort=spec.cohort, pseudonym_key=KEY).dataset
    c = spec.cohort
    train, validation, test = split_silo(d, test_fraction=c.test_fraction, validation_fraction=c.validation_fraction,
                                         seed=0, by_column=True)
    fitted = fit_on_training(train, validation, test, features=c.features)
    # a test row's raw value moved far away changes nothing in the training rows' normalised values
    raw = test.ehr_raw.clone()
    col = list(d.feature_names).index("chol")
    raw[:, col] = torch.where(torch.isnan(raw[:, col]), raw[:, col], raw[:, col] + 5000.0)
    moved = MultimodalDataset(ehr=test.ehr, image=test.image, signal=test.signal, mask=test.mask, label=test.label,
                           pseudonyms=test.pseudonyms, feature_names=test.feature_names, ehr_raw=raw,
                           assigned=test.assigned)
    refitted = fit_on_training(train, validation, moved, features=c.features)
    assert torch.equal(fitted[0].ehr, refitted[0].ehr) and torch.equal(fitted[1].ehr, refitted[1].ehr)
    assert not torch.equal(fitted[2].ehr, refitted[2].ehr)


def test_split_file_at_the_silo_matches_on_the_pseudonym(tmp_path: Path):
    tables, _ = _table(tmp_path, n=60)
    tables = [tables[0].model_copy(update={"split_column": None})]
    lines = ["mrn,split"] + [f"MRN{i:05d},{'test' if i % 4 == 0 else 'train'}" for i in range(0, 60, 2)]
    (tmp_path / "split.csv").write_text("\n".join(lines) + "\n")
    spec = _spec("column")
    result = ingest_silo(fhir=[], dicom=[], wearables=[], tables=tables, split_file=tmp_path / "split.csv",
                         cohort=spec.cohort, pseudonym_key=KEY)
    deid = Deidentifier(KEY)
    test = split_silo(result.dataset, test_fraction=0.25, validation_fraction=0.2, seed=0, by_column=True).test
    named_test = {deid.pseudonym(f"MRN{i:05d}") for i in range(0, 60, 4)}
    named_train = {deid.pseudonym(f"MRN{i:05d}") for i in range(2, 60, 4)}
    assert named_test <= set(test.pseudonyms) and not named_train & set(test.pseudonyms)
    assert result.report.split_assigned == {"none": 30, "test": 15, "train": 15}
    assert result.dataset.assigned[result.dataset.pseudonyms.index(deid.pseudonym("MRN00000"))] is SplitPart.TEST


def test_a_column_split_without_any_part_in_the_data_is_refused(tmp_path: Path):
    tables, _ = _table(tmp_path, n=20)
    tables = [tables[0].model_copy(update={"split_column": None})]
    d = ingest_silo(fhir=[], dicom=[], wearables=[], tables=tables, cohort=_spec("column").cohort,
                    pseudonym_key=KEY).dataset
    with pytest.raises(DatasetError, match="names no part for any patient; set split_column"):
        split_silo(d, test_fraction=0.25, validation_fraction=0.2, seed=0, by_column=True)


def test_stratification_still_holds_for_the_patients_the_hash_split_places():
    n = 200
    label = (torch.arange(n) < 40).float()
    assigned = [SplitPart.TRAIN if i % 2 else None for i in range(n)]  # half named train, half hash-split
    d = MultimodalDataset(ehr=torch.zeros(n, 4), image=torch.zeros(n, 1, 8, 8), signal=torch.zeros(n, 2, 16),
                          mask=torch.ones(n, 3), label=label, pseudonyms=[f"p{i}" for i in range(n)], assigned=assigned)
    train, validation, test = split_silo(d, test_fraction=0.25, validation_fraction=0.2, seed=0, stratify=True,
                                         by_column=True)
    # 100 hash-split patients, 20 positive: exactly round(20*0.25) and round(20*0.2) positives
    assert int(test.label.sum()) == 5 and int(validation.label.sum()) == 4
    assert len(test) == 5 + 20 and len(validation) == 4 + 16 and len(train) == 100 + 11 + 44
    assert np.all([a is SplitPart.TRAIN or a is None for a in train.assigned])


def test_silo_ingest_reads_the_split_column_and_the_split_file_named_in_node_toml(tmp_path: Path):
    """`fedcare silo ingest --config`: the split file is taken relative to node.toml, wins over the column for the
    patients it names, and the report shows the parts the data names."""
    _, cells = _table(tmp_path, n=16)
    text = (tmp_path / "node.toml").read_text().replace("[data]\n", '[data]\nsplit_file = "split.csv"\n', 1)
    text = text.replace('"thal", "num"]', '"thal", "num", "mrn", "split"]').replace('# patient_id = "mrn"', 'patient_id = "mrn"')
    (tmp_path / "node.toml").write_text(text.replace('# split_column = "split"', 'split_column = "split"'))
    (tmp_path / "split.csv").write_text("mrn,split\nMRN00000,test\nMRN00001,test\n")  # rows 0, 1 say train, val
    assert NodeConfig.load(tmp_path / "node.toml").data.split_file == tmp_path / "split.csv"
    done = CliRunner().invoke(app, ["silo", "ingest", "--config", str(tmp_path / "node.toml"), "--spec",
                                    str(EXAMPLES / "tabular-heart.toml"), "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "out" / "ingest-report.json").read_text())
    named = [PART.get(c.lower()) for c in cells]
    named[0] = named[1] = "test"
    want = {k: named.count(k) for k in ("train", "validation", "test")} | {"none": named.count(None)}
    assert report["split_assigned"] == dict(sorted(want.items()))
    assert "split named" in done.output
