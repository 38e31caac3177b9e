"""Every file in examples/ validates with the real models: node configs with NodeConfig, study specs
with StudySpec (and builds its model), so the commented starting points cannot rot."""

from pathlib import Path

import pytest

from coordinator.api.study import StudySpec
from pipelines.models import build_model
from silo_node.config import NodeConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NODE_CONFIGS = sorted(p for p in EXAMPLES.glob("*.toml") if "node" in p.stem)
STUDY_SPECS = sorted(p for p in EXAMPLES.glob("*.toml") if "node" not in p.stem)


def test_there_are_examples_of_each_kind() -> None:
    names = {p.name for p in EXAMPLES.glob("*.toml")}
    assert {"node.toml", "multimodal.toml", "imaging-3d.toml", "robust-ckks.toml"} <= names


@pytest.mark.parametrize("path", NODE_CONFIGS, ids=lambda p: p.name)
def test_node_config_validates(path: Path) -> None:
    config = NodeConfig.load(path)
    assert config.tls is not None or config.insecure


@pytest.mark.parametrize("path", STUDY_SPECS, ids=lambda p: p.name)
def test_study_spec_validates_and_builds_its_model(path: Path) -> None:
    spec = StudySpec.from_toml(path)
    assert build_model(**spec.model_arguments()) is not None


def test_hospital_node_example_names_every_kind_of_source_and_a_real_tls_setup() -> None:
    config = NodeConfig.load(EXAMPLES / "node.toml")
    data = config.data
    assert data.fhir and data.tabular and data.dicom and data.dicomweb and data.wearables
    assert not config.insecure and config.approval.mode == "manual" and config.privacy.epsilon_cap > 0


def test_each_example_study_is_of_its_kind() -> None:
    multimodal = StudySpec.from_toml(EXAMPLES / "multimodal.toml")
    assert set(multimodal.modalities) == {"ehr", "image", "signal"}
    assert StudySpec.from_toml(EXAMPLES / "imaging-3d.toml").cohort.image_dims == 3
    robust = StudySpec.from_toml(EXAMPLES / "robust-ckks.toml")
    assert robust.aggregation.rule == "krum" and robust.privacy.encryption == "ckks-screen"
