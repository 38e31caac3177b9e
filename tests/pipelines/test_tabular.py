"""Tabular EHR extracts: generic long CSV, wide Parquet and OMOP CDM tables, mapped by the study's feature spec."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file

from coordinator.api.study import CohortSpec, FeatureSpec
from pipelines.deid import Deidentifier
from pipelines.ehr.features import ehr_values
from pipelines.ehr.factstore import FactStore
from pipelines.ehr.fhir import read_fhir
from pipelines.ingest import ingest_silo
from pipelines.quarantine import Quarantine
from pipelines.ehr.tabular import read_tabular

from .fixtures import RXNORM, SNOMED, patient, quantity, write_bundle

KEY = b"fedcare-test-pseudonym-key-32byt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
FEATURES = (
    FeatureSpec(name="age", system="fedcare", code="age", unit="a"),
    FeatureSpec(name="glucose", code="2345-7", unit="mg/dL", aggregate="mean"),
    FeatureSpec(name="systolic", code="8480-6", unit="mm[Hg]", aggregate="max"),
    FeatureSpec(name="metformin", system=RXNORM, code="860975", unit=None, aggregate="count"),
    FeatureSpec(name="hypertension", system=SNOMED, code="38341003", unit=None, aggregate="count", window_days=3650),
    FeatureSpec(name="smoker", system=SNOMED, code="77176002", unit=None, aggregate="last"),
)
GLUCOSE_MOLAR = 180.156 / 10  # mmol/L -> mg/dL


def _dicom(path: Path, mrn: str) -> Path:
    """pydicom's CT test file, re-identified as one of our patients, taken before the index date."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID, ds.StudyDate = mrn, "20231201"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def _raw(fhir: list[Path], tabular: list[Path], mrn: str, cohort: CohortSpec = CohortSpec(features=FEATURES)) -> np.ndarray:
    """Feature values in cohort units, rebuilt through the public pieces."""
    deid = Deidentifier(KEY)
    with FactStore() as store:
        read_fhir(fhir, Quarantine(), deid=deid, index_date=date(2024, 1, 1), store=store)
        read_tabular(tabular, Quarantine(), deid=deid, index_date=date(2024, 1, 1), features=cohort.features, store=store)
        store.resolve(Quarantine())
        return ehr_values(store.patient(deid.pseudonym(mrn)), tuple(cohort.features), Quarantine(), set())


def _entries(result) -> dict[str, tuple[str, str]]:
    """source -> (reason, message) of the EHR quarantine."""
    return {e.source: (e.reason, e.message) for e in result.quarantine.entries if e.modality == "ehr"}


def test_long_csv_and_wide_parquet_link_with_fhir_and_dicom(tmp_path: Path):
    (tmp_path / "fhir").mkdir()
    write_bundle(tmp_path / "fhir" / "a.json", [patient("a1", "MRN-A", birth="1950-01-01"),
                                                       quantity("2345-7", 100.0, "mg/dL", "2023-10-01", "Patient/a1", "g1")])
    long_csv = tmp_path / "warehouse" / "events.csv"
    long_csv.parent.mkdir()
    long_csv.write_text(
        "MRN,System,Code,Value,Unit,Date,Category\n"
        "MRN-A,LOINC,15074-8,7.0,mmol/L,2023-11-02,\n"             # row 1: molar code and unit, converted
        "MRN-A,http://snomed.info/sct,84114007,,,2024-03-01,condition\n"  # row 2: the label, after the index date
        "MRN-B,RxNorm,860975,,,2023-05-01,\n"                      # rows 3, 4: presence facts, counted
        "MRN-B,RxNorm,860975,,,2023-06-01T08:30:00,\n"
        "MRN-A,LOINC,2345-7,abc,mg/dL,2023-09-01,\n"               # row 5: not a number
        "MRN-A,LOINC,2345-7,5,furlong,2023-09-02,\n"               # row 6: unknown unit
        "MRN-Z,LOINC,2345-7,90,mg/dL,2023-09-01,\n"                # row 7: a patient in no input
        "MRN-B,SNOMED,38341003,,,not-a-date,condition\n")          # row 8: bad date
    wide = tmp_path / "warehouse" / "snapshot.parquet"
    pq.write_table(pa.table({
        "mrn": ["MRN-B", "MRN-B", ""],
        "birth_date": ["1980-04-02", "1980-04-02", "1970-01-01"],
        "sex": ["F", "F", "M"],
        "date": [date(2023, 12, 1), date(2023, 6, 1), date(2023, 6, 1)],
        "systolic [mm[Hg]]": [140.0, 150.0, 120.0],
        "glucose": [5.5, None, 6.0],
        "glucose_unit": ["mmol/L", None, "mmol/L"],
        "ward": ["4B", "4B", "2A"],  # not a feature: not used
    }), wide, row_group_size=2)
    ct = _dicom(tmp_path / "dicom" / "x" / "0001", "MRN-B")

    cohort = CohortSpec(features=FEATURES)
    result = ingest_silo(fhir=[tmp_path / "fhir"], tabular=[tmp_path / "warehouse"], dicom=[ct.parent.parent],
                         wearables=[], cohort=cohort, pseudonym_key=KEY)
    d, r = result.dataset, result.report
    deid = Deidentifier(KEY)
    assert list(d.pseudonyms) == sorted([deid.pseudonym("MRN-A"), deid.pseudonym("MRN-B")])
    b = d.pseudonyms.index(deid.pseudonym("MRN-B"))
    a = 1 - b
    assert d.labels.tolist()[a] == 1 and d.labels.tolist()[b] == 0
    assert d.mask[b].tolist() == [1, 1, 0] and d.mask[a].tolist() == [1, 0, 0]  # the DICOM of MRN-B joined B's sample
    f = len(FEATURES)
    assert d.ehr[b, f:].tolist() == [0, 0, 0, 0, 0, 1]  # only smoking status missing for B
    assert r.modalities["ehr"].sources == {"fhir": 1, "tabular_long": 1, "tabular_wide": 1}
    assert r.modalities["ehr"].unused["tabular_column_not_in_study"] == 1
    q = _entries(result)
    assert q[f"{long_csv}#row=5"][0] == "bad_row" and "'value' holds 'abc'" in q[f"{long_csv}#row=5"][1]
    assert q[f"{long_csv}#row=6"][0] == "unknown_unit" and "furlong" in q[f"{long_csv}#row=6"][1]
    assert q[f"{long_csv}#row=7"][0] == "unknown_patient"
    assert q[f"{long_csv}#row=8"][0] == "bad_row" and "not-a-date" in q[f"{long_csv}#row=8"][1]
    assert q[f"{wide}#row=3"][0] == "bad_row" and "'mrn'" in q[f"{wide}#row=3"][1]
    assert len(q) == 5 and all(src.split("#")[0] in msg for src, (_, msg) in q.items())
    assert "MRN" not in r.model_dump_json()

    raw_a = _raw([tmp_path / "fhir"], [tmp_path / "warehouse"], "MRN-A")
    raw_b = _raw([tmp_path / "fhir"], [tmp_path / "warehouse"], "MRN-B")
    assert raw_a[1] == pytest.approx(np.mean([100.0, 7.0 * GLUCOSE_MOLAR]))
    assert raw_b[0] == pytest.approx((date(2024, 1, 1) - date(1980, 4, 2)).days / 365.25)
    assert raw_b[1] == pytest.approx(5.5 * GLUCOSE_MOLAR) and raw_b[2] == 150 and raw_b[3] == 2
    assert raw_b[4] == 0 and np.isnan(raw_b[5])  # row 8 (hypertension) was quarantined, not counted


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _omop(root: Path) -> Path:
    """A small OMOP CDM v5.4 extract: CONCEPT, PERSON (Parquet), MEASUREMENT, OBSERVATION, CONDITION, DRUG (Parquet)."""
    root.mkdir(parents=True)
    _csv(root / "vocab.csv", "concept_id,concept_name,domain_id,vocabulary_id,concept_class_id,standard_concept,concept_code\n"
         "3004501,Glucose [Mass/volume] in Serum or Plasma,Measurement,LOINC,Lab Test,S,2345-7\n"
         "3004249,Systolic blood pressure,Measurement,LOINC,Clinical Observation,S,8480-6\n"
         "8840,milligram per deciliter,Unit,UCUM,Unit,S,mg/dL\n"
         "8753,millimole per liter,Unit,UCUM,Unit,S,mmol/L\n"
         "8876,millimeter mercury column,Unit,UCUM,Unit,S,mm[Hg]\n"
         "316139,Heart failure,Condition,SNOMED,Clinical Finding,S,84114007\n"
         "45591025,Heart failure unspecified,Condition,ICD10CM,5-char billing code,,I50.9\n"
         "320128,Hypertensive disorder,Condition,SNOMED,Clinical Finding,S,38341003\n"
         "1503297,metformin,Drug,RxNorm,Ingredient,S,860975\n"
         "4041306,Tobacco smoking status,Observation,LOINC,Clinical Observation,S,72166-2\n"
         "4275495,Smoker,Observation,SNOMED,Clinical Finding,S,77176002\n"
         "8507,MALE,Gender,Gender,Gender,S,M\n8532,FEMALE,Gender,Gender,Gender,S,F\n")
    pq.write_table(pa.table({"person_id": [1, 2], "gender_concept_id": [8532, 8507], "year_of_birth": [1955, 1990],
                             "month_of_birth": [3, None], "day_of_birth": [4, None],
                             "person_source_value": ["MRN-C", None], "gender_source_value": ["F", "M"]}),
                   root / "person.parquet")
    _csv(root / "measurement.csv", "measurement_id,person_id,measurement_concept_id,measurement_date,value_as_number,"
         "value_as_concept_id,unit_concept_id,unit_source_value,measurement_source_value,measurement_source_concept_id\n"
         "1,1,3004501,2023-10-10,6.0,,8753,mmol/l,GLU,0\n"          # row 1: glucose in mmol/L
         "2,1,3004249,2023-12-01,135,,8876,,SBP,0\n"                # row 2
         "3,1,999999999,2023-12-01,1.0,,,,LOCAL-XYZ,0\n"           # row 3: a concept in no CONCEPT table
         "4,2,0,2023-12-01,1.0,,,,UNMAPPED,0\n"                     # row 4: concept 0, counted unused
         "5,2,3004501,,101,,8840,,GLU,0\n"                         # row 5: no date
         "6,2,3004501,2023-11-11,50,,,furlongs,GLU,0\n")            # row 6: unit from the source value, unknown
    _csv(root / "observation.csv", "observation_id,person_id,observation_concept_id,observation_date,value_as_number,"
         "value_as_string,value_as_concept_id,unit_concept_id,observation_source_value,observation_source_concept_id\n"
         "1,1,4041306,2023-09-01,,,4275495,,smoking,0\n")
    _csv(root / "condition_occurrence.csv", "condition_occurrence_id,person_id,condition_concept_id,condition_start_date,"
         "condition_source_value,condition_source_concept_id\n"
         "1,1,316139,2024-02-01,I50.9,45591025\n"
         "2,2,320128,2020-01-01,I10,0\n")
    pq.write_table(pa.table({"drug_exposure_id": [1, 2], "person_id": [2, 2], "drug_concept_id": [1503297, 1503297],
                             "drug_exposure_start_date": [date(2023, 7, 1), date(2021, 7, 1)],
                             "drug_source_value": ["metformin 500", "metformin 500"]}), root / "drug_exposure.parquet")
    return root


def test_omop_tables_by_concept_and_label_from_source_concept(tmp_path: Path):
    omop = _omop(tmp_path / "omop")
    ct = _dicom(tmp_path / "dicom" / "a", "MRN-C")
    cohort = CohortSpec(features=FEATURES, label_system=ICD10CM, label_code="I50.9")  # the label by its ICD-10-CM source code
    result = ingest_silo(fhir=[], tabular=[omop], dicom=[ct], wearables=[], cohort=cohort, pseudonym_key=KEY)
    d, r = result.dataset, result.report
    deid = Deidentifier(KEY)
    c, p2 = deid.pseudonym("MRN-C"), deid.pseudonym("2")  # person 2 has no source value: its person_id is its MRN
    assert sorted(d.pseudonyms) == sorted([c, p2]) and r.patients == 2
    i = d.pseudonyms.index(c)
    assert d.labels[i] == 1 and d.labels[1 - i] == 0 and d.mask[i].tolist() == [1, 1, 0]
    assert r.modalities["ehr"].sources == {"tabular_concept": 1, "tabular_person": 1, "tabular_measurement": 1,
                                           "tabular_observation": 1, "tabular_condition_occurrence": 1,
                                           "tabular_drug_exposure": 1}
    assert r.modalities["ehr"].unused == {"omop_concept_0": 1}
    q = _entries(result)
    m = omop / "measurement.csv"
    assert q[f"{m}#row=3"][0] == "unknown_concept" and "999999999" in q[f"{m}#row=3"][1] and "LOCAL-XYZ" in q[f"{m}#row=3"][1]
    assert q[f"{m}#row=5"][0] == "bad_row" and "measurement_date" in q[f"{m}#row=5"][1]
    assert q[f"{m}#row=6"][0] == "unknown_unit" and "furlongs" in q[f"{m}#row=6"][1]
    assert len(q) == 3

    raw_c = _raw([], [omop], "MRN-C", cohort)
    raw_2 = _raw([], [omop], "2", cohort)
    assert raw_c[0] == pytest.approx((date(2024, 1, 1) - date(1955, 3, 4)).days / 365.25)
    assert raw_c[1] == pytest.approx(6.0 * GLUCOSE_MOLAR) and raw_c[2] == 135 and raw_c[5] == 1  # smoker via the answer
    assert np.isnan(raw_2[1]) and raw_2[3] == 1 and raw_2[4] == 1  # one metformin start in the 365-day window


def test_omop_table_without_vocabulary_and_unknown_files_are_quarantined(tmp_path: Path):
    root = _omop(tmp_path / "omop")
    (root / "vocab.csv").unlink()
    _csv(root / "notes.csv", "author,text\nDr X,hello\n")
    _csv(root / "broken.parquet", "this is not parquet")
    q = Quarantine()
    with FactStore() as store:
        read = read_tabular([root], q, deid=Deidentifier(KEY), index_date=date(2024, 1, 1), features=FEATURES, store=store)
        store.resolve(q)
        assert len(store) == 2  # PERSON needs no vocabulary
    by_source = {e.source: e.reason for e in q.entries}
    assert by_source == {str(root / n): "no_vocabulary" for n in ("measurement.csv", "observation.csv",
                                                                  "condition_occurrence.csv", "drug_exposure.parquet")} | {
        str(root / "notes.csv"): "unknown_layout", str(root / "broken.parquet"): "unreadable"}
    assert read.files == 7


def test_chunked_reading_numbers_rows_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import pipelines.ehr.tables

    monkeypatch.setattr(pipelines.ehr.tables, "CHUNK_ROWS", 3)
    rows = ["mrn,system,code,value,unit,date"] + [f"MRN-{i},LOINC,2345-7,{90 + i},mg/dL,2023-10-01" for i in range(10)]
    rows[8] = "MRN-7,LOINC,2345-7,oops,mg/dL,2023-10-01"  # data row 8, in the third chunk
    path = _csv(tmp_path / "long.csv", "\n".join(rows) + "\n")
    shutil.copy(path, tmp_path / "copy.tsv")
    (tmp_path / "copy.tsv").write_text(path.read_text().replace(",", "\t"))
    for table in (path, tmp_path / "copy.tsv"):
        q = Quarantine()
        with FactStore() as store:
            read = read_tabular([table], q, deid=Deidentifier(KEY), index_date=date(2024, 1, 1), features=FEATURES,
                                store=store)
        assert read.records == 9 and [(e.source, e.reason) for e in q.entries] == [(f"{table}#row=8", "bad_row")]
