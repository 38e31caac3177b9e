"""An analysis spec refuses training-only settings at submission (StudySpec validation), naming the field,
instead of ignoring them (#19)."""

import pytest
import tomli_w

from coordinator.api.study import (
    AnalysisSpec,
    ModelSpec,
    PrivacySpec,
    SpecError,
    StudySpec,
    TrainingSpec,
    analysis_study,
)


@pytest.mark.parametrize(("section", "value", "field"), [
    ("training", TrainingSpec(rounds=3), "training.rounds"),
    ("training", TrainingSpec(min_silos=2, learning_rate=0.5), "training.learning_rate"),
    ("privacy", PrivacySpec(dp=False), "privacy.dp"),
    ("model", ModelSpec(embed_dim=8), "model.embed_dim"),
])
def test_a_training_setting_in_an_analysis_spec_is_refused_by_name(section, value, field) -> None:
    with pytest.raises(ValueError, match=f"{field}: an analysis study"):
        StudySpec(name="overview", kind="analysis", **{section: value})
    StudySpec(name="trained", **{section: value})  # the same setting is a training study's own


def test_the_enrolment_settings_an_analysis_uses_are_accepted() -> None:
    spec = StudySpec(name="overview", kind="analysis",
                     training=TrainingSpec(min_silos=3, expected_silos=4, round_timeout_s=60, enrollment_timeout_s=5))
    assert StudySpec.from_json(spec.to_json()) == spec


def test_a_toml_analysis_spec_with_a_training_section_names_the_file_and_field(tmp_path) -> None:
    path = tmp_path / "overview.toml"
    path.write_text(tomli_w.dumps({"name": "overview", "kind": "analysis", "aggregation": {"rule": "median"}}))
    with pytest.raises(SpecError, match=r"overview\.toml.*aggregation\.rule: an analysis study"):
        StudySpec.from_toml(path)


def test_analysis_study_keeps_the_training_cohort_and_quorum_only() -> None:
    training = StudySpec(name="trained", modalities=["ehr"], model=ModelSpec(architecture="linear"),
                         training=TrainingSpec(rounds=7, min_silos=3), privacy=PrivacySpec(target_epsilon=2.0))
    spec = analysis_study(training, name="overview", analysis=AnalysisSpec(bins={"age": (40.0, 60.0)}))
    assert spec.cohort == training.cohort and spec.modalities == ("ehr",) and spec.training.min_silos == 3
    assert StudySpec.from_json(spec.to_json()) == spec
