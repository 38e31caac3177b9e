"""How a hospital's own table is laid out, as hospital IT states it in the node config (`[[data.tables]]`).

Tables come as they are: any delimiter and extension (`.data`, `.txt`, `.tsv`, `.csv`, compressed
`.gz`/`.bz2`/`.xz`/`.zip`), with or without a header row, with their own missing-value tokens
(`?`, `NA`, `-9`) and codes (sex `0/1`). Nothing is renamed by hand: this model says what
each column is, and `pipelines.ehr.own_tables` reads the table by it and reports every mapping.

    [[data.tables]]
    path = "/data/heart"                  # a file or a folder
    extensions = [".data"]
    header = false
    columns = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
               "slope", "ca", "thal", "num"]
    missing = ["?", "", "-9"]
    age = "age"                           # age in years at the index date (or birth_date = "dob")
    sex = "sex"
    codes = { sex = { "0" = "female", "1" = "male" } }
    units = { trestbps = "mm[Hg]", chol = "mg/dL" }
    split_column = "split"                # train / validation / test per patient (pipelines.splits)
    split_values = { "0" = "train", "1" = "test" }   # optional; default train|training, validation|val|valid, test
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from ..splits import SplitPart

#: The delimiter value for runs of spaces or tabs (whitespace-aligned exports).
WHITESPACE = "whitespace"


class TableSource(BaseModel):
    """One table (or a folder of tables alike) of one row per patient, and what its columns are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    extensions: tuple[str, ...] = (".csv",)  # matched at the end of the file name, case-insensitively
    delimiter: str = ","  # one character ("\t", ";", " ") or "whitespace"
    header: bool = True  # false: no header row; `columns` names the columns in order
    columns: tuple[str, ...] = ()
    missing: tuple[str, ...] = ("", "NA", "?")  # cells that mean "not recorded"
    patient_id: str | None = None  # the MRN column; None: the file name and row number identify the patient
    age: str | None = None  # age in years at the index date
    birth_date: str | None = None  # ISO 8601 date of birth, or a year
    sex: str | None = None  # read through `codes[sex]` when given, else f/female/m/male
    date: str | None = None  # the date of the row's values (default: the index date)
    codes: dict[str, dict[str, str]] = {}  # column -> {cell -> category or female/male}
    units: dict[str, str] = {}  # column -> UCUM unit of its values
    rename: dict[str, str] = {}  # column -> the study feature it holds, when the names differ
    split_column: str | None = None  # the part each patient is in, used when the study says cohort.split = "column"
    split_values: dict[str, SplitPart] = {}  # cell -> part; empty: pipelines.splits.DEFAULT_SPLIT_VALUES

    @field_validator("patient_id", "age", "birth_date", "sex", "date", "split_column")
    @classmethod
    def _column_name(cls, v: str | None) -> str | None:
        return v.strip().lower() if v else v  # columns are matched case-insensitively (tables.header_key)

    @field_validator("codes", "units", "rename")
    @classmethod
    def _column_keys(cls, v: dict) -> dict:
        return {str(k).strip().lower(): val for k, val in v.items()}

    @field_validator("split_values")
    @classmethod
    def _split_cells(cls, v: dict[str, SplitPart]) -> dict[str, SplitPart]:
        return {str(k).strip().lower(): part for k, part in v.items()}  # cells are matched case-insensitively

    @model_validator(mode="after")
    def _readable(self) -> "TableSource":
        if not self.header and not self.columns:
            raise ValueError("header = false needs columns: the column names in file order")
        if self.delimiter != WHITESPACE and len(self.delimiter) != 1:
            raise ValueError(f"delimiter is {self.delimiter!r}; expected one character or {WHITESPACE!r}")
        bad = [e for e in self.extensions if not e.startswith(".")]
        if bad:
            raise ValueError(f"extensions {bad} do not start with '.'; write them as '.data', '.csv.gz'")
        if len({c.lower() for c in self.columns}) != len(self.columns):
            raise ValueError("columns repeat a name; expected one name per column")
        return self

    def resolved(self, base: Path) -> "TableSource":
        """The path taken relative to `base` (the node config's folder) when it is relative."""
        return self if self.path.is_absolute() else self.model_copy(update={"path": base / self.path})
