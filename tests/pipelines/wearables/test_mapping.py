"""The node's [wearables] mapping: native names to study channels, the device per file pattern, and what the
ingest report says about both (the device, the mapping used, channels no study channel uses)."""

from __future__ import annotations

import json
import tomllib
from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from coordinator.api.study import CohortSpec
from pipelines.ingest import ingest_silo
from pipelines.synthetic import generate_federation
from pipelines.wearables.device import canonical
from pipelines.wearables.mapping import WearableMapping
from silo_node.config import NodeConfig

KEY = b"fedcare-test-pseudonym-key-32byt"


def test_aliases_name_one_lead():
    assert {canonical(n) for n in ("II", "MLII", "lead II", "Lead-II", "ECG lead II")} == {"ecg_ii"}
    assert canonical("HR") == canonical("HeartRate") == "heart_rate" and canonical("V5") != canonical("V1")


def test_renamed_columns_through_ingest_are_reported_with_the_mapping(tmp_path: Path):
    h = generate_federation(tmp_path, n_hospitals=1, patients_per_hospital=4, seed=1, missing_fraction=0.0)[0]
    for f in Path(h.wearables_dir).glob("*.csv"):
        f.write_text(f.read_text().replace("timestamp,heart_rate,", "timestamp,HF,", 1))
    cohort = CohortSpec(signal_channels=("heart_rate",), signal_rate_hz=1.0, signal_length=32)

    def run(mapping: WearableMapping):
        return ingest_silo(fhir=[h.fhir_dir], dicom=[], wearables=[h.wearables_dir], cohort=cohort, pseudonym_key=KEY,
                           index_date=date(2024, 1, 1), wearable_mapping=mapping).report.modalities["signal"]

    unmapped = run(WearableMapping())
    assert unmapped.patients == 0 and set(unmapped.quarantined) == {"missing_column"}
    assert any("'HF'" in w for w in unmapped.warnings)  # named, not silently dropped
    mapped = run(WearableMapping(channels={"hf": "heart_rate"}))
    assert mapped.patients > 0 and mapped.quarantined == {}
    assert mapped.sources == {"fedcare_csv": 4} and mapped.mappings == {"fedcare_csv: HF": "heart_rate"}
    assert mapped.warnings == ["fedcare_csv: channels ['acc_x', 'acc_y', 'acc_z'] map to no study channel; map them in "
                               "[wearables] channels of the node config if the study should use them"]


def test_device_pattern_reads_a_file_its_name_would_not(tmp_path: Path, read):
    points = [{"header": {"schema_id": {"namespace": "omh", "name": "heart-rate", "version": "1.1"}, "user_id": "MRN-M1"},
               "body": {"heart_rate": {"value": 70, "unit": "beats/min"},
                        "effective_time_frame": {"date_time": f"2023-12-31T10:00:{s:02d}Z"}}} for s in range(10)]
    (tmp_path / "omh").mkdir()
    (tmp_path / "omh" / "points.txt").write_text("".join(json.dumps(p) + "\n" for p in points))
    got = read([tmp_path], length=8)
    assert got.stats["inputs_read"] == 0  # a .txt is no input of any reader
    got = read([tmp_path], length=8, mrns=("MRN-M1",),
               mapping=WearableMapping(devices=[{"pattern": "omh/*.txt", "device": "open_mhealth"}]))
    assert got.notes.devices == {"open_mhealth": 1} and set(got.windows) == {"MRN-M1"}  # read as NDJSON


def test_node_config_section_is_validated(tmp_path: Path):
    base = ("name = 'st-mary'\ncoordinator = 'c:1'\nstate_dir = 's'\ninsecure = true\n[data]\ndataset = 'd'\n"
            "wearables = ['w']\n[wearables]\nchannels = { Pulse = 'heart_rate' }\n")
    ok = base + "devices = [{ pattern = 'garmin/*.fit', device = 'garmin_fit' }]\n"
    mapping = NodeConfig.model_validate(tomllib.loads(ok)).wearables
    assert mapping.device_for(Path("/x/garmin/a.fit")) == "garmin_fit" and mapping.device_for(Path("/x/notgarmin/a.fit")) is None
    with pytest.raises(ValidationError, match="device 'garmin' is not a wearable reader; expected one of"):
        NodeConfig.model_validate(tomllib.loads(base + "devices = [{ pattern = '*.fit', device = 'garmin' }]\n"))
    with pytest.raises(ValidationError, match="Extra inputs"):
        NodeConfig.model_validate(tomllib.loads(base + "colums = {}\n"))


def test_dry_run_ingest_takes_the_mapping_from_node_toml(tmp_path: Path):
    from typer.testing import CliRunner

    from fedcare.cli import app

    (tmp_path / "w").mkdir()
    rows = "\n".join(f"2023-12-31T10:00:{s:02d}Z,{70 + s % 3}" for s in range(40))
    (tmp_path / "w" / "MRN-C1.csv").write_text(f"timestamp,HF\n{rows}\n")
    (tmp_path / "node.toml").write_text("name = 'st-mary'\ncoordinator = 'c:1'\nstate_dir = 's'\ninsecure = true\n"
                                        "[data]\ndataset = 'd'\nwearables = ['w']\n"
                                        "[wearables]\nchannels = { HF = 'heart_rate' }\n")
    done = CliRunner().invoke(app, ["silo", "ingest", "--config", str(tmp_path / "node.toml"), "--out", str(tmp_path / "o")])
    assert done.exit_code == 0, done.output
    signal = json.loads((tmp_path / "o" / "ingest-report.json").read_text())["modalities"]["signal"]
    assert signal["mappings"] == {"fedcare_csv: HF": "heart_rate"}  # taken from node.toml
    assert signal["quarantined"] == {"missing_column": 1}  # the default cohort also wants acc_x/y/z
