"""Study specs are validated at the edge; an invalid one names the field and the reason."""

from pathlib import Path

import pytest

from coordinator.api.study import SpecError, StudySpec


def test_a_minimal_spec_gets_sane_defaults(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text('name = "hf"\nmodalities = ["ehr", "image"]\n[training]\nrounds = 3\n')
    spec = StudySpec.from_toml(path)
    assert spec.training.rounds == 3 and spec.modalities == ("ehr", "image")
    assert spec.model_arguments()["ehr_features"] == len(spec.cohort.features)
    assert StudySpec.from_json(spec.to_json()) == spec
    assert spec.sha256() == StudySpec.from_json(spec.to_json()).sha256()


@pytest.mark.parametrize(
    "toml, field",
    [
        ('name = "x"\n[training]\nrounds = 0\n', "training.rounds"),
        ('name = "x"\nmodalities = ["ehr", "xray"]\n', "modalities"),
        ('name = "x"\n[privacy]\nencryption = "rot13"\n', "privacy.encryption"),
        ('name = "x"\n[privacy]\ndp = true\nnoise_multiplier = -1\n', "privacy.noise_multiplier"),
        ('name = "x"\nunknown_field = 1\n', "unknown_field"),
        ('[training]\nrounds = 2\n', "name"),
        ('name = "x"\n[training]\nmin_silos = 3\nexpected_silos = 2\n', "expected_silos"),
    ],
)
def test_invalid_specs_name_the_field(tmp_path: Path, toml: str, field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(SpecError) as e:
        StudySpec.from_toml(path)
    assert field in str(e.value) and str(path) in str(e.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text("name = = 1")
    with pytest.raises(SpecError, match="not valid TOML"):
        StudySpec.from_toml(tmp_path / "x.toml")
    with pytest.raises(SpecError, match="file not found"):
        StudySpec.from_toml(tmp_path / "missing.toml")
