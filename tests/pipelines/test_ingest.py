from __future__ import annotations

import json
import pickle

import numpy as np
import pydicom
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from coordinator.api.study import CohortSpec
from pipelines.cohort import CohortLike, FeatureLike
from pipelines.dataset import SAMPLE_FIELDS
from pipelines.errors import ConfigurationError
from pipelines.ingest import ingest_silo, pseudonym

from .conftest import KEY, ingest


def test_cohort_spec_satisfies_the_protocols():
    spec = CohortSpec()
    assert isinstance(spec, CohortLike) and all(isinstance(f, FeatureLike) for f in spec.features)


def test_counts_shapes_and_masks(federation, ingested):
    for h in federation:
        result = ingested[h.name]
        d, r = result.dataset, result.report
        n_dicom = len(list(h.dicom_dir.iterdir()))
        n_csv = len(list(h.wearables_dir.glob("*.csv")))
        n_obs = sum('"Observation"' in p.read_text() for p in h.fhir_dir.glob("*.json"))
        assert len(d) == r.samples == r.patients == h.n_patients and r.quarantined_total == 0
        assert d.modality_counts() == {"ehr": n_obs, "image": n_dicom, "signal": n_csv}
        assert r.modalities["image"].inputs_read == n_dicom and r.modalities["signal"].samples == n_csv
        assert sum(r.linked.values()) == len(d) and r.linked["ehr+image+signal"] > 0.7 * len(d)
        assert r.positives == int(d.labels.sum()) and 0 < r.positives < len(d)
        ehr, image, signal, mask, label = d[0]
        assert ehr.shape == (20,) and image.shape == (1, 32, 32) and signal.shape == (4, 128)
        assert mask.shape == (3,) and label.shape == () and all(t.dtype == torch.float32 for t in d[0])
        assert len(d[0]) == len(SAMPLE_FIELDS)
        absent_image = d.mask[:, 1] == 0
        assert torch.all(d.image[absent_image] == 0) and torch.all(d.signal[d.mask[:, 2] == 0] == 0)
        assert torch.all(d.ehr[d.mask[:, 0] == 0, 12:] == 1)  # no observations: coded features all missing
        json.loads(r.model_dump_json())


def test_prevalence_differs_between_hospitals(ingested):
    rates = sorted(r.report.positives / r.report.samples for r in ingested.values())
    assert rates[-1] - rates[0] > 0.1


def test_glucose_units_are_normalised(ingested):
    # northgate reports glucose in mmol/L (LOINC 15074-8): after conversion it matches the others
    means = {name: r.dataset.ehr[r.dataset.ehr[:, 12] == 0, 2].mean().item() for name, r in ingested.items()}
    assert max(means.values()) - min(means.values()) < 0.5, means


def _modality_features(d) -> dict[str, np.ndarray]:
    img = np.sort(d.image.numpy().reshape(len(d), -1), axis=1)
    s = d.signal.numpy()
    hr, acc = s[:, 0], np.sqrt((s[:, 1:] ** 2).sum(1))
    return {"ehr": d.ehr.numpy(),
            "image": np.stack([img[:, -1], img[:, -5], img[:, -15], img[:, -30], (img > 2).sum(1)], 1),
            "signal": np.stack([hr.mean(1), np.abs(np.diff(hr, axis=1)).mean(1), hr.std(1), acc.std(1)], 1)}


def test_label_depends_on_every_modality(ingested):
    parts = [_modality_features(r.dataset) for r in ingested.values()]
    y = np.concatenate([r.dataset.labels.numpy() for r in ingested.values()])
    x = {m: np.concatenate([p[m] for p in parts]) for m in parts[0]}
    x["all"] = np.concatenate([x["ehr"], x["image"], x["signal"]], axis=1)

    def auroc(features):
        p = cross_val_predict(LogisticRegression(max_iter=2000), features, y, cv=5, method="predict_proba")[:, 1]
        return roc_auc_score(y, p)

    scores = {m: auroc(v) for m, v in x.items()}
    assert all(scores[m] > 0.6 for m in ("ehr", "image", "signal")), scores
    assert scores["all"] > max(scores["ehr"], scores["image"], scores["signal"]) + 0.03, scores


def _identifiers(h) -> set[str]:
    out = set()
    for p in h.fhir_dir.glob("*.json"):
        patient = json.loads(p.read_text())["entry"][0]["resource"]
        out |= {i["value"] for i in patient["identifier"]} | {patient["name"][0]["family"]}
        out |= {patient["address"][0]["line"][0], patient["telecom"][0]["value"]}
    return out


def test_no_identifier_in_dataset_or_report(federation, ingested):
    h = federation[0]
    result = ingested[h.name]
    blob = pickle.dumps(result.dataset) + result.report.model_dump_json().encode()
    assert str(h.root).encode() not in blob
    leaked = [s for s in _identifiers(h) if s.encode() in blob]
    assert not leaked


def test_pseudonyms_stable_across_modalities_and_runs(federation, ingested):
    h = federation[0]
    again = ingest(h)
    assert again.dataset.pseudonyms == ingested[h.name].dataset.pseudonyms
    assert torch.equal(again.dataset.ehr, ingested[h.name].dataset.ehr)
    other_key = ingest(h, key=b"another-key-of-32-bytes-........")
    assert not set(other_key.dataset.pseudonyms) & set(again.dataset.pseudonyms)
    # the image of a patient sits at that patient's pseudonym: read the DICOM, recompute the HMAC
    path = sorted(h.dicom_dir.iterdir())[0]
    alone = ingest_silo(fhir=[h.fhir_dir], dicom=[path], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY).dataset
    row = alone.pseudonyms.index(pseudonym(pydicom.dcmread(path).PatientID, KEY))
    full = again.dataset.pseudonyms.index(alone.pseudonyms[row])
    assert alone.mask[row, 1] == 1 and torch.equal(alone.image[row], again.dataset.image[full])


def test_short_key_is_refused(federation):
    with pytest.raises(ConfigurationError, match="at least 16"):
        ingest(federation[0], key=b"short")
