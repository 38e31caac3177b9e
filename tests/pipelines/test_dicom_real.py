"""DICOM ingestion on the real files pydicom ships: codecs, multi-frame, series, broken files, de-id, cache."""

from __future__ import annotations

import pickle
import shutil
import sqlite3
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from coordinator.api.study import CohortSpec
from pipelines.cache import CACHE_FILE
from pipelines.deid import Deidentifier
from pipelines.imaging.dicom import normalise_slice, read_frame
from pipelines.ingest import ingest_silo

from .fixtures import patient, write_bundle

KEY = b"fedcare-test-pseudonym-key-32byt"
DECODABLE = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm",
             "SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPGExtended.dcm", "rtdose.dcm",
             "examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm"]


def _file(name: str) -> Path:
    return Path(get_testdata_file(name))


@pytest.mark.parametrize("name", DECODABLE)
def test_every_codec_and_multiframe_decodes(name):
    pixels = read_frame(_file(name).read_bytes(), name)
    assert pixels.ndim == 2 and pixels.dtype == np.float32 and np.isfinite(pixels).all() and pixels.std() > 0
    image = normalise_slice(pixels, 32, (1.0, 1.0))
    assert image.shape == (1, 32, 32) and abs(float(image.mean())) < 1e-3


def test_lossless_codecs_match_native_and_rescale_is_applied():
    native = read_frame(_file("MR_small.dcm").read_bytes(), "MR")
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        assert np.array_equal(read_frame(_file(name).read_bytes(), name), native)
    ct = pydicom.dcmread(_file("CT_small.dcm"))
    hu = read_frame(_file("CT_small.dcm").read_bytes(), "CT")
    assert np.allclose(hu, ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept))


def _silo(tmp_path: Path) -> tuple[Path, Path, dict[str, Path]]:
    """The good and broken files in a nested folder under meaningless names, plus FHIR for every PatientID."""
    dicom, fhir = tmp_path / "pacs-export", tmp_path / "fhir"
    fhir.mkdir()
    good = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "rtdose.dcm",
            "examples_ybr_color.dcm"]
    broken = {"MR_truncated.dcm": "truncated", "rtplan.dcm": "no_pixel_data", "no_meta.dcm": "not_dicom",
              "JPEG-lossy.dcm": "undecodable", "SC_jpeg_no_color_transform.dcm": "no_patient_id"}
    paths: dict[str, Path] = {}
    for k, name in enumerate(good + list(broken)):
        target = dicom / f"{k % 3}" / f"vol{k}" / f"IM{k:04d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_file(name), target)
        paths[name] = target
    # JPEG-lossy.dcm shares the NM patient with JPEG2000.dcm: give it its own patient so it is decoded
    ds = pydicom.dcmread(paths["JPEG-lossy.dcm"])
    ds.PatientID, ds.SeriesInstanceUID = "LOSSY-1", pydicom.uid.generate_uid()
    ds.save_as(paths["JPEG-lossy.dcm"])
    ds = pydicom.dcmread(_file("CT_small.dcm"))
    ds.PatientID, ds.BurnedInAnnotation = "BURNED-1", "YES"
    paths["burned"] = dicom / "2" / "burned"
    ds.save_as(paths["burned"])
    ids = {"1CT1", "4MR1", "8NM1", "ID1", "id11111", "204", "LOSSY-1", "BURNED-1"}
    for i, mrn in enumerate(sorted(ids)):
        write_bundle(fhir / f"p{i}.json", [patient(f"p{i}", mrn, family=f"Family{i}")])
    broken["burned"] = "burned_in_annotation"
    return dicom, fhir, {**{n: paths[n] for n in broken}, "_reasons": broken}  # type: ignore[dict-item]


def test_real_files_grouped_broken_ones_quarantined(tmp_path: Path):
    dicom, fhir, broken = _silo(tmp_path)
    reasons = broken.pop("_reasons")
    result = ingest_silo(fhir=[fhir], dicom=[dicom], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY)
    got = {(e.reason, e.source) for e in result.quarantine.entries if e.modality == "image"}
    assert got == {(reason, str(broken[name])) for name, reason in reasons.items()}
    for e in result.quarantine.entries:
        assert e.source in e.message
    rep = result.report.modalities["image"]
    # MR_small and MR_small_RLE are two instances of one series; 6 patients get an image
    assert rep.inputs_read == 13 and rep.records == 8 and rep.series == 7 and rep.patients == 6
    assert result.dataset.modality_counts()["image"] == 6


def test_basic_profile_deidentifies_the_header():
    d = Deidentifier(KEY)
    ds = pydicom.dcmread(_file("CT_small.dcm"))
    study, sop, date0 = ds.StudyInstanceUID, ds.SOPInstanceUID, ds.StudyDate
    ds.add_new(0x00091001, "LO", "private vendor note")
    d.dicom(ds, "1CT1")
    text = str(ds)
    assert "CompressedSamples" not in text and "1CT1" not in text and str(study) not in text and str(sop) not in text
    assert ds.PatientID == d.pseudonym("1CT1") and ds.PatientIdentityRemoved == "YES"
    assert ds.StudyInstanceUID == d.uid(str(study)) and ds.StudyInstanceUID.startswith("2.25.")
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage  # class UIDs are kept
    assert ds.StudyDate != date0 and "InstitutionName" not in ds and not any(e.tag.is_private for e in ds)
    shift = (date(int(date0[:4]), int(date0[4:6]), int(date0[6:])) - date(int(ds.StudyDate[:4]), int(ds.StudyDate[4:6]),
                                                                            int(ds.StudyDate[6:]))).days
    assert 1 <= shift <= 365 and d.date_shift("1CT1").days == -shift
    assert {c.CodeValue for c in ds.DeidentificationMethodCodeSequence} == {"113100", "113107"}


def test_no_identifier_in_cache_or_result_and_cache_reuse(tmp_path: Path):
    dicom, fhir, broken = _silo(tmp_path)
    broken.pop("_reasons")
    cache = tmp_path / "cache"
    kwargs = dict(fhir=[fhir], dicom=[dicom], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY, cache_dir=cache)
    first = ingest_silo(**kwargs)
    identifiers = {"1CT1", "4MR1", "8NM1", "id11111", "LOSSY-1", "CompressedSamples", "Lestrade", "Lastname",
                   "221B Baker", "+44 20 7946", "Family1", "pacs-export", "1950-05-17", "20040119", "20040826"}
    for name in ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm"):
        ds = pydicom.dcmread(_file(name))
        identifiers |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    blobs = [p.read_bytes() for p in cache.rglob("*") if p.is_file()]  # the entries' database, its WAL, row files
    assert (cache / CACHE_FILE).is_file()
    blobs.append(pickle.dumps(first.dataset) + first.report.model_dump_json().encode())
    leaked = {s for s in identifiers for b in blobs if s.encode() in b}
    assert not leaked

    second = ingest_silo(**kwargs)
    for m in ("ehr", "image"):
        assert second.report.modalities[m].parsed == 0, m
    assert second.report.modalities["image"].cached == 8 and second.report.modalities["ehr"].cached == 8
    assert second.dataset.pseudonyms == first.dataset.pseudonyms
    assert (second.dataset.image == first.dataset.image).all() and len(second.quarantine) == len(first.quarantine)

    ct = next(p for p in dicom.rglob("*") if p.is_file() and pydicom.dcmread(p, force=True).get("PatientID") == "1CT1")
    ds = pydicom.dcmread(ct)
    ds.PixelData = (ds.pixel_array[::-1].copy()).tobytes()
    ds.save_as(ct)
    third = ingest_silo(**kwargs)
    assert third.report.modalities["image"].parsed == 1 and third.report.modalities["ehr"].parsed == 0


def test_damaged_cache_entries_are_misses_and_their_inputs_parsed_again(tmp_path: Path):
    dicom, fhir, _ = _silo(tmp_path)
    cache = tmp_path / "cache"
    kwargs = dict(fhir=[fhir], dicom=[dicom], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY, cache_dir=cache)
    first = ingest_silo(**kwargs)
    with sqlite3.connect(cache / CACHE_FILE) as db:  # listed as stored (IngestCache.has), unreadable when merged
        kinds = {k for (k,) in db.execute("SELECT kind FROM entries")}
        db.execute("UPDATE entries SET meta = 'not json' WHERE kind = 'fhir'")
        db.execute("UPDATE entries SET layout = '[[\"image\", \"|O\", [1]]]' WHERE kind = 'dicom-header'")
        db.execute("UPDATE entries SET arrays = x'00' WHERE kind = 'image'")
    assert {"fhir", "dicom-header", "image"} <= kinds
    again = ingest_silo(**kwargs)
    for m in ("ehr", "image"):
        assert again.report.modalities[m].cached == 0, m
        assert again.report.modalities[m].parsed == first.report.modalities[m].parsed, m
    assert again.dataset.pseudonyms == first.dataset.pseudonyms
    assert (again.dataset.image == first.dataset.image).all() and len(again.quarantine) == len(first.quarantine)
    assert ingest_silo(**kwargs).report.modalities["image"].cached == first.report.modalities["image"].parsed


def test_a_damaged_cache_file_is_set_aside_and_ingestion_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    dicom, fhir, _ = _silo(tmp_path)
    cache = tmp_path / "cache"
    kwargs = dict(fhir=[fhir], dicom=[dicom], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY, cache_dir=cache)
    first = ingest_silo(**kwargs)
    (cache / CACHE_FILE).write_bytes(b"not a database" * 100)
    again = ingest_silo(**kwargs)
    assert again.report.modalities["image"].parsed == first.report.modalities["image"].parsed
    assert (again.dataset.image == first.dataset.image).all() and len(again.quarantine) == len(first.quarantine)
    assert (cache / f"{CACHE_FILE}.damaged").read_bytes().startswith(b"not a database")
    assert "is damaged" in caplog.text and "set aside" in caplog.text
    assert ingest_silo(**kwargs).report.modalities["image"].cached == first.report.modalities["image"].parsed
