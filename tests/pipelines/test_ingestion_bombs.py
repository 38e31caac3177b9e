"""Ingestion bombs (#16 item 7): declared sizes checked before decoding, one file never aborts the run, bundles
streamed, no link followed out of an input folder, compressed files read or reported, wide tables refused early."""

from __future__ import annotations

import gzip
import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from coordinator.api.study import CohortSpec
from pipelines.ehr.fhir import WHOLE_BUNDLE_BYTES, iter_resources
from pipelines.errors import InputError
from pipelines.ingest import ingest_silo
from pipelines.limits import IngestLimits
from pipelines.quarantine import MAX_MESSAGE, Quarantine

from .dicom_series import new_instance
from .fixtures import patient, quantity, write_bundle

KEY = b"b" * 32


def _reasons(result, modality: str) -> dict[str, int]:
    return result.report.modalities[modality].quarantined


def _ingest(tmp_path: Path, **kwargs):
    (tmp_path / "ok").mkdir(exist_ok=True)
    fhir = write_bundle(tmp_path / "ok" / "p.json", [patient("p1", "MRN-1")])
    return ingest_silo(fhir=[fhir, *kwargs.pop("fhir", [])], dicom=kwargs.pop("dicom", []),
                       wearables=kwargs.pop("wearables", []),
                       cohort=CohortSpec(), pseudonym_key=KEY, **kwargs)


def _dicom(path: Path, *, rows: int, cols: int, frames: int = 1, syntax=RLELossless, pixels: bytes | None = None) -> Path:
    ds = new_instance(CTImageStorage, syntax)
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "MRN-1", generate_uid(), generate_uid()
    ds.Modality, ds.StudyDate = "CT", "20231201"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels if pixels is not None else encapsulate([b"\x00" * 64] * min(frames, 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_dicom_declaring_gigapixels_is_refused_before_decoding(tmp_path: Path):
    bomb = _dicom(tmp_path / "dicom" / "bomb.dcm", rows=65535, cols=65535)
    assert bomb.stat().st_size < 4096  # a tiny file declaring 8 GiB of pixels
    frames = _dicom(tmp_path / "dicom" / "frames.dcm", rows=64, cols=64, frames=4000)
    result = _ingest(tmp_path, dicom=[tmp_path / "dicom"])
    assert _reasons(result, "image") == {"too_large": 2}
    messages = {Path(e.source).name: e.message for e in result.quarantine.entries}
    assert "declares 4000 frames, above limits.max_frames (2000)" in messages[frames.name]
    assert "declares 8589672450 bytes of pixels" in messages[bomb.name]
    assert result.report.samples == 1  # the run went on


def test_a_deflated_dicom_that_inflates_past_the_limit_is_refused(tmp_path: Path):
    pixels = np.zeros((4, 512, 512), np.uint16).tobytes()  # 2 MiB of zeros deflate to a few KiB
    bomb = _dicom(tmp_path / "dicom" / "deflated.dcm", rows=512, cols=512, frames=4, syntax=DeflatedExplicitVRLittleEndian,
                  pixels=pixels)
    assert bomb.stat().st_size < 64 << 10
    result = _ingest(tmp_path, dicom=[bomb], limits=IngestLimits(max_inflated_bytes=1 << 20))
    assert _reasons(result, "image") == {"too_large": 1}
    assert "inflates beyond 1048576 bytes" in result.quarantine.entries[0].message


def test_json_nested_deeper_than_python_follows_is_quarantined_and_the_run_goes_on(tmp_path: Path):
    deep = tmp_path / "fhir" / "deep.json"
    deep.parent.mkdir()
    deep.write_text('{"resourceType": "Observation", "note": ' + "[" * 200_000 + "]" * 200_000 + "}")
    result = _ingest(tmp_path, fhir=[deep])
    assert _reasons(result, "ehr") == {"too_deep": 1} and result.report.samples == 1


def _deep_bundle(path: Path, depth: int, pad_bytes: int = 0) -> Path:
    """A Bundle whose (last) Observation holds a note nested `depth` deep, after an entry of `pad_bytes` of text."""
    pad = json.dumps({"resource": {"resourceType": "Basic", "text": {"status": "generated", "div": "x" * pad_bytes}}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"resourceType": "Bundle", "type": "collection", "entry": [' + pad + ', {"resource": '
                    '{"resourceType": "Observation", "note": ' + "[" * depth + "]" * depth + "}}]}")
    return path


def test_a_streamed_document_is_outlined_in_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Above WHOLE_BUNDLE_BYTES a document is read by its top-level resourceType, found in one pass that also checks
    its depth: a Bundle whose resourceType comes after its entries is still streamed, and a single resource nested
    too deep is refused as a streamed Bundle is."""
    import pipelines.ehr.fhir

    monkeypatch.setattr(pipelines.ehr.fhir, "WHOLE_BUNDLE_BYTES", 64)  # every file here is "large"
    folder = tmp_path / "fhir"
    folder.mkdir()
    entries = [{"fullUrl": "urn:uuid:p2", "resource": patient("p2", "MRN-2")},
               {"fullUrl": "urn:uuid:o2", "resource": quantity("2345-7", 99, "mg/dL", "2023-06-01", "urn:uuid:p2", "o2")}]
    (folder / "type-last.json").write_text(json.dumps({"entry": entries, "type": "collection", "resourceType": "Bundle"}))
    (folder / "deep-observation.json").write_text('{"resourceType": "Observation", "note": ' + "[" * 600 + "]" * 600 + "}")
    result = _ingest(tmp_path, fhir=[folder])
    assert _reasons(result, "ehr") == {"too_deep": 1} and result.report.samples == 2
    assert result.report.modalities["ehr"].records == 3  # two Patients and the Observation


def test_a_bundle_nested_deep_is_quarantined_at_once_without_memory_growing(tmp_path: Path):
    """ijson keeps the path of every open level: memory grew with the square of the depth (a 400 KB Bundle nested
    200,000 deep exhausted 24 GB and the node was killed). A Bundle read whole is refused by json's own recursion
    bound; a streamed one (above WHOLE_BUNDLE_BYTES) by limits.max_json_depth, before ijson builds anything."""
    folder = tmp_path / "fhir"
    _deep_bundle(folder / "deep.json", 20_000)  # read whole
    _deep_bundle(folder / "deep-large.json", 20_000, pad_bytes=WHOLE_BUNDLE_BYTES)  # streamed
    tracemalloc.start()
    result = _ingest(tmp_path, fhir=[folder])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert _reasons(result, "ehr") == {"too_deep": 2} and result.report.samples == 1
    assert peak < 64 << 20, peak  # the old reader held about 1 GB of paths for these two
    assert any("limits.max_json_depth (512)" in e.message for e in result.quarantine.entries)


def test_a_large_bundle_is_streamed_not_loaded_whole(tmp_path: Path):
    resources = [patient("p1", "MRN-1")] + [quantity("2345-7", 90.0 + i % 7, "mg/dL", "2023-10-01", "Patient/p1", f"o{i}",
                                                    note=[{"text": "x" * 400}]) for i in range(20_000)]
    bundle = write_bundle(tmp_path / "big.json", resources)
    size = bundle.stat().st_size
    assert size > 10 << 20
    tracemalloc.start()
    n = sum(1 for _ in iter_resources(bundle))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 20_001 and peak < size / 10, (peak, size)  # json.loads of the whole file peaks above its size


def test_a_single_resource_above_the_document_limit_is_refused(tmp_path: Path):
    big = tmp_path / "fhir" / "obs.json"
    big.parent.mkdir()
    big.write_text(json.dumps(quantity("2345-7", 90.0, "mg/dL", "2023-10-01", "Patient/p1", "o1", note=[{"text": "x" * 5000}])))
    result = _ingest(tmp_path, fhir=[big], limits=IngestLimits(max_document_bytes=4096))
    assert _reasons(result, "ehr") == {"too_large": 1}


def test_links_out_of_an_input_folder_are_not_followed(tmp_path: Path):
    secret = tmp_path / "outside" / "shadow.json"
    secret.parent.mkdir()
    write_bundle(secret, [patient("p9", "MRN-9")])
    folder = tmp_path / "fhir"
    folder.mkdir()
    os.symlink(secret, folder / "innocent.json")
    os.symlink(secret.parent, folder / "linked-folder")
    write_bundle(folder / "inside.json", [patient("p2", "MRN-2")])
    os.symlink(folder / "inside.json", folder / "alias.json")  # a link within the folder is fine
    result = _ingest(tmp_path, fhir=[folder])
    assert _reasons(result, "ehr") == {"link_outside_input": 2}
    assert result.report.patients == 2  # MRN-1 and MRN-2, never MRN-9 from outside
    assert {Path(e.source).name for e in result.quarantine.entries} == {"innocent.json", "linked-folder"}


def test_compressed_files_are_read_or_reported_as_skipped(tmp_path: Path):
    folder = tmp_path / "fhir"
    folder.mkdir()
    (folder / "Patient.ndjson.gz").write_bytes(gzip.compress(json.dumps(patient("p3", "MRN-3")).encode() + b"\n"))
    (folder / "export.zip").write_bytes(b"PK not read")
    (folder / "broken.json.gz").write_bytes(b"\x1f\x8b not gzip")
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "series.tar.gz").write_bytes(b"\x1f\x8b not read")
    result = _ingest(tmp_path, fhir=[folder], dicom=[tmp_path / "dicom"])
    assert result.report.patients == 2  # MRN-1, and MRN-3 read from the gzipped NDJSON
    assert _reasons(result, "ehr") == {"compressed_not_read": 1, "unreadable": 1}  # the zip; the damaged gzip, named
    assert _reasons(result, "image") == {"compressed_not_read": 1}  # not "not_dicom": it was never opened
    assert any("Decompress it" in e.message for e in result.quarantine.entries)


def test_a_table_with_too_many_columns_is_refused_before_it_is_parsed(tmp_path: Path):
    wide = tmp_path / "wide.csv"
    wide.write_text("mrn," + ",".join(f"c{i}" for i in range(5000)) + "\nMRN-1," + ",".join("1" * 5000) + "\n")
    result = _ingest(tmp_path, tabular=[wide], limits=IngestLimits(max_table_columns=1000))
    assert _reasons(result, "ehr") == {"too_many_columns": 1}
    endless = tmp_path / "endless.csv"
    endless.write_text("mrn," + "x" * (2 << 20) + "\n")
    result = _ingest(tmp_path, tabular=[endless])
    assert _reasons(result, "ehr") == {"line_too_long": 1}


def test_a_wearable_export_with_too_many_columns_is_refused(tmp_path: Path):
    (tmp_path / "wearables").mkdir()
    (tmp_path / "wearables" / "MRN-1.csv").write_text("timestamp," + ",".join(f"c{i}" for i in range(3000)) + "\n")
    result = _ingest(tmp_path, wearables=[tmp_path / "wearables"], limits=IngestLimits(max_table_columns=100))
    assert _reasons(result, "signal") == {"too_many_columns": 1}


def test_a_quarantine_message_is_bounded():
    q = Quarantine()
    q.add("ehr", InputError("has columns " + "c," * 1_000_000, reason="bad_row", source="x.csv"))
    assert len(q.entries[0].message) < MAX_MESSAGE + 100


@pytest.mark.parametrize("limit", [0, -1])
def test_limits_are_positive(limit: int):
    with pytest.raises(ValueError):
        IngestLimits(max_frames=limit)
