"""One local FHIR folder cut into N simulated silos, by patient, in the formats it came in.

The folder holds what hospitals export: Bundles (a Synthea-style transaction Bundle per patient, or
collections of many patients), single resources, and Bulk Data NDJSON files (one resource type per
file). Each resource goes to the silo of the patient it is about: a Patient to its own silo, any other
resource by its `subject`, `patient` or `beneficiary` reference (`Patient/id`, or the Patient entry's
`urn:uuid:` fullUrl within a Bundle). A resource about no patient (an Organization, a Medication) goes
to every silo that receives part of its file, as reference data would be at every hospital. A Bundle
is cut into one Bundle per silo with the same type and fullUrls, so references inside it still
resolve; an NDJSON file into one per silo, line by line (never loaded whole).

Patients are assigned as tables are (`fedcare.simulate_data.assign_patients`): by an element of the
Patient that names its hospital (`by`, e.g. `managingOrganization.reference`), IID at random, or by a
Dirichlet(α) split over an element's classes (`classes_element`, e.g. `gender`). An element path is
dot-separated; the first item of a list is taken. What cannot be read (a file that is not JSON, a
line that is not, a resource about a patient the folder does not hold) goes to the first silo
unchanged, where ingestion quarantines it with its reason, as it would have without the split.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from fedcare.simulate import SimulatedSilo, SimulationError
from fedcare.simulate_data import assign_patients, silo_name
from pipelines.ehr.fhir import ref_key
from silo_node.config import DataConfig

log = logging.getLogger(__name__)
#: Elements by which a resource names the patient it is about (FHIR R4: subject, patient; Coverage: beneficiary)
PATIENT_REFERENCES = ("subject", "patient", "beneficiary")
FIRST_SILO = 0  # where what cannot be assigned goes
SiloOf = Callable[[dict[str, Any], "str | None"], "int | None"]  # (resource, fullUrl) -> its patient's silo; None: no patient


def partition_fhir(folder: Path, out: Path, *, silos: int, seed: int, by: str | None = None,
                   classes_element: str | None = None, alpha: float | None = None) -> list[SimulatedSilo]:
    """Cut the FHIR files under `folder` into `silos` folders under `out` (see the module docstring)."""
    files = sorted(f for f in Path(folder).rglob("*") if f.is_file() and f.suffix.lower() in (".json", ".ndjson"))
    if not files:
        raise SimulationError(f"{folder} holds no FHIR files (*.json Bundles or resources, *.ndjson Bulk Data "
                              "exports); name a folder of FHIR exports")
    owner: dict[str, str] = {}  # any reference naming a patient -> that patient's key ("Patient/id")
    patients: dict[str, dict[str, Any]] = {}  # key -> the Patient resource
    for f in files:
        for full_url, resource in _resources(f):
            key = _patient_key(resource, full_url)
            if key is not None:
                patients.setdefault(key, resource)
                owner[key] = key
                if full_url:
                    owner[ref_key(full_url)] = key
    if not patients:
        raise SimulationError(f"{folder} holds no Patient resource; a FHIR folder is split by patient")
    groups = _values(patients, by, required=True) if by else None
    classes = _values(patients, classes_element, required=False) if classes_element else None
    assigned = assign_patients(sorted(patients), silos, seed=seed, groups=groups, classes=classes, alpha=alpha)
    names = [silo_name(i) for i in range(silos)]
    targets = [out / name / "fhir" for name in names]
    for t in targets:  # a split of an earlier simulation is replaced, never mixed in
        shutil.rmtree(t, ignore_errors=True)

    def silo_of(resource: dict[str, Any], full_url: str | None) -> int | None:
        """The silo of a resource's patient; None: about no patient."""
        if resource.get("resourceType") == "Patient":
            key = _patient_key(resource, full_url) or ""
        else:
            ref = _patient_reference(resource)
            if ref is None:
                return None
            key = owner.get(ref_key(ref), "")
        return assigned.get(key, FIRST_SILO)

    for f in files:
        rel = f.relative_to(folder)
        if f.suffix.lower() == ".ndjson":
            _split_ndjson(f, [t / rel for t in targets], silo_of)
        else:
            _split_json(f, [t / rel for t in targets], silo_of)
    counts = Counter(assigned.values())
    for i, name in enumerate(names):
        log.info("%s: %d patients", name, counts[i])
    return [SimulatedSilo(name=name, data=DataConfig(dataset=f"{name}-fhir", fhir=[target]))
            for name, target in zip(names, targets)]


def _resources(f: Path) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(fullUrl, resource) of every resource in a file; nothing from what is not JSON (it is copied as it is)."""
    if f.suffix.lower() == ".ndjson":
        with f.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                resource = _json(line)
                if resource is not None:
                    yield None, resource
        return
    document = _json(f.read_text(encoding="utf-8", errors="replace"))
    if document is None:
        return
    if document.get("resourceType") != "Bundle":
        yield None, document
        return
    for entry in document.get("entry") or []:
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            yield entry.get("fullUrl"), entry["resource"]


def _json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _patient_key(resource: dict[str, Any], full_url: str | None) -> str | None:
    """A Patient's key: `Patient/id`, or its fullUrl in a Bundle where it has no id (as carebundle and many
    transaction Bundles write them); None for another resource, or a Patient with neither."""
    if resource.get("resourceType") != "Patient":
        return None
    if resource.get("id"):
        return f"Patient/{resource['id']}"
    return ref_key(full_url) if full_url else None


def _patient_reference(resource: dict[str, Any]) -> str | None:
    for element in PATIENT_REFERENCES:
        value = resource.get(element)
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            return value["reference"]
    return None


def _element(resource: dict[str, Any], path: str) -> str | None:
    """A dot-separated element path of a resource (the first item of each list), as text; None if absent."""
    value: Any = resource
    for name in path.split("."):
        if isinstance(value, list):
            value = value[0] if value else None
        value = value.get(name) if isinstance(value, dict) else None
        if value is None:
            return None
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def _values(patients: dict[str, dict[str, Any]], path: str, *, required: bool) -> dict[str, str]:
    """Patient key -> the element's value; `required`: every patient must have it (it names its hospital)."""
    values = {key: _element(p, path) for key, p in patients.items()}
    missing = sorted(key for key, v in values.items() if v is None)
    if required and missing:
        raise SimulationError(f"{len(missing)} of {len(values)} Patients have no {path!r} (e.g. {missing[0]}); "
                              "name an element every Patient has, such as managingOrganization.reference, or split "
                              "by a Dirichlet draw instead")
    return {key: v if v is not None else "" for key, v in values.items()}


def _split_ndjson(f: Path, dests: list[Path], silo_of: SiloOf) -> None:
    """Each line to its patient's silo; a line about no patient to every silo; one that is not JSON to the first."""
    handles: dict[int, IO[str]] = {}

    def out(i: int) -> IO[str]:
        if i not in handles:
            dests[i].parent.mkdir(parents=True, exist_ok=True)
            handles[i] = dests[i].open("w", encoding="utf-8")
        return handles[i]

    try:
        with f.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if not line.strip():
                    continue
                resource = _json(line)
                silo = FIRST_SILO if resource is None else silo_of(resource, None)
                for i in (range(len(dests)) if silo is None else (silo,)):
                    out(i).write(line if line.endswith("\n") else line + "\n")
    finally:
        for h in handles.values():
            h.close()


def _split_json(f: Path, dests: list[Path], silo_of: SiloOf) -> None:
    """A Bundle into one per silo (same type and fullUrls); a single resource to its silo; what is not JSON, or not a
    resource, to the first silo as it is."""
    text = f.read_text(encoding="utf-8", errors="replace")
    document = _json(text)
    if document is None or "resourceType" not in document:
        _write(dests[FIRST_SILO], text)
        return
    if document["resourceType"] != "Bundle":
        silo = silo_of(document, None)
        for i in (range(len(dests)) if silo is None else (silo,)):
            _write(dests[i], text)
        return
    entries = [e for e in document.get("entry") or []]
    silo = [silo_of(e["resource"], e.get("fullUrl")) if isinstance(e, dict) and isinstance(e.get("resource"), dict) else FIRST_SILO
            for e in entries]
    for i in sorted({s for s in silo if s is not None}) or range(len(dests)):
        part = {**document, "entry": [e for e, s in zip(entries, silo) if s is None or s == i]}  # in their order
        if "total" in part:
            part["total"] = len(part["entry"])
        _write(dests[i], json.dumps(part))


def _write(dest: Path, text: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
