"""A DICOM series -> one volume `[1, D, S, S]` for studies with `cohort.image_dims = 3`.

The 2D path (`pipelines.imaging.dicom.normalise_slice`) keeps the middle slice of the chosen series; a
3D study needs every slice. This step takes the slices already ordered along the slice normal
(`pipelines.imaging.series_frames` yields them so) and their PixelSpacing, and builds the volume one
slice at a time, so a 500-slice 512 x 512 series never sits in memory at full resolution:

1. each slice: square pixels from PixelSpacing, square field of view (padded with that slice's
   minimum, air in CT, as the 2D path pads), reduced to S x S with MONAI's `Resize` in `area`
   mode (an average, so a small lesion is not skipped as a sampled resize would skip it);
2. the stack `[1, D0, S, S]` resampled along depth to D slices with `Resize`: `area` (averaging
   neighbouring slices) when D0 >= D, `trilinear` when the series is shorter than D, so a
   series with too few slices is interpolated along depth, never refused (one slice becomes D
   copies of itself); the volume always spans the whole series, whatever its slice thickness;
3. z-scored with `NormalizeIntensity`, the 3D counterpart of the 2D path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from monai.transforms import Compose, NormalizeIntensity, Resize

from ..errors import InputError

log = logging.getLogger(__name__)


def plane_transform(image_size: int) -> Resize:
    """[1, H, W] square field of view -> [1, S, S], averaging (no z-score: that is done on the volume)."""
    return Resize(spatial_size=(image_size, image_size), mode="area")


def volume_transform(image_size: int, depth: int, slices: int) -> Compose:
    """[1, slices, S, S] -> [1, depth, S, S] float32, zero mean and unit variance."""
    mode = "area" if slices >= depth else "trilinear"
    return Compose([Resize(spatial_size=(depth, image_size, image_size), mode=mode), NormalizeIntensity()])


def _plane(pixels: np.ndarray, image_size: int, spacing: tuple[float, float]) -> np.ndarray:
    img = pixels[None].astype(np.float32)
    row, col = spacing
    h, w = img.shape[1:]
    if abs(row - col) > 1e-3 * max(row, col):  # square pixels first, as in the 2D path
        s = min(row, col)
        h, w = max(1, round(h * row / s)), max(1, round(w * col / s))
        img = np.asarray(Resize(spatial_size=(h, w), mode="area")(img))
    side = max(h, w)
    img = np.pad(img, ((0, 0), ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2)),
                 constant_values=float(img.min()))
    return np.asarray(plane_transform(image_size)(img), dtype=np.float32)[0]


def series_volume(slices: Iterable[np.ndarray], *, image_size: int, depth: int,
                  spacing: tuple[float, float] = (1.0, 1.0), source: str = "series") -> np.ndarray:
    """Ordered 2D frames of one series (modality values, `[H, W]` each) -> `[1, depth, S, S]` float32.

    `slices` may be a generator: each frame is reduced to S x S as it arrives and then released.
    """
    planes: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for k, frame in enumerate(slices):
        frame = np.asarray(frame)
        if frame.ndim != 2 or (shape is not None and frame.shape != shape):
            raise InputError(f"every slice of a series must be one 2D frame of the same size; slice {k} is "
                             f"{tuple(frame.shape)} after {shape}: the series mixes acquisitions, choose one",
                             reason="bad_shape", source=source)
        shape = frame.shape
        if not np.isfinite(frame).all():
            raise InputError(f"slice {k} of the series has non-finite pixel values", reason="non_finite", source=source)
        planes.append(_plane(frame, image_size, spacing))
    if not planes:
        raise InputError("a volume needs at least one slice, got none", reason="empty_series", source=source)
    if len(planes) < depth:
        log.debug("%s: %d slices interpolated to a depth of %d", source, len(planes), depth)
    stack = np.stack(planes)[None]  # [1, D0, S, S]
    out = np.asarray(volume_transform(image_size, depth, len(planes))(stack), dtype=np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)  # a constant volume has no variance
