"""The researcher's client: submit a study, follow it, download its results."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.chunks import receive_blob
from coordinator.api.protocol import StudyKind
from coordinator.api.study import StudySpec
from coordinator.api.tensors import decode_tensors


class ResearcherError(Exception):
    pass


# Submission checks the spec and prepares the study's initial model at the coordinator; on a loaded
# machine (the demo's coordinator shares 2 cores with three silos) that took over a minute.
SUBMIT_TIMEOUT_S = 600.0
STATUS_TIMEOUT_S = 30.0


class ResearcherClient:
    def __init__(self, channel: grpc.Channel, *, target: str) -> None:
        self.stub = pb_grpc.FederationStub(channel)
        self.target = target

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise ResearcherError(f"coordinator at {self.target} is unreachable ({e.code().name}); "
                                      "is it running, and is the address right?") from None
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ResearcherError(f"coordinator at {self.target} did not answer in time (DEADLINE_EXCEEDED): it is "
                                      "running but slow or overloaded, or a firewall drops the connection; try again") from None
            raise ResearcherError(f"coordinator refused ({e.code().name}): {e.details()}") from None

    def submit(self, spec: StudySpec) -> str:
        return self._call(self.stub.SubmitStudy, pb.SubmitStudyRequest(spec_json=spec.to_json()),
                          timeout=SUBMIT_TIMEOUT_S).study_id

    def status(self, study_id: str) -> tuple[pb.StudyStatus, dict[str, Any]]:
        st = self._call(self.stub.GetStudyStatus, pb.StudyRef(study_id=study_id), timeout=STATUS_TIMEOUT_S)
        return st, json.loads(st.summary_json or "{}")

    def studies(self) -> pb.StudyList:
        """Every study the coordinator holds, newest first (ListStudies; without summaries)."""
        return self._call(self.stub.ListStudies, pb.ListStudiesRequest(), timeout=STATUS_TIMEOUT_S)

    def results(self, study_id: str, out: Path) -> dict[str, Path]:
        """Write summary.json and the final model (final_model.pt: a state dict of the shared layers); for an
        analysis study, summary.json and the pooled statistics as JSON, CSV and HTML (fedcare.analysis_report)."""
        st, summary = self.status(study_id)
        if st.state != "done":
            raise ResearcherError(f"study {study_id} is {st.state}; results are available once it is done")
        out.mkdir(parents=True, exist_ok=True)
        if summary.get("kind") == StudyKind.ANALYSIS.value:  # pooled statistics, no model
            (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
            from fedcare.analysis_report import write_analysis  # matplotlib, only when there is a report to draw

            return {"summary": out / "summary.json", **write_analysis(summary, out)}
        chunks = self._call(lambda: list(self.stub.FetchBlob(pb.BlobRef(study_id=study_id, kind=pb.BLOB_FINAL_MODEL),
                                                             timeout=600)))
        _, data = receive_blob(chunks, max_bytes=16 << 30)  # receive_blob checked the wire blob's declared SHA-256
        model = write_final_model(decode_tensors(data), out)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        return {"summary": out / "summary.json", "model": model}


def write_final_model(tensors: tuple[list[str], list[np.ndarray]], out: Path) -> Path:
    """Write `final_model.pt` (a state dict) and `final_model.sha256`, the SHA-256 of that file in
    `sha256sum` format, so `sha256sum -c final_model.sha256` checks the file a researcher shares."""
    names, arrays = tensors
    model = out / "final_model.pt"
    import torch  # here, not at import: a CLI error is answered before seconds of torch import

    torch.save({n: torch.from_numpy(np.array(a)) for n, a in zip(names, arrays)}, model)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    (out / "final_model.sha256").write_text(f"{digest}  {model.name}\n")
    return model
