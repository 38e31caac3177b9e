"""A 3D study from DICOM files to one DP-SGD round with the silo's own trainer (silo_node.trainer.LocalTrainer)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from coordinator.api.study import CohortSpec, ModelSpec, PrivacySpec, StudySpec, TrainingSpec
from pipelines.ingest import ingest_silo
from silo_node.trainer import LocalTrainer

from .dicom_series import write_series
from .fixtures import SNOMED, patient, quantity, write_bundle

KEY = b"fedcare-test-pseudonym-key-32byt"


def _silo(root: Path, n: int = 8) -> tuple[Path, Path]:
    fhir, dicom = root / "fhir", root / "dicom"
    fhir.mkdir(parents=True)
    resources: list[dict] = []
    for k in range(n):
        pid, mrn = f"p{k}", f"MRN-{k:03d}"
        resources += [patient(pid, mrn), quantity("2345-7", 90.0 + 5 * k, "mg/dL", "2023-11-01", f"urn:uuid:{pid}", f"g{k}")]
        if k % 2:
            resources.append({"resourceType": "Condition", "id": f"hf{k}", "subject": {"reference": f"urn:uuid:{pid}"},
                              "code": {"coding": [{"system": SNOMED, "code": "84114007"}]}, "onsetDateTime": "2024-03-01"})
        if k != 0:  # one patient without an image: masked, not zero-filled as data
            write_series(dicom / mrn, mrn, 3 + k % 4, level=80.0 * (k % 2))
    write_bundle(fhir / "bundle.json", resources)
    return fhir, dicom


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_one_dp_round_on_a_3d_study_from_dicom_files(tmp_path: Path):
    fhir, dicom = _silo(tmp_path)
    spec = StudySpec(name="ct-3d", modalities=("ehr", "image"),
                     cohort=CohortSpec(image_size=16, image_dims=3, image_depth=8),
                     model=ModelSpec(image_encoder="cnn", embed_dim=4, ehr_hidden=8, image_channels=(4, 8)),
                     training=TrainingSpec(batch_size=4, local_epochs=1, learning_rate=0.1),
                     privacy=PrivacySpec(dp=True, noise_multiplier=1.0, target_epsilon=None, encryption="none"))
    result = ingest_silo(fhir=[fhir], dicom=[dicom], wearables=[], cohort=spec.cohort, pseudonym_key=KEY)
    ds = result.dataset
    assert tuple(ds.image.shape) == (8, 1, 8, 16, 16)
    assert int(ds.mask[:, 1].sum()) == 7 and int(ds.label.sum()) == 4

    trainer = LocalTrainer(spec, ds, ds)
    _, weights = trainer.initial_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' secure-RNG advice
        first = trainer.train_round(weights, noise_multiplier=1.0, round_seed=1)
        # noise far below any gradient step: what moves now moved through Opacus' clipped per-sample gradients
        clipped_only = trainer.train_round(weights, noise_multiplier=1e-6, round_seed=1)
    assert first.dp_step is not None and first.dp_step.steps >= 1 and first.dp_step.noise_multiplier == 1.0
    assert len(first.delta) == len(weights) and all(np.isfinite(d).all() for d in first.delta)
    names, _ = trainer.initial_weights()
    # every Conv3d weight of the image encoder moved by far more than that noise (<= 1e-6 * lr * steps per value)
    image_conv = [d for n, d in zip(names, clipped_only.delta) if n.startswith("encoders.image") and d.ndim == 5]
    assert image_conv and all(np.abs(d).max() > 1e-4 for d in image_conv), [float(np.abs(d).max()) for d in image_conv]
    metrics = trainer.evaluate([w + d for w, d in zip(weights, first.delta)])
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["gate_image"] <= 1.0
