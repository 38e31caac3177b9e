"""The data of simulated hospitals: synthetic ones, or one local table folder cut into N silos.

A table folder (CSV / Parquet extracts that `pipelines.ehr.tabular` reads, one row per fact or
per patient, every file with the patient column) is partitioned by patient, so that no patient
is in two silos: by a column that names each patient's hospital, IID at random, or non-IID by a
Dirichlet split over a column's classes (Hsu, Qi and Brown 2019, "Measuring the effects of
non-identical data distribution for federated visual classification": for each class c the
silos' shares are drawn from Dir(α); small α, each silo sees few classes; large α, close to IID).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedcare.simulate import SimulatedSilo, SimulationError
from pipelines.synthetic import generate_federation
from silo_node.config import DataConfig

log = logging.getLogger(__name__)
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


def synthetic_silos(out: Path, *, silos: int, patients: int, seed: int,
                    on_patient: Callable[[str], None] | None = None) -> list[SimulatedSilo]:
    """`silos` synthetic hospitals in real formats (FHIR, DICOM, wearable CSV), as `fedcare demo` makes them."""
    hospitals = generate_federation(out, n_hospitals=silos, patients_per_hospital=patients, seed=seed,
                                    on_patient=on_patient)
    return [SimulatedSilo(name=h.name, data=DataConfig(dataset=f"{h.name}-synthetic", fhir=[h.fhir_dir],
                                                       dicom=[h.dicom_dir], wearables=[h.wearables_dir]))
            for h in hospitals]


def silo_name(i: int) -> str:
    """The name of the i-th silo of a partitioned folder (tables or FHIR)."""
    return f"silo-{i:04d}"


def assign_patients(patients: list[str], silos: int, *, seed: int, groups: dict[str, str] | None = None,
                    classes: dict[str, str] | None = None, alpha: float | None = None) -> dict[str, int]:
    """Patient -> silo index: by `groups` (patient -> hospital; the hospitals in sorted order, one per silo),
    by a Dirichlet(α) split over `classes` (patient -> class), or uniformly at random."""
    rng = np.random.default_rng(seed)
    if groups is not None:
        names = sorted(set(groups.values()))
        if len(names) != silos:
            raise SimulationError(f"the partition column names {len(names)} hospitals; --silos is {silos}. "
                                  f"Use --silos {len(names)}, or partition by a Dirichlet split instead")
        index = {n: i for i, n in enumerate(names)}
        return {p: index[groups[p]] for p in patients if p in groups}
    if alpha is not None:
        if classes is None:
            raise SimulationError("a Dirichlet split needs the column of the classes it splits (--dirichlet-column)")
        out: dict[str, int] = {}
        for c in sorted(set(classes.values())):
            members = [p for p in patients if classes.get(p) == c]
            rng.shuffle(members)
            shares = rng.dirichlet(np.full(silos, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for i, part in enumerate(np.split(np.asarray(members, dtype=object), cuts)):
                out.update({p: i for p in part})
        return out
    return {p: int(i) for p, i in zip(patients, rng.integers(0, silos, len(patients)))}


def partition_tables(folder: Path, out: Path, *, silos: int, patient_column: str, seed: int,
                     by: str | None = None, dirichlet_column: str | None = None,
                     alpha: float | None = None) -> list[SimulatedSilo]:
    """Cut the tables under `folder` into `silos` folders under `out`, by patient (see the module docstring)."""
    import pandas as pd

    files = sorted(f for f in Path(folder).rglob("*") if f.is_file() and f.suffix.lower() in TABLE_SUFFIXES)
    if not files:
        raise SimulationError(f"{folder} holds no tables ({', '.join(TABLE_SUFFIXES)}); name a folder of extracts")
    frames: dict[Path, pd.DataFrame] = {}
    for f in files:
        frame = pd.read_parquet(f) if f.suffix.lower() == ".parquet" else pd.read_csv(
            f, sep="\t" if f.suffix.lower() == ".tsv" else ",", dtype=str, keep_default_na=False)
        if patient_column not in frame.columns:
            raise SimulationError(f"{f} has no column {patient_column!r} (its columns: {', '.join(map(str, frame.columns[:8]))}); "
                                  "name the patient column with --patient-column")
        frames[f] = frame.astype({patient_column: str})
    patients = sorted({p for frame in frames.values() for p in frame[patient_column]})

    def column(name: str) -> dict[str, str]:
        holder = next((fr for fr in frames.values() if name in fr.columns), None)
        if holder is None:
            raise SimulationError(f"no table under {folder} has a column {name!r}")
        return dict(zip(holder[patient_column], holder[name].astype(str)))

    assigned = assign_patients(patients, silos, seed=seed, groups=column(by) if by else None,
                               classes=column(dirichlet_column) if dirichlet_column else None, alpha=alpha)
    result = []
    for i in range(silos):
        name = silo_name(i)
        mine = {p for p, s in assigned.items() if s == i}
        target = out / name / "tables"
        for f, frame in frames.items():
            part = frame[frame[patient_column].isin(mine)]
            dest = target / f.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix.lower() == ".parquet":
                part.to_parquet(dest, index=False)
            else:
                part.to_csv(dest, sep="\t" if f.suffix.lower() == ".tsv" else ",", index=False)
        log.info("%s: %d patients", name, len(mine))
        result.append(SimulatedSilo(name=name, data=DataConfig(dataset=f"{name}-tables", tabular=[target])))
    return result
