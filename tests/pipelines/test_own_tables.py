"""A hospital's own tables as they come (#22): headerless `.data` files with '?' tokens, an age column, sex 0/1,
categorical columns and an outcome column, read by the node config's description alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.api.study import CohortSpec, FeatureSpec, StudySpec
from pipelines.ehr.table_source import TableSource
from pipelines.ingest import ingest_silo

from .heart_tables import COLUMNS, heart_rows, write_heart

KEY = b"k" * 32
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HEART = dict(extensions=(".data", ".data.gz"), header=False, columns=tuple(COLUMNS), missing=("?", "", "-9"), age="age",
             sex="sex", codes={"sex": {"0": "female", "1": "male"}}, units={"trestbps": "mm[Hg]", "chol": "mg/dL"})


def _cohort() -> CohortSpec:
    return StudySpec.from_toml(EXAMPLES / "tabular-heart.toml").cohort


def _ingest(tables: list[TableSource], cohort: CohortSpec | None = None):
    return ingest_silo(fhir=[], dicom=[], wearables=[], tables=tables, cohort=cohort or _cohort(), pseudonym_key=KEY)


def test_headerless_data_file_with_question_marks_ingests_without_reshaping(tmp_path: Path):
    rows = heart_rows(120, seed=1)
    rows[0][2] = "7.0"  # a chest-pain code outside the declared categories
    write_heart(tmp_path / "heart" / "cleveland.data", rows[:80])
    write_heart(tmp_path / "heart" / "more" / "cleveland-2.data.gz", rows[80:])  # compressed, and in a subfolder
    (tmp_path / "heart" / "README.txt").write_text("not a table")  # an extension not named: not read
    result = _ingest([TableSource(path=tmp_path / "heart", **HEART)])
    r, d = result.report, result.dataset
    assert r.quarantined_total == 0, result.quarantine.entries  # '?' is missing, never a refused row
    assert r.samples == r.patients == 120 and r.modalities["ehr"].sources == {"tables": 2}
    assert r.positives == sum(int(row[13]) > 0 for row in rows)  # num > 0
    names = list(d.feature_names)
    assert names[6:10] == ["cp=1", "cp=2", "cp=3", "cp=4"] and d.ehr.shape == (120, 2 * len(names))
    raw = d.ehr_raw.numpy()
    sex = raw[:, names.index("sex_female")]
    assert np.isfinite(sex).all() and 0.2 < sex.mean() < 0.45  # 0/1 mapped through the code map, none missing
    assert np.isfinite(raw[:, names.index("age")]).all()  # the age column is used: nobody excluded for unknown age
    onehot = raw[:, 6:10]
    known = np.isfinite(onehot).all(axis=1)
    assert known.sum() == 119 and (onehot[known].sum(axis=1) == 1).all()  # one-hot, the unknown code left missing
    ehr = r.modalities["ehr"]
    assert ehr.unused["unknown_category_cp"] == 1
    assert ehr.mappings["table 1: sex"] == "sex via codes {'0': 'female', '1': 'male'}"
    assert ehr.mappings["table 1: num"] == "label: positive when > 0"
    assert ehr.mappings["table 1: trestbps"] == "feature trestbps in mm[Hg]"
    assert ehr.mappings["table 1: ca"] == "not used" and not ehr.warnings


def test_a_code_map_that_matches_nothing_is_a_warning(tmp_path: Path):
    write_heart(tmp_path / "va.data", heart_rows(30, seed=2))
    source = TableSource(path=tmp_path / "va.data", **{**HEART, "codes": {"sex": {"F": "female", "M": "male"}}})
    result = _ingest([source])
    warnings = result.report.modalities["ehr"].warnings
    assert any("column 'sex': none of its 30 values is in its code map ['F', 'M']" in w for w in warnings), warnings
    assert not np.isfinite(result.dataset.ehr_raw.numpy()[:, 1]).any()  # sex_female: missing, and said so


def test_a_column_the_config_names_that_the_table_lacks_is_a_warning(tmp_path: Path):
    write_heart(tmp_path / "h.data", heart_rows(5, seed=4))
    result = _ingest([TableSource(path=tmp_path / "h.data", **{**HEART, "age": "Age_Years", "sex": "SEX"})])
    warnings = result.report.modalities["ehr"].warnings
    assert len(warnings) == 1 and "column 'age_years', named in the node config or the study, is not in the table" in warnings[0]
    assert result.report.excluded == {"below_min_age_or_unknown_age": 5}  # what the warning explains
    assert result.report.modalities["ehr"].mappings["table 1: sex"].startswith("sex via codes")  # 'SEX' matched 'sex'


def test_units_from_the_node_config_are_converted(tmp_path: Path):
    rows = heart_rows(10, seed=3)
    for row in rows:
        row[4] = "5.2"  # cholesterol exported in mmol/L
    write_heart(tmp_path / "h.data", rows)
    result = _ingest([TableSource(path=tmp_path / "h.data", **{**HEART, "units": {"trestbps": "mm[Hg]", "chol": "mmol/L"}})])
    chol = result.dataset.ehr_raw.numpy()[:, 3]
    assert chol == pytest.approx(np.full(10, 5.2 * 386.654 / 10), rel=1e-6)  # -> mg/dL


def test_label_from_a_set_of_codes_and_a_table_index_date(tmp_path: Path):
    (tmp_path / "t.tsv").write_text("mrn\tdob\texam\tglucose\tdx\n"
                                    "A\t1950-01-01\t2019-05-01\t99\tI25\n"
                                    "B\t1980-01-01\t2020-05-01\t?\tnone\n"
                                    "C\t1970-01-01\t\t80\tI25\n")
    cohort = CohortSpec(label_source="column", label_column="dx", label_values=("I25", "I21"), index_from="column",
                        index_column="exam", features=(FeatureSpec(name="glucose", code="2345-7"),))
    src = TableSource(path=tmp_path / "t.tsv", extensions=(".tsv",), delimiter="\t", patient_id="mrn", birth_date="dob")
    result = ingest_silo(fhir=[], dicom=[], wearables=[], tables=[src], cohort=cohort, pseudonym_key=KEY)
    r = result.report
    assert r.samples == 2 and r.positives == 1  # A positive (I25), B negative
    assert r.excluded == {"no_index_date_column": 1}  # C has no exam date: counted, with the reason
    # values dated on each patient's own index day (2019 and 2020), inside the look-back window of each
    assert sorted(result.dataset.ehr_raw.numpy()[:, 0].tolist(), key=np.isnan)[0] == 99.0
    assert r.quarantined_total == 0


def test_headerless_table_needs_column_names():
    with pytest.raises(ValueError, match="header = false needs columns"):
        TableSource(path=Path("x.data"), header=False)
