"""FHIR ImagingStudy links a DICOM study to its patient when the DICOM PatientID is not the EHR's MRN."""

from __future__ import annotations

import json

import pydicom
import torch

from pipelines.deid import Deidentifier

from .conftest import KEY, ingest


def _bundle_of(h, mrn: str):
    for path in sorted(h.fhir_dir.glob("*.json")):
        bundle = json.loads(path.read_text())
        if any(i.get("value") == mrn for i in bundle["entry"][0]["resource"].get("identifier", [])):
            return path, bundle
    raise AssertionError(f"no bundle for {mrn}")


def _imaging_study(iid: str, subject: str, study_uid: str) -> dict:
    return {"fullUrl": f"urn:uuid:{iid}", "resource": {
        "resourceType": "ImagingStudy", "id": iid, "status": "available", "subject": {"reference": subject},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}]}}


def test_imaging_study_links_a_study_whose_patient_id_is_unknown(small_hospital):
    h = small_hospital
    before = ingest(h)
    dicom = sorted(h.dicom_dir.iterdir())[0]
    ds = pydicom.dcmread(dicom)
    mrn, study_uid = str(ds.PatientID), str(ds.StudyInstanceUID)
    ds.PatientID = "PACS-000417"  # the PACS's own id, unknown to the EHR
    ds.save_as(dicom)

    unlinked = ingest(h)  # without an ImagingStudy the image has no patient
    assert [(e.reason, e.source) for e in unlinked.quarantine.entries] == [("no_ehr_patient", str(dicom))]
    assert unlinked.dataset.modality_counts()["image"] == before.dataset.modality_counts()["image"] - 1

    path, bundle = _bundle_of(h, mrn)
    subject = bundle["entry"][0]["fullUrl"]
    bundle["entry"] += [_imaging_study("is-1", subject, study_uid),
                        _imaging_study("is-orphan", "urn:uuid:00000000-0000-4000-8000-000000000000", "1.2.3.4")]
    path.write_text(json.dumps(bundle))
    linked = ingest(h)
    assert [(e.reason, e.source) for e in linked.quarantine.entries] == [("unknown_subject", f"{path}#ImagingStudy/is-orphan")]
    assert linked.dataset.modality_counts() == before.dataset.modality_counts()
    n_images = before.dataset.modality_counts()["image"]
    assert linked.report.image_linked_by == {"imaging_study": 1, "patient_id": n_images - 1}
    pid = Deidentifier(KEY).pseudonym(mrn)
    i, j = before.dataset.pseudonyms.index(pid), linked.dataset.pseudonyms.index(pid)
    assert linked.dataset.mask[j, 1] == 1 and torch.equal(linked.dataset.image[j], before.dataset.image[i])
