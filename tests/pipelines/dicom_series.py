"""Writes real multi-slice CT series with pydicom for the 3D tests (not a test module)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROWS, COLS = 24, 20
SPACING = (0.8, 0.6)  # non-square pixels, as scanners write them
THICKNESS = 5.0
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def new_instance(sop_class: str = CTImageStorage, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """An empty instance of `sop_class` with its file meta: the SOP class and a fresh instance UID in both."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = sop_class, syntax
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def tilted(degrees: float) -> tuple[float, ...]:
    """An axial orientation tilted about the row direction (gantry tilt)."""
    r = math.radians(degrees)
    return (1.0, 0.0, 0.0, 0.0, math.cos(r), math.sin(r))


def ct_hu(k: int, n: int, level: float = 0.0) -> np.ndarray:
    """HU of slice k of n: soft tissue rising with k, a bright lesion in the middle third only."""
    hu = np.full((ROWS, COLS), -1000.0, np.float32)
    hu[3:21, 2:18] = 20.0 + 10.0 * k + level
    if n // 3 <= k < n - n // 3:
        hu[8:16, 6:14] += 300.0
    return hu


def write_series(folder: Path, mrn: str, slices: int, *, study_date: str = "20231201", level: float = 0.0,
                 skip: Sequence[int] = (), orientations: dict[int, tuple[float, ...]] | None = None,
                 burned_in: Sequence[int] = (), window: tuple[float, float] | None = (40.0, 400.0),
                 series_uid: str | None = None) -> list[Path]:
    """One CT series of `slices` positions (5 mm apart; those in `skip` left out), files named in shuffled order.

    Stored values use RescaleSlope 0.5 / RescaleIntercept -1024 and, when `window` is given, a VOI window,
    so the reader has to apply both to get the same values as `pipelines.imaging.dicom.read_frame`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), series_uid or generate_uid(), generate_uid()
    paths = []
    order = np.random.default_rng(list(mrn.encode())).permutation(slices)
    for k in (int(k) for k in order):
        if k in skip:
            continue
        ds = new_instance()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = mrn, "Lestrade^Gregory", "19500517"
        ds.Modality, ds.InstanceNumber, ds.StudyDate = "CT", k + 1, study_date
        ds.ImageOrientationPatient = list((orientations or {}).get(k, AXIAL))
        ds.ImagePositionPatient = [0.0, 0.0, THICKNESS * k]
        ds.PixelSpacing, ds.SliceThickness = list(SPACING), THICKNESS
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1024.0
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if k in burned_in:
            ds.BurnedInAnnotation = "YES"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ROWS, COLS
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.round((ct_hu(k, slices, level) + 1024.0) / 0.5).astype(np.uint16).tobytes()
        path = folder / f"IM{len(paths):04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
