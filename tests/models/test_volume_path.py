"""The 3D path end to end on real files: a DICOM CT series -> a volume -> the 3D model of a study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from coordinator.api.study import CohortSpec, ModelSpec, StudySpec
from pipelines.errors import InputError
from pipelines.imaging.dicom import read_frame
from pipelines.imaging.volumes import series_volume
from pipelines.models import build_model, multimodal_loss

from ..pipelines.dicom_series import new_instance

ROWS, COLS, SLICES = 24, 20, 6


def write_series(folder: Path) -> list[Path]:
    """A CT series whose HU level rises with the slice position; files written in shuffled order."""
    series, frame = generate_uid(), generate_uid()
    paths = []
    for k in np.random.default_rng(0).permutation(SLICES):
        ds = new_instance()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), series, frame
        ds.PatientID, ds.Modality, ds.InstanceNumber = "P1", "CT", int(k) + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 5.0 * int(k)], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.6], 5.0  # non-square pixels, as scanners write them
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ROWS, COLS
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        hu = np.full((ROWS, COLS), 100.0 * int(k), np.float32)
        hu[8:16, 6:14] += 300.0
        ds.PixelData = np.round(hu + 1024).astype(np.uint16).tobytes()
        path = folder / f"{int(k) * 7 % SLICES}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_a_dicom_series_becomes_a_volume_the_3d_study_model_trains_on(tmp_path: Path):
    paths = write_series(tmp_path)
    ordered = sorted(paths, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    frames = [read_frame(p.read_bytes(), str(p)) for p in ordered]
    spacing = tuple(float(x) for x in pydicom.dcmread(ordered[0], stop_before_pixels=True).PixelSpacing)
    spec = StudySpec(name="ct-3d", modalities=("ehr", "image"),
                     cohort=CohortSpec(image_size=16, image_dims=3, image_depth=8),
                     model=ModelSpec(image_encoder="cnn", embed_dim=4, ehr_hidden=8, image_channels=(4, 8)))
    volume = series_volume(frames, image_size=spec.cohort.image_size, depth=spec.cohort.image_depth, spacing=spacing)
    assert volume.shape == (1, 8, 16, 16) and volume.dtype == np.float32
    assert abs(volume.mean()) < 1e-4 and volume.std() == pytest.approx(1.0, abs=1e-3)
    depth_profile = volume[0].mean(axis=(1, 2))
    assert (np.diff(depth_profile) > 0).all()  # slice order kept along the depth axis

    torch.manual_seed(0)
    model = build_model(**spec.model_arguments()).train()
    image = torch.from_numpy(np.stack([volume, volume[:, ::-1].copy()]))  # two "patients"
    ehr = torch.randn(2, 2 * len(spec.cohort.features))
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 0]])
    out = model(ehr, image, torch.zeros(2, 4, spec.cohort.signal_length), mask)
    loss, _ = multimodal_loss(out, torch.tensor([0.0, 1.0]), mask, kl_weight=1e-3, consistency_weight=0.1)
    loss.backward()
    conv = model.encoders["image"].body[0][0].conv
    assert isinstance(conv, torch.nn.Conv3d) and conv.weight.grad.abs().sum() > 0


def test_a_series_of_mixed_frame_sizes_is_refused_with_the_source():
    with pytest.raises(InputError, match="series-7.*same size"):
        series_volume([np.zeros((4, 4)), np.zeros((5, 4))], image_size=8, depth=4, source="series-7")
    with pytest.raises(InputError, match="at least one slice"):
        series_volume([], image_size=8, depth=4)
