"""DICOM ingestion: Part-10 files -> one normalised slice per patient.

Files are recognised by content, not by name (PS3.10: preamble + 'DICM'). Stored values
become modality values with RescaleSlope/Intercept (PS3.3 C.11.1.1.2), then MONAI transforms
resize to the cohort's image size and z-score the intensities per image, which removes
scanner gain/offset differences between hospitals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pydicom
from monai.transforms import Compose, NormalizeIntensity, Resize
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale

from .errors import DicomError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DicomSlice:
    patient_id: str  # the MRN
    study_date: date | None
    pixels: np.ndarray  # float32 [H, W] modality values (e.g. HU)
    source: str


def read_slice(path: Path) -> DicomSlice:
    """Read one DICOM file; raise `DicomError` saying what is wrong with it."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise DicomError("is missing the DICOM File Meta Information header or the 'DICM' prefix; expected a "
                         "DICOM Part-10 file. Remove non-DICOM files from the image folder", reason="not_dicom", source=path) from None
    except Exception as e:  # pydicom raises many types for damaged files; the file is quarantined, not lost
        raise DicomError(f"cannot be parsed ({type(e).__name__}: {e}); the file is probably truncated or damaged. "
                         "Re-export it from the PACS", reason="truncated", source=path) from None
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        raise DicomError("has no PatientID (0010,0020); expected the patient's MRN to link the image",
                         reason="no_patient_id", source=path)
    if "PixelData" not in ds:
        raise DicomError("has no Pixel Data (7FE0,0010); expected an image. Structured reports and presentation "
                         "states are not used", reason="no_pixel_data", source=path)
    try:
        arr = ds.pixel_array
    except Exception as e:  # a decoder or length error: the pixel data cannot be trusted
        raise DicomError(f"has Pixel Data that cannot be decoded ({type(e).__name__}: {e}); the file is probably "
                         "truncated. Re-export it from the PACS", reason="truncated", source=path) from None
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        arr = arr[arr.shape[0] // 2]  # a multi-frame image: its middle frame
    if arr.ndim != 2:
        raise DicomError(f"has pixel data of shape {arr.shape}; expected one greyscale 2D slice", reason="not_2d", source=path)
    pixels = np.asarray(apply_rescale(arr, ds), dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise DicomError("has non-finite pixel values after rescale; check RescaleSlope/Intercept", reason="non_finite", source=path)
    study = None
    raw = str(ds.get("StudyDate", "") or "")
    if raw:
        try:
            study = datetime.strptime(raw[:8], "%Y%m%d").date()
        except ValueError:
            log.warning("%s: StudyDate %r is not YYYYMMDD; treating the study date as unknown", path, raw)
    return DicomSlice(patient_id, study, pixels, str(path))


def image_transform(image_size: int) -> Compose:
    """[1, H, W] modality values -> [1, S, S] float32, zero mean and unit variance."""
    return Compose([Resize(spatial_size=(image_size, image_size), mode="area"), NormalizeIntensity()])


def normalise_slice(pixels: np.ndarray, transform: Compose) -> np.ndarray:
    out = np.asarray(transform(pixels[None].astype(np.float32)), dtype=np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)  # a constant image has no variance


def dicom_files(paths: Sequence[Path]) -> list[Path]:
    """Every regular file under the given paths; DICOM is recognised by content, not by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    return out
