"""A real Orthanc PACS with its DICOMweb plugin: upload studies, ingest them back over QIDO-RS/WADO-RS."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from coordinator.api.study import CohortSpec
from pipelines.deid import Deidentifier
from pipelines.ingest import ingest_silo
from pipelines.parallel import Workers

from .fixtures import patient, write_bundle

KEY = b"fedcare-test-pseudonym-key-32byt"
PLUGINS = Path("/usr/share/orthanc/plugins")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def orthanc(tmp_path: Path):
    binary = shutil.which("Orthanc")
    if binary is None:
        pytest.skip("the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does it)")
    http = _free_port()
    config = {"Name": "fedcare-test", "HttpPort": http, "DicomPort": _free_port(), "DicomServerEnabled": False,
              "StorageDirectory": str(tmp_path / "storage"), "IndexDirectory": str(tmp_path / "storage"),
              "Plugins": [str(PLUGINS)], "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("w")
    proc = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(f"{base}/dicom-web/studies", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"Orthanc exited with {proc.returncode}: {(tmp_path / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.2)
        else:
            pytest.fail("Orthanc did not answer on its DICOMweb root within 30 s")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_orthanc_round_trip(orthanc: str, tmp_path: Path):
    names = ["CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle.dcm"]
    for name in names:
        req = urllib.request.Request(f"{orthanc}/instances", data=Path(get_testdata_file(name)).read_bytes(),
                                     headers={"Content-Type": "application/dicom"}, method="POST")
        assert json.loads(urllib.request.urlopen(req, timeout=10).read())["Status"] in ("Success", "AlreadyStored")
    fhir = tmp_path / "fhir"
    fhir.mkdir()
    for i, mrn in enumerate(["1CT1", "4MR1", "ID1"]):
        write_bundle(fhir / f"{i}.json", [patient(f"p{i}", mrn)])
    result = ingest_silo(fhir=[fhir], dicom=[], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY,
                         dicomweb=[f"{orthanc}/dicom-web"], cache_dir=tmp_path / "cache")
    rep = result.report.modalities["image"]
    assert len(result.quarantine) == 0, result.quarantine.entries
    # MR_small and its JPEG 2000 copy share SOP Instance UID: Orthanc keeps one of them
    assert rep.inputs_read == 3 and rep.patients == 3 and result.dataset.modality_counts()["image"] == 3
    pids = {Deidentifier(KEY).pseudonym(m) for m in ("1CT1", "4MR1", "ID1")}
    assert pids == set(result.dataset.pseudonyms)
    # the instances were fetched by threads (Workers.fetches); fetched one at a time, the same images and counts
    one_by_one = ingest_silo(fhir=[fhir], dicom=[], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY,
                             dicomweb=[f"{orthanc}/dicom-web"], workers=Workers(processes=1, fetches=1))
    assert one_by_one.report.model_dump() == result.report.model_dump()
    assert (one_by_one.dataset.image == result.dataset.image).all()
    again = ingest_silo(fhir=[fhir], dicom=[], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY,
                        dicomweb=[f"{orthanc}/dicom-web"], cache_dir=tmp_path / "cache")
    assert again.report.modalities["image"].parsed == 0 and (again.dataset.image == result.dataset.image).all()
