"""One DICOM instance: its de-identified header, and its pixels as modality values.

Instances are recognised by content, not by name (PS3.10: preamble + 'DICM'), and may come
from a file or a PACS (`DicomInput.read` returns the Part-10 bytes either way). Pixels are
decoded by pydicom's pixel handlers, so every transfer syntax with an installed plugin works
(native, deflate, RLE, JPEG baseline/extended/lossless and JPEG 2000 through pylibjpeg).
Stored values become modality values with the Modality LUT (RescaleSlope/Intercept, PS3.3
C.11.1), then the VOI LUT or window (C.11.2) when the file has one; colour images are
reduced to luminance (ITU-R BT.601). MONAI transforms then restore square pixels from
PixelSpacing, pad to a square field of view, resize to the cohort's size and z-score.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pydicom
from monai.transforms import Compose, NormalizeIntensity, Resize
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from ..deid import Deidentifier
from ..errors import DicomError
from ..inputs import COMPRESSED, input_files
from ..limits import DEFAULT_LIMITS, IngestLimits
from ..quarantine import Quarantine
from ..wearables.waveform_dicom import WaveformNotImage, is_waveform

log = logging.getLogger(__name__)
_ENCAPSULATED_MIN = 4  # bytes: an encapsulated Pixel Data element holds at least an item tag
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


@dataclass(frozen=True, slots=True)
class DicomInput:
    source: str  # a path or a WADO-RS URL, used in messages only
    read: Callable[[], bytes]
    path: Path | None = None  # a local file, which can be read again from its path alone


@dataclass(frozen=True, slots=True)
class DicomHeader:
    """What grouping and selection need, after de-identification (safe to cache)."""

    pseudonym: str
    study_uid: str  # remapped
    series_uid: str  # remapped
    day: int | None  # study date minus the index date, in days (relative: no calendar date kept)
    position: float | None  # along the slice normal (ImagePositionPatient . normal), mm
    instance: int
    frames: int
    spacing: tuple[float, float]  # row, column spacing in mm


def file_inputs(paths: Sequence[Path], quarantine: Quarantine | None = None) -> Iterator[DicomInput]:
    """Every regular file under the given paths, in any nesting (`pipelines.inputs`); DICOM is recognised by content."""
    for f in input_files(paths, lambda f: not f.name.lower().endswith(COMPRESSED), quarantine, "image"):
        yield DicomInput(str(f), f.read_bytes, f)


def _check_inflated_size(data: bytes, source: str, limits: IngestLimits) -> None:
    """A Deflated Explicit VR Little Endian file (PS3.5 A.5) is inflated in bounded steps before pydicom reads it,
    so a small file that inflates to gigabytes is refused, not allocated."""
    head = data[:4096]
    if DEFLATED.encode() not in head:
        return
    meta_end = _file_meta_end(data)
    if meta_end is None:
        return  # pydicom will say what is wrong with the header
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, view = 0, memoryview(data)[meta_end:]
    try:
        for i in range(0, len(view), 1 << 16):
            total += len(inflater.decompress(view[i:i + (1 << 16)], limits.max_inflated_bytes + 1 - total))
            while inflater.unconsumed_tail and total <= limits.max_inflated_bytes:
                total += len(inflater.decompress(inflater.unconsumed_tail, limits.max_inflated_bytes + 1 - total))
            if total > limits.max_inflated_bytes:
                raise DicomError(f"is deflated and inflates beyond {limits.max_inflated_bytes} bytes "
                                 "(limits.max_inflated_bytes); expected an image of ordinary size. Raise the limit in the "
                                 "node config if this instance is genuine", reason="too_large", source=source)
    except zlib.error:
        return  # damaged: pydicom reports it


def _file_meta_end(data: bytes) -> int | None:
    """Offset after the File Meta Information group (0002), from its group length (PS3.10 7.1)."""
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        return None
    try:
        length = int.from_bytes(data[140:144], "little")
    except IndexError:
        return None
    return 144 + length


def _check_declared_size(ds: Dataset, source: str, limits: IngestLimits) -> None:
    """Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated as the header declares them, before decoding."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        declared = (int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("SamplesPerPixel", 1) or 1)
                    * frames * int(ds.get("BitsAllocated", 8) or 8)) // 8
    except (TypeError, ValueError):
        return  # reported by the pixel module check
    if frames > limits.max_frames:
        raise DicomError(f"declares {frames} frames, above limits.max_frames ({limits.max_frames}); expected an image "
                         "series of ordinary length. Raise the limit in the node config if it is genuine",
                         reason="too_large", source=source)
    if declared > limits.max_pixel_bytes:
        raise DicomError(f"declares {declared} bytes of pixels ({ds.get('Rows')} x {ds.get('Columns')} x {frames} frames), "
                         f"above limits.max_pixel_bytes ({limits.max_pixel_bytes}); it is not decoded. Raise the limit "
                         "in the node config if it is genuine", reason="too_large", source=source)


def _parse(data: bytes, source: str, limits: IngestLimits = DEFAULT_LIMITS) -> Dataset:
    _check_inflated_size(data, source, limits)
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise DicomError("is missing the DICOM File Meta Information header or the 'DICM' prefix; expected a "
                         "DICOM Part-10 file. Remove non-DICOM files from the image folder", reason="not_dicom",
                         source=source) from None
    except Exception as e:  # pydicom raises many types for damaged files; the file is quarantined, not lost
        raise DicomError(f"cannot be parsed ({type(e).__name__}: {e}); the file is probably truncated or damaged. "
                         "Re-export it from the PACS", reason="truncated", source=source) from None


def _day(ds: Dataset, index_date: date, source: str) -> int | None:
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        raw = str(ds.get(keyword, "") or "")
        if raw:
            try:
                return (datetime.strptime(raw[:8], "%Y%m%d").date() - index_date).days
            except ValueError:
                log.warning("%s: %s %r is not YYYYMMDD; trying the next date", source, keyword, raw)
    return None


def _position(ds: Dataset) -> float | None:
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if not ipp or not iop or len(ipp) != 3 or len(iop) != 6:
        return None
    normal = np.cross(np.array(iop[:3], float), np.array(iop[3:], float))
    return float(np.dot(normal, np.array(ipp, float)))


def _spacing(ds: Dataset) -> tuple[float, float]:
    sp = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        row, col = float(sp[0]), float(sp[1])
        if row > 0 and col > 0:
            return row, col
    except (TypeError, ValueError, IndexError):
        pass
    return 1.0, 1.0


def _check_pixel_data(ds: Dataset, source: str) -> None:
    if "PixelData" not in ds:
        raise DicomError("has no Pixel Data (7FE0,0010); expected an image. Structured reports, plans and "
                         "presentation states are not used", reason="no_pixel_data", source=source)
    length = len(ds.PixelData or b"")
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        if length < _ENCAPSULATED_MIN:
            raise DicomError("has empty encapsulated Pixel Data; the file is truncated. Re-export it from the PACS",
                             reason="truncated", source=source)
        return
    try:
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                    * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) + 7) // 8
    except (AttributeError, TypeError, ValueError) as e:
        raise DicomError(f"lacks an Image Pixel attribute ({e}); expected Rows, Columns and BitsAllocated",
                         reason="bad_pixel_module", source=source) from None
    if length < expected:
        raise DicomError(f"has {length} bytes of Pixel Data but its Image Pixel module needs {expected}; the file "
                         "is truncated. Re-export it from the PACS", reason="truncated", source=source)


def read_header(data: bytes, source: str, deid: Deidentifier, index_date: date,
                limits: IngestLimits = DEFAULT_LIMITS) -> DicomHeader:
    """Parse one instance and de-identify its header; raise `DicomError` saying what is wrong (a declared size
    beyond `limits` among it, so no pixel of such an instance is ever decoded)."""
    ds = _parse(data, source, limits)
    _check_declared_size(ds, source, limits)
    if is_waveform(ds):  # an ECG or other waveform: no image, read (and refused, if so) on the signal path
        raise WaveformNotImage("is a DICOM Waveform IOD, not an image; it is read as a signal recording",
                               source=source)
    mrn = str(ds.get("PatientID", "") or "").strip()
    if not mrn:
        raise DicomError("has no PatientID (0010,0020); expected the patient's MRN to link the image",
                         reason="no_patient_id", source=source)
    _check_pixel_data(ds, source)
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DicomError("has BurnedInAnnotation (0028,0301) = YES: its pixels may show the patient's name or ID, "
                         "which the Basic Profile cannot remove. Export a version without annotations",
                         reason="burned_in_annotation", source=source)
    day, position, spacing = _day(ds, index_date, source), _position(ds), _spacing(ds)
    deid.dicom(ds, mrn)
    return DicomHeader(pseudonym=str(ds.PatientID), study_uid=str(ds.get("StudyInstanceUID", "") or ""),
                       series_uid=str(ds.get("SeriesInstanceUID", "") or ""), day=day, position=position,
                       instance=int(ds.get("InstanceNumber", 0) or 0), frames=int(ds.get("NumberOfFrames", 1) or 1),
                       spacing=spacing)


def read_frame(data: bytes, source: str) -> np.ndarray:
    """The middle frame of an instance as float32 [H, W] modality (VOI-windowed) values."""
    ds = _parse(data, source)
    arr = _pixel_array(ds, source)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[arr.shape[0] // 2]
    return _values(arr, ds, source)


def read_frames(data: bytes, source: str) -> tuple[list[np.ndarray], tuple[float, ...] | None]:
    """Every frame of an instance, in stored order, as float32 [H, W] values (as `read_frame`), and its
    ImageOrientationPatient (six direction cosines) or None; for the 3D path (`pipelines.imaging.series_frames`)."""
    ds = _parse(data, source)
    arr = _pixel_array(ds, source)
    frames = [arr[i] for i in range(arr.shape[0])] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else [arr]
    iop = ds.get("ImageOrientationPatient")
    try:
        orientation = tuple(float(v) for v in iop) if iop and len(iop) == 6 else None
    except (TypeError, ValueError):
        orientation = None
    return [_values(f, ds, source) for f in frames], orientation


def _pixel_array(ds: Dataset, source: str) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as e:  # a decoder or length error: the pixel data cannot be trusted
        ts = ds.file_meta.get("TransferSyntaxUID")
        raise DicomError(f"has Pixel Data in {ts.name if ts else 'an unknown transfer syntax'} that cannot be decoded "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); the file is damaged or needs a decoder "
                         "plugin. Re-export it uncompressed from the PACS", reason="undecodable", source=source) from None


def _values(arr: np.ndarray, ds: Dataset, source: str) -> np.ndarray:
    """One stored frame -> float32 [H, W]: luminance for colour, else Modality LUT then VOI LUT/window."""
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        if arr.ndim != 3:
            raise DicomError(f"has colour pixel data of shape {arr.shape}; expected [rows, columns, 3]",
                             reason="bad_shape", source=source)
        pixels = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        if arr.ndim != 2:
            raise DicomError(f"has pixel data of shape {arr.shape}; expected a 2D frame", reason="bad_shape", source=source)
        pixels = apply_modality_lut(arr, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            pixels = apply_voi_lut(pixels, ds, index=0, prefer_lut=True)
    pixels = np.asarray(pixels, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise DicomError("has non-finite pixel values after the Modality LUT; check RescaleSlope/Intercept",
                         reason="non_finite", source=source)
    return pixels


def image_transform(image_size: int) -> Compose:
    """[1, H, W] square-pixel values -> [1, S, S] float32, zero mean and unit variance."""
    return Compose([Resize(spatial_size=(image_size, image_size), mode="area"), NormalizeIntensity()])


def normalise_slice(pixels: np.ndarray, image_size: int, spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Square pixels (PixelSpacing), square field of view (padded with the minimum), resize, z-score."""
    img = pixels[None].astype(np.float32)
    row, col = spacing
    if abs(row - col) > 1e-3 * max(row, col):
        h, w = img.shape[1:]
        s = min(row, col)
        img = np.asarray(Resize(spatial_size=(max(1, round(h * row / s)), max(1, round(w * col / s))), mode="area")(img))
    h, w = img.shape[1:]
    side = max(h, w)
    img = np.pad(img, ((0, 0), ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2)),
                 constant_values=float(img.min()))
    out = np.asarray(image_transform(image_size)(img), dtype=np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)  # a constant image has no variance
