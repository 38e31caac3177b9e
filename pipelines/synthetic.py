"""Synthetic hospitals that write real files: FHIR R4 bundles, DICOM slices, wearable CSVs.

Each patient has three independent latent risk parts, one per modality:
`z_ehr` (drives NT-proBNP, blood pressure, creatinine, BMI, glucose, HbA1c, age),
`z_img` (size and contrast of a lesion-like blob in a CT slice) and `z_sig` (irregular
heart-rhythm episodes, resting heart rate, low activity on a wrist wearable). The label,
heart failure (SNOMED 84114007) with onset within a year after the index date, is drawn
from `logit = intercept[hospital] + 2.0 * (z_ehr + z_img + z_sig)`, so every modality carries
a comparable share of the signal and a fused model beats any single one. The weights are
fixed: the generator is not tuned to any model.

Hospitals differ (non-IID): label prevalence (intercept), age mix, CT scanner gain/offset
and stored-value encoding, wearable device noise, and units: `northgate` reports glucose as
LOINC 15074-8 in mmol/L and creatinine as LOINC 14682-9 in umol/L (the molar LOINC codes),
so ingestion has to normalise units (see `pipelines.ehr.units`).

Files are written the way the source systems write them: one Synthea-style `transaction`
Bundle per patient (fullUrl `urn:uuid:`, request POST), one DICOM Part-10 file per patient
named by a running number (no patient data in file names), and one `<MRN>.csv` per
wearable recording (1 Hz, with short gaps). `missing_fraction` of patients lack exactly one
modality: no DICOM, no CSV, or no Observations (Patient, Encounters and Conditions remain).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from .cohort import INDEX_DATE

log = logging.getLogger(__name__)

HOSPITAL_NAMES = ("st-mary", "northgate", "riverside", "lakeside", "hillcrest", "westbrook", "oakridge", "eastfield")
LATENT_WEIGHT = 2.0
LOINC, SNOMED, UCUM = "http://loinc.org", "http://snomed.info/sct", "http://unitsofmeasure.org"
HEART_FAILURE = "84114007"
_FIRST = ("Ana", "Ben", "Chloe", "David", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam")
_FAMILY = ("Smith", "Okafor", "Novak", "Garcia", "Tanaka", "Muller", "Rossi", "Kowalski", "Haddad", "Berg")
_STREETS = ("Oak Street", "Mill Lane", "Harbor Road", "Elm Avenue", "Station Road")
_DISTRACTORS = (("38341003", "Hypertension"), ("44054006", "Diabetes mellitus type 2"),
                ("195662009", "Acute viral pharyngitis"), ("55822004", "Hyperlipidemia"))


@dataclass(frozen=True)
class HospitalFiles:
    name: str
    root: Path
    fhir_dir: Path
    dicom_dir: Path
    wearables_dir: Path
    n_patients: int


@dataclass(frozen=True)
class _Profile:
    index: int
    name: str
    intercept: float  # sets label prevalence
    age_shift: float
    molar_units: bool  # glucose mmol/L (15074-8), creatinine umol/L (14682-9)
    ct_gain: float  # scanner calibration: HU_written = gain * HU_true + offset
    ct_offset: float
    rescale: tuple[float, float]  # (RescaleSlope, RescaleIntercept) of the stored values
    pixel_spacing: float
    hr_noise: float
    acc_noise: float
    hr_bias: float


def _profile(i: int, rng: np.random.Generator) -> _Profile:
    name = HOSPITAL_NAMES[i] if i < len(HOSPITAL_NAMES) else f"hospital-{i + 1}"
    intercepts = (-1.0, -0.3, -1.8, -0.6, -1.4)
    return _Profile(
        index=i, name=name, intercept=intercepts[i % len(intercepts)], age_shift=(-6.0, 0.0, 7.0)[i % 3],
        molar_units=(i % 3 == 1), ct_gain=float(rng.uniform(0.8, 1.25)), ct_offset=float(rng.uniform(-40, 40)),
        rescale=((1.0, -1024.0), (0.5, -1024.0), (1.0, -2048.0))[i % 3], pixel_spacing=(0.7, 0.78, 0.65)[i % 3],
        hr_noise=(1.0, 2.5, 1.6)[i % 3], acc_noise=(0.02, 0.06, 0.04)[i % 3], hr_bias=float(rng.uniform(-2, 2)),
    )


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _entry(resource: dict) -> dict:
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]}}


def _ts(d: date, hour: int = 9) -> str:
    return datetime(d.year, d.month, d.day, hour, tzinfo=timezone.utc).isoformat()


def _quantity(value: float, unit: str) -> dict:
    return {"value": round(float(value), 3), "unit": unit, "system": UCUM, "code": unit}


def _obs(rng, pid, eid, when: date, code: str, display: str, **value) -> dict:
    return {"resourceType": "Observation", "id": _uuid(rng), "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs" if code in ("85354-9", "39156-5") else "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "subject": {"reference": f"urn:uuid:{pid}"}, "encounter": {"reference": f"urn:uuid:{eid}"},
            "effectiveDateTime": _ts(when), "issued": _ts(when, 15), **value}


def _condition(rng, pid, code: str, display: str, onset: date) -> dict:
    return {"resourceType": "Condition", "id": _uuid(rng),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
            "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display},
            "subject": {"reference": f"urn:uuid:{pid}"}, "onsetDateTime": _ts(onset), "recordedDate": _ts(onset)}


def _bundle(rng, h: _Profile, mrn: str, name: tuple[str, str], sex: str, birth: date, z_ehr: float,
            positive: bool, with_obs: bool, index: date) -> dict:
    pid = _uuid(rng)
    patient = {
        "resourceType": "Patient", "id": pid,
        "identifier": [
            {"system": "https://github.com/synthetichealth/synthea", "value": pid},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                                  "display": "Medical Record Number"}], "text": "Medical Record Number"},
             "system": f"urn:oid:2.16.840.1.113883.3.7{h.index:02d}.1", "value": mrn}],
        "name": [{"use": "official", "family": name[1], "given": [name[0]]}],
        "telecom": [{"system": "phone", "value": f"555-{rng.integers(100, 999)}-{rng.integers(1000, 9999)}", "use": "home"}],
        "gender": sex, "birthDate": birth.isoformat(),
        "address": [{"line": [f"{rng.integers(1, 200)} {_STREETS[rng.integers(len(_STREETS))]}"], "city": h.name.title(),
                     "postalCode": f"{rng.integers(10000, 99999)}", "country": "US"}],
    }
    resources = [patient]
    # Person-level means, then visit-level noise; the oldest visit lies outside a 365-day window.
    e = rng.normal(size=7)
    sys_bp = 128 + 9 * z_ehr + 10 * e[0]
    means = {"glucose": 100 + 9 * z_ehr + 14 * e[1], "hba1c": 5.7 + 0.35 * z_ehr + 0.45 * e[2],
             "bmi": 27 + 2.2 * z_ehr + 3.5 * e[3], "chol": 190 + 35 * e[4],
             "creat": 0.95 + 0.16 * z_ehr + 0.15 * e[5], "bnp": float(np.exp(4.8 + 0.9 * z_ehr + 0.45 * e[6]))}
    for days_before in (int(rng.integers(420, 700)), int(rng.integers(150, 300)), int(rng.integers(5, 60))):
        when = index - timedelta(days=days_before)
        eid = _uuid(rng)
        resources.append({"resourceType": "Encounter", "id": eid, "status": "finished",
                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                          "type": [{"coding": [{"system": SNOMED, "code": "185349003", "display": "Encounter for check up"}]}],
                          "subject": {"reference": f"urn:uuid:{pid}"},
                          "period": {"start": _ts(when), "end": _ts(when, 10)}})
        if not with_obs:
            continue
        n = rng.normal(size=8)
        s = sys_bp + 6 * n[0]
        glucose = max(55.0, means["glucose"] + 8 * n[1])
        creat = max(0.35, means["creat"] + 0.06 * n[2])
        if h.molar_units:
            glu = _obs(rng, pid, eid, when, "15074-8", "Glucose [Moles/volume] in Blood", valueQuantity=_quantity(glucose / 18.016, "mmol/L"))
            cre = _obs(rng, pid, eid, when, "14682-9", "Creatinine [Moles/volume] in Serum or Plasma", valueQuantity=_quantity(creat * 88.42, "umol/L"))
        else:
            glu = _obs(rng, pid, eid, when, "2345-7", "Glucose [Mass/volume] in Serum or Plasma", valueQuantity=_quantity(glucose, "mg/dL"))
            cre = _obs(rng, pid, eid, when, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", valueQuantity=_quantity(creat, "mg/dL"))
        bp = _obs(rng, pid, eid, when, "85354-9", "Blood pressure panel with all children optional", component=[
            {"code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}]}, "valueQuantity": _quantity(s, "mm[Hg]")},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"}]},
             "valueQuantity": _quantity(80 + 0.45 * (s - 128) + 5 * n[3], "mm[Hg]")}])
        resources += [glu, cre, bp,
                      _obs(rng, pid, eid, when, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", valueQuantity=_quantity(means["hba1c"] + 0.15 * n[4], "%")),
                      _obs(rng, pid, eid, when, "39156-5", "Body mass index (BMI) [Ratio]", valueQuantity=_quantity(means["bmi"] + 0.5 * n[5], "kg/m2")),
                      _obs(rng, pid, eid, when, "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", valueQuantity=_quantity(means["chol"] + 10 * n[6], "mg/dL")),
                      _obs(rng, pid, eid, when, "33762-6", "NT-proBNP", valueQuantity=_quantity(means["bnp"] * np.exp(0.15 * n[7]), "pg/mL"))]
    if positive:
        resources.append(_condition(rng, pid, HEART_FAILURE, "Heart failure", index + timedelta(days=int(rng.integers(1, 360)))))
    elif rng.random() < 0.15:  # diagnosed later than the label window: still a negative
        resources.append(_condition(rng, pid, HEART_FAILURE, "Heart failure", index + timedelta(days=int(rng.integers(420, 900)))))
    for code, display in _DISTRACTORS:
        if rng.random() < 0.3:
            resources.append(_condition(rng, pid, code, display, index - timedelta(days=int(rng.integers(30, 3000)))))
    return {"resourceType": "Bundle", "type": "transaction", "entry": [_entry(r) for r in resources]}


def _ct_slice(rng, h: _Profile, z_img: float, size: int) -> np.ndarray:
    """HU image: air, an elliptic soft-tissue body, a bright blob whose size/contrast is z_img."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    body = (xx / 0.42) ** 2 + (yy / 0.34) ** 2 <= 1.0
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    radius = max(0.03, 0.085 + 0.03 * z_img)
    contrast = max(20.0, 120.0 + 45.0 * z_img)
    cy, cx = rng.uniform(-0.12, 0.12, size=2)
    hu += contrast * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)) * body
    hu += rng.normal(0, 12.0, size=hu.shape).astype(np.float32)
    return h.ct_gain * hu + h.ct_offset


def _write_dicom(path: Path, rng, h: _Profile, seed: int, mrn: str, name, sex: str, birth: date, hu: np.ndarray, study: date) -> None:
    entropy = [str(seed), h.name, mrn]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=entropy + ["sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=entropy + ["study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=entropy + ["series"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=entropy + ["frame"])
    ds.PatientID, ds.PatientName = mrn, f"{name[1]}^{name[0]}"
    ds.PatientBirthDate, ds.PatientSex = birth.strftime("%Y%m%d"), "F" if sex == "female" else "M"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.Modality, ds.Manufacturer, ds.InstitutionName = "CT", f"{h.name.title()} Imaging", h.name
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.AccessionNumber = "1", 1, 1, ""
    ds.ReferringPhysicianName = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.SliceThickness, ds.PixelSpacing = 5.0, [h.pixel_spacing, h.pixel_spacing]
    slope, intercept = h.rescale
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    stored = np.clip(np.round((hu - intercept) / slope), 0, 65535).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _wearable_csv(rng, h: _Profile, z_sig: float, n: int, start: datetime) -> str:
    """1 Hz heart rate and wrist acceleration (g) with irregular-rhythm episodes and gaps."""
    activity = float(np.exp(-0.55 * z_sig))
    p_irregular = 1.0 / (1.0 + np.exp(-(1.5 * z_sig - 1.2)))
    irregular = np.zeros(n, bool)
    t = 0
    while t < n:
        length = int(rng.integers(8, 20))
        irregular[t:t + length] = rng.random() < p_irregular
        t += length
    move = np.convolve(rng.normal(size=n + 9), np.ones(10) / 10, mode="valid")[:n] * activity
    hr = 68 + 3.5 * z_sig + h.hr_bias + 12 * np.abs(move) + 2 * np.sin(np.arange(n) / 9)
    hr = hr + np.where(irregular, rng.normal(0, 11, n), 0) + rng.normal(0, h.hr_noise, n)
    acc = rng.normal(0, 1, (3, n)) * 0.3 * move + rng.normal(0, h.acc_noise, (3, n))
    acc[2] += 1.0
    keep = rng.random(n) > 0.02  # dropped samples
    if rng.random() < 0.3:  # one longer outage
        g = int(rng.integers(0, n - 10))
        keep[g:g + int(rng.integers(4, 9))] = False
    lines = ["timestamp,heart_rate,acc_x,acc_y,acc_z"]
    for i in np.flatnonzero(keep):
        ts = (start + timedelta(seconds=int(i))).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(f"{ts},{hr[i]:.1f},{acc[0, i]:.3f},{acc[1, i]:.3f},{acc[2, i]:.3f}")
    return "\n".join(lines) + "\n"


def generate_federation(out_dir: Path, *, n_hospitals: int = 3, patients_per_hospital: int = 300, seed: int = 0,
                        missing_fraction: float = 0.15, image_size: int = 32, signal_length: int = 128,
                        on_patient: Callable[[str], None] | None = None) -> list[HospitalFiles]:
    """Write `n_hospitals` hospitals under `out_dir/<name>/{fhir,dicom,wearables}`; deterministic in `seed`.

    `on_patient(hospital)` is called after each patient's files are written (progress for a CLI)."""
    if not 0.0 <= missing_fraction <= 1.0:
        raise ValueError(f"missing_fraction must be in [0, 1], got {missing_fraction}")
    out_dir = Path(out_dir)
    hospitals = []
    for i in range(n_hospitals):
        rng = np.random.default_rng([seed, i])
        h = _profile(i, rng)
        root = out_dir / h.name
        dirs = [root / "fhir", root / "dicom", root / "wearables"]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        prefix = "".join(p[0] for p in h.name.split("-")).upper()
        positives = 0
        for k in range(patients_per_hospital):
            mrn = f"{prefix}{100000 + k * 7 + i}"
            z_ehr, z_img, z_sig = rng.normal(size=3)
            logit = h.intercept + LATENT_WEIGHT * (z_ehr + z_img + z_sig)
            positive = bool(rng.random() < 1.0 / (1.0 + np.exp(-logit)))
            positives += positive
            missing = str(rng.choice(["ehr", "image", "signal"])) if rng.random() < missing_fraction else None
            sex = "female" if rng.random() < 0.5 else "male"
            age = float(np.clip(58 + h.age_shift + 7 * z_ehr + 11 * rng.normal(), 19, 95))
            birth = INDEX_DATE - timedelta(days=int(age * 365.25))
            name = (_FIRST[rng.integers(len(_FIRST))], _FAMILY[rng.integers(len(_FAMILY))])
            bundle = _bundle(rng, h, mrn, name, sex, birth, z_ehr, positive, missing != "ehr", INDEX_DATE)
            (dirs[0] / f"{bundle['entry'][0]['resource']['id']}.json").write_text(json.dumps(bundle), encoding="utf-8")
            hu = _ct_slice(rng, h, z_img, image_size)
            study = INDEX_DATE - timedelta(days=int(rng.integers(1, 60)))
            if missing != "image":
                _write_dicom(dirs[1] / f"{k:05d}.dcm", rng, h, seed, mrn, name, sex, birth, hu, study)
            start = datetime.combine(INDEX_DATE - timedelta(days=int(rng.integers(1, 30))), datetime.min.time(), timezone.utc)
            csv = _wearable_csv(rng, h, z_sig, int(signal_length * 1.25), start + timedelta(hours=int(rng.integers(7, 20))))
            if missing != "signal":
                (dirs[2] / f"{mrn}.csv").write_text(csv, encoding="utf-8")
            if on_patient is not None:
                on_patient(h.name)
        log.info("hospital %s: %d patients, %d positive", h.name, patients_per_hospital, positives)
        hospitals.append(HospitalFiles(h.name, root, *dirs, n_patients=patients_per_hospital))
    return hospitals
