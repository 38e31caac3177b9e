"""The dataset's large fields (image, signal) written row by row to `.npy` files, then memory-mapped.

Ingestion knows every sample's row before it reads images and wearables, so each chosen image
or window is written straight to its row on disk (`os.pwrite`, never through a mapping, so
written pages sit in the page cache, not in the process) and is not kept in memory: memory no
longer grows with the number of patients. Rows never written stay zero (the file is created
sparse at its full size), which is what an absent modality holds. Every row is checked
finite as it is written, so the dataset need not read the whole field back to check it.

`open` maps the files copy-on-write (`np.load(mmap_mode="c")`): training reads pages on
demand and may write to its own private copy of them; the files themselves never change.
`close` unlinks the files: on POSIX a mapped file stays readable until its last mapping is
released, so the dataset keeps its data and the disk space is freed with it, whatever
happens to the process.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import DatasetError

log = logging.getLogger(__name__)


class RowFile:
    """One float32 field `[rows, *shape]` on disk; `write(row, values)` then `open()`."""

    def __init__(self, path: Path, rows: int, shape: tuple[int, ...]) -> None:
        self.path, self.rows, self.shape = Path(path), rows, tuple(shape)
        self._row_bytes = int(np.prod(self.shape, dtype=np.int64)) * 4
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (rows, *self.shape)}
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(os.dup(self._fd), "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            self._offset = f.tell()
        os.ftruncate(self._fd, self._offset + rows * self._row_bytes)  # sparse: unwritten rows read as zeros

    def write(self, row: int, values: np.ndarray) -> None:
        """Write one row (any float dtype, cast to float32); refuse a wrong shape or a NaN/Inf value."""
        if self._fd < 0:
            raise DatasetError(f"{self.path.name} is already open for reading; rows are written before `open`")
        if not 0 <= row < self.rows:
            raise DatasetError(f"row {row} is outside {self.path.name}'s {self.rows} rows")
        arr = np.ascontiguousarray(values, dtype=np.float32)
        if arr.shape != self.shape:
            raise DatasetError(f"a row of {self.path.name} is {arr.shape}; expected {self.shape}")
        if not np.isfinite(arr).all():
            raise DatasetError(f"a row of {self.path.name} holds NaN or Inf; expected finite values. Check the ingestion step")
        os.pwrite(self._fd, arr.tobytes(), self._offset + row * self._row_bytes)

    def open(self) -> np.ndarray:
        """The whole field, mapped copy-on-write; no more writes after this."""
        self.close()
        if self.rows == 0:  # an empty file cannot be mapped
            return np.zeros((0, *self.shape), np.float32)
        return np.load(self.path, mmap_mode="c", allow_pickle=False)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RowFiles:
    """A private folder of `RowFile`s that is removed on `close` (mapped arrays stay readable, see above)."""

    def __init__(self, directory: Path | None = None) -> None:
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="fedcare-dataset-", dir=directory))
        self._files: list[RowFile] = []

    def field(self, name: str, rows: int, shape: tuple[int, ...]) -> RowFile:
        f = RowFile(self.dir / f"{name}.npy", rows, shape)
        self._files.append(f)
        return f

    def close(self) -> None:
        for f in self._files:
            f.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        log.debug("removed %s (mapped fields stay readable until released)", self.dir)

    def __enter__(self) -> "RowFiles":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
