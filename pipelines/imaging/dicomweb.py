"""DICOM instances from a PACS over DICOMweb (PS3.18): QIDO-RS to list, WADO-RS to fetch.

Instances are listed study by study (QIDO-RS `/studies`, then `/studies/{uid}/instances`)
and fetched when ingestion reads them, a few at a time by its threads (`pipelines.parallel.fetch_ordered`),
each thread with its own HTTP session, so memory does not grow with the archive. Each becomes a `DicomInput` whose bytes are a Part-10 file, so the same header
reading, de-identification, quarantine and cache apply as for files.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import pydicom
from dicomweb_client.api import DICOMwebClient

from .dicom import DicomInput
from ..errors import DicomError

log = logging.getLogger(__name__)
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
PAGE = 500


def _value(item: dict, tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def _fetch(client: DICOMwebClient, study: str, series: str, sop: str, source: str) -> bytes:
    try:
        ds = client.retrieve_instance(study, series, sop)
    except Exception as e:  # HTTP and decoding errors of the PACS: this instance is quarantined, not the run
        raise OSError(f"WADO-RS retrieval failed ({type(e).__name__}: {e})") from None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    return buf.getvalue()


def dicomweb_inputs(url: str) -> Iterator[DicomInput]:
    """Every instance of every study at the DICOMweb base `url` (e.g. http://pacs:8042/dicom-web)."""
    client = DICOMwebClient(url=url)
    sessions = threading.local()

    def thread_client() -> DICOMwebClient:  # a requests session is not documented as thread-safe: one per thread
        if not hasattr(sessions, "client"):
            sessions.client = DICOMwebClient(url=url)
        return sessions.client

    offset = 0
    while True:
        try:
            studies = client.search_for_studies(offset=offset, limit=PAGE)
        except Exception as e:
            raise DicomError(f"QIDO-RS search for studies failed ({type(e).__name__}: {e}); expected a DICOMweb "
                             "service. Check the URL (it usually ends in /dicom-web) and that the PACS is up",
                             reason="pacs_unreachable", source=url) from None
        for study in studies:
            study_uid = _value(study, STUDY_UID)
            if study_uid is None:
                continue
            for inst in client.search_for_instances(study_instance_uid=study_uid):
                series_uid, sop_uid = _value(inst, SERIES_UID), _value(inst, SOP_UID)
                if series_uid and sop_uid:
                    source = f"{url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
                    yield DicomInput(source, lambda a=(study_uid, series_uid, sop_uid, source): _fetch(thread_client(), *a))
        if len(studies) < PAGE:
            return
        offset += PAGE
