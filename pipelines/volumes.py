"""A DICOM series -> one volume `[1, D, S, S]` for studies with `cohort.image_dims = 3`.

The 2D path (`pipelines.images`) keeps the middle slice of the chosen series; a 3D study needs
every slice. This step takes the slices already ordered along the slice normal (as
`pipelines.images` orders a series) and their PixelSpacing, makes pixels square, pads the
field of view square with the minimum value, resamples to D slices of S x S with MONAI's
`Resize` and z-scores the volume with `NormalizeIntensity`, the 3D counterpart of
`pipelines.dicom.normalise_slice`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from monai.transforms import Compose, NormalizeIntensity, Resize

from .errors import InputError


def volume_transform(image_size: int, depth: int) -> Compose:
    """[1, D0, H, W] square-pixel values -> [1, depth, S, S] float32, zero mean and unit variance."""
    # trilinear, not area: a short series (D0 < depth) must be interpolated, not repeated
    return Compose([Resize(spatial_size=(depth, image_size, image_size), mode="trilinear"), NormalizeIntensity()])


def series_volume(slices: Sequence[np.ndarray], *, image_size: int, depth: int,
                  spacing: tuple[float, float] = (1.0, 1.0), source: str = "series") -> np.ndarray:
    """Ordered 2D frames of one series (modality values, `[H, W]` each) -> `[1, depth, S, S]` float32."""
    if not slices:
        raise InputError("a volume needs at least one slice, got none", reason="empty_series", source=source)
    shapes = {tuple(s.shape) for s in slices}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InputError("every slice of a series must be one 2D frame of the same size, got shapes "
                         f"{sorted(shapes)}; the series mixes acquisitions, choose one", reason="bad_shape", source=source)
    vol = np.stack([np.asarray(s, dtype=np.float32) for s in slices])[None]  # [1, D0, H, W]
    if not np.isfinite(vol).all():
        raise InputError("the series has non-finite pixel values", reason="non_finite", source=source)
    row, col = spacing
    d0, h, w = vol.shape[1:]
    if abs(row - col) > 1e-3 * max(row, col):  # square pixels first, as in the 2D path
        s = min(row, col)
        h, w = max(1, round(h * row / s)), max(1, round(w * col / s))
        vol = np.asarray(Resize(spatial_size=(d0, h, w), mode="trilinear")(vol))
    side = max(h, w)
    pad = ((0, 0), (0, 0), ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2))
    vol = np.pad(vol, pad, constant_values=float(vol.min()))
    out = np.asarray(volume_transform(image_size, depth)(vol), dtype=np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)  # a constant volume has no variance
