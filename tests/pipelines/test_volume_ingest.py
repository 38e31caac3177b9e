"""Ingestion for a 3D study (cohort.image_dims = 3): real multi-slice CT series -> [1, D, S, S] rows on disk."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from coordinator.api.study import CohortSpec
from pipelines.cache import CACHE_FILE
from pipelines.deid import Deidentifier
from pipelines.imaging.dicom import normalise_slice, read_frame, read_frames
from pipelines.ingest import IngestResult, ingest_silo
from pipelines.imaging.series_frames import GEOMETRY
from pipelines.imaging.volumes import series_volume

from .dicom_series import tilted, write_series
from .fixtures import patient, write_bundle

KEY = b"fedcare-test-pseudonym-key-32byt"
S, D = 16, 8
COHORT_3D = CohortSpec(image_size=S, image_dims=3, image_depth=D)


def _expected_volume(paths: list[Path]) -> np.ndarray:
    """What `series_volume` makes of the files when they are read one by one and sorted by position by hand."""
    ordered = sorted(paths, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    spacing = tuple(float(x) for x in pydicom.dcmread(ordered[0], stop_before_pixels=True).PixelSpacing)
    return series_volume([read_frame(p.read_bytes(), str(p)) for p in ordered], image_size=S, depth=D, spacing=spacing)


@pytest.fixture
def silo(tmp_path: Path) -> dict:
    """Seven patients: a short and a long good series, no image, and four series that are not one regular grid."""
    fhir, dicom = tmp_path / "fhir", tmp_path / "dicom"
    fhir.mkdir()
    mrns = ["MRN-SHORT", "MRN-LONG", "MRN-NONE", "MRN-GAP", "MRN-TILT", "MRN-BURN", "MRN-DUP"]
    write_bundle(fhir / "patients.json", [patient(f"p{k}", mrn) for k, mrn in enumerate(mrns)])
    paths = {
        "MRN-SHORT": write_series(dicom / "a", "MRN-SHORT", 5),  # fewer slices than D: interpolated along depth
        "MRN-LONG": write_series(dicom / "b", "MRN-LONG", 12, level=50.0, window=None),  # more than D: averaged
        "MRN-GAP": write_series(dicom / "c", "MRN-GAP", 7, skip=(3,)),  # a missing slice
        "MRN-TILT": write_series(dicom / "d", "MRN-TILT", 6, orientations={4: tilted(5.0)}),
        "MRN-BURN": write_series(dicom / "e", "MRN-BURN", 6, burned_in=(2,)),  # de-id refuses slice 2: a gap
    }
    dup = "1.2.826.0.1.3680043.8.498.4242"  # two acquisitions filed under one SeriesInstanceUID
    paths["MRN-DUP"] = (write_series(dicom / "f", "MRN-DUP", 4, series_uid=dup)
                        + write_series(dicom / "g", "MRN-DUP", 4, series_uid=dup))
    return {"fhir": fhir, "dicom": dicom, "paths": paths, "root": tmp_path}


def _ingest(silo: dict, cohort: CohortSpec, cache: Path | None = None) -> IngestResult:
    return ingest_silo(fhir=[silo["fhir"]], dicom=[silo["dicom"]], wearables=[], cohort=cohort, pseudonym_key=KEY,
                       cache_dir=cache)


def _row(result: IngestResult, mrn: str) -> int:
    return result.dataset.pseudonyms.index(Deidentifier(KEY).pseudonym(mrn))


def test_a_3d_study_gets_each_patients_series_as_the_volume_series_volume_makes(silo):
    result = _ingest(silo, COHORT_3D)
    ds = result.dataset
    assert tuple(ds.image.shape) == (7, 1, D, S, S)
    ehr, image, signal, mask, label = ds[_row(result, "MRN-SHORT")]
    assert tuple(image.shape) == (1, D, S, S) and mask[1] == 1
    for mrn in ("MRN-SHORT", "MRN-LONG"):
        got = ds.image[_row(result, mrn)].numpy()
        want = _expected_volume(silo["paths"][mrn])
        assert np.allclose(got, want, atol=1e-6), mrn
        assert abs(got.mean()) < 1e-4 and got.std() == pytest.approx(1.0, abs=1e-3)
        peak = got[0].max(axis=(1, 2))  # the lesion lies in the middle slices only, tissue brightens with position
        assert D // 4 <= int(peak.argmax()) < D - D // 4 and peak.max() > max(peak[0], peak[-1]) + 0.3, (mrn, peak)
        assert got[0, -1].mean() > got[0, 0].mean(), mrn  # slice order kept along depth
    # a missing or refused image is masked out, its row left as zeros that are never read as data
    for mrn in ("MRN-NONE", "MRN-GAP", "MRN-TILT", "MRN-BURN", "MRN-DUP"):
        i = _row(result, mrn)
        assert ds.mask[i, 1] == 0 and not ds.image[i].any(), mrn
    assert result.report.modalities["image"].samples == 2


def test_series_that_are_not_one_regular_grid_are_quarantined_naming_the_series(silo):
    result = _ingest(silo, COHORT_3D)
    geometry = [e for e in result.quarantine.entries if e.reason == GEOMETRY]
    assert len(geometry) == 4  # gap, tilt, burned-in slice (leaves a gap), two acquisitions at the same positions
    messages = " | ".join(e.message for e in geometry)
    assert "slice gaps" in messages and "ImageOrientationPatient" in messages and "same position" in messages
    deid = Deidentifier(KEY)
    originals = {str(pydicom.dcmread(ps[0], stop_before_pixels=True).SeriesInstanceUID)
                 for mrn, ps in silo["paths"].items() if mrn in ("MRN-GAP", "MRN-TILT", "MRN-BURN", "MRN-DUP")}
    for e in geometry:  # named by the remapped (keyed) series UID, never the hospital's own
        assert e.source.startswith("series 2.25.") and "instances, first " in e.source
        assert not any(uid in e.source or uid in e.message for uid in originals)
    assert {e.source.split()[1] for e in geometry} == {deid.uid(uid) for uid in originals}
    burned = [e for e in result.quarantine.entries if e.reason == "burned_in_annotation"]
    assert len(burned) == 1  # de-identification refuses that slice exactly as in 2D
    assert result.report.modalities["image"].quarantined == {GEOMETRY: 4, "burned_in_annotation": 1}
    report = json.dumps(result.report.model_dump(mode="json"))
    assert "MRN-" not in report and "2.25." not in report


def test_2d_and_3d_caches_never_mix_and_a_volume_is_replayed_from_the_cache(silo):
    cache = silo["root"] / "cache"
    flat = _ingest(silo, CohortSpec(image_size=S), cache)
    assert tuple(flat.dataset.image.shape) == (7, 1, S, S)
    first = _ingest(silo, COHORT_3D, cache)
    again = _ingest(silo, COHORT_3D, cache)
    flat_again = _ingest(silo, CohortSpec(image_size=S), cache)
    assert tuple(first.dataset.image.shape) == tuple(again.dataset.image.shape) == (7, 1, D, S, S)
    assert tuple(flat_again.dataset.image.shape) == (7, 1, S, S)
    assert torch.equal(first.dataset.image, again.dataset.image)
    assert torch.equal(flat.dataset.image, flat_again.dataset.image)
    assert first.report.modalities["image"].cached == 0 < again.report.modalities["image"].cached
    with sqlite3.connect(cache / CACHE_FILE) as db:  # the two good series
        assert db.execute("SELECT count(*) FROM entries WHERE kind = 'volume'").fetchone() == (2,)
    # the 2D path still keeps the middle slice of the same series
    short = sorted(silo["paths"]["MRN-SHORT"],
                   key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    mid = short[len(short) // 2]
    spacing = tuple(float(x) for x in pydicom.dcmread(mid, stop_before_pixels=True).PixelSpacing)
    assert np.array_equal(flat.dataset.image[_row(flat, "MRN-SHORT")].numpy(),
                          normalise_slice(read_frame(mid.read_bytes(), str(mid)), S, spacing))


def test_one_slice_is_interpolated_to_the_studys_depth_and_frames_keep_their_order():
    flat = series_volume([np.arange(30.0).reshape(5, 6)], image_size=8, depth=4)
    assert flat.shape == (1, 4, 8, 8) and np.allclose(flat[0], flat[0, :1])
    name = "SC_rgb_rle_2frame.dcm"
    data = Path(get_testdata_file(name)).read_bytes()
    frames, _ = read_frames(data, name)
    assert len(frames) == 2 and np.array_equal(frames[1], read_frame(data, name))
    assert not np.array_equal(frames[0], frames[1])
