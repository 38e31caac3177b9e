"""The dataset's image and signal fields live in on-disk row files that the dataset maps; nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.api.study import CohortSpec
from pipelines.errors import DatasetError
from pipelines.ingest import ingest_silo
from pipelines.rowfiles import RowFiles

from .conftest import KEY


def test_rows_written_in_any_order_read_back_and_unwritten_rows_are_zero(tmp_path: Path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    with RowFiles(tmp_path) as files:
        field = files.field("signal", 4, (2, 3, 4))
        field.write(3, a)
        field.write(0, b)
        field.write(3, a * 2)  # a later window overwrites the row
        with pytest.raises(DatasetError, match="NaN or Inf"):
            field.write(1, np.full((2, 3, 4), np.nan))
        with pytest.raises(DatasetError, match=r"expected \(2, 3, 4\)"):
            field.write(1, np.zeros((2, 3)))
        mapped = field.open()
        folder = files.dir
    assert not folder.exists()  # unlinked on close; the mapping keeps the data
    assert mapped.shape == (4, 2, 3, 4) and mapped.dtype == np.float32
    assert np.array_equal(mapped[3], (a * 2).astype(np.float32)) and np.array_equal(mapped[0], b.astype(np.float32))
    assert not mapped[1].any() and not mapped[2].any()
    t = torch.from_numpy(mapped)
    t[0] += 1  # copy-on-write: the process may change its view, the file never changes
    assert torch.allclose(t[0], torch.from_numpy(b.astype(np.float32)) + 1)


def test_ingested_fields_are_mapped_from_the_silo_disk_and_leave_no_files(small_hospital, tmp_path: Path):
    cache = tmp_path / "cache"
    result = ingest_silo(fhir=[small_hospital.fhir_dir], dicom=[small_hospital.dicom_dir],
                         wearables=[small_hospital.wearables_dir], cohort=CohortSpec(), pseudonym_key=KEY, cache_dir=cache)
    d = result.dataset
    maps = Path("/proc/self/maps").read_text()
    for name in ("image", "signal"):
        assert f"{cache}/fedcare-dataset-" in maps and f"/{name}.npy (deleted)" in maps, name
    assert not list(cache.glob("fedcare-dataset-*"))  # nothing left on disk once the dataset is released
    assert d.modality_counts()["image"] == len(d) and bool(d.image.abs().sum(dim=(1, 2, 3)).all())
    assert torch.isfinite(d.signal).all() and d.modality_counts()["signal"] == len(d)
