"""`fedcare study status` shows remote names as text (#16 item 8): rich markup in a study
name neither crashes it nor styles the output, and terminal escape sequences never reach
the researcher's terminal raw."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc

from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec
from coordinator.server import Coordinator, CoordinatorConfig
from coordinator.store import StudyRow

HOSTILE = "[bold red]x[/] [/oops] \x1b]0;pwned\x07\x1b[2J done"


def test_markup_and_escapes_in_a_study_name_are_shown_as_text(tmp_path: Path) -> None:
    coordinator = Coordinator(CoordinatorConfig(insecure=True, listen="127.0.0.1:0", state_dir=tmp_path / "c")).start()
    try:
        stub = pb_grpc.FederationStub(grpc.insecure_channel(f"127.0.0.1:{coordinator.port}"))
        spec = StudySpec(name="escapes", training=TrainingSpec(rounds=1), privacy=PrivacySpec(dp=False, encryption="none"))
        study = stub.SubmitStudy(pb.SubmitStudyRequest(spec_json=spec.to_json()), timeout=60).study_id
        # The name as an older coordinator (or a future name rule's gap) may hold it.
        row = coordinator.store.get(StudyRow, study)
        row.name, row.error = HOSTILE, HOSTILE
        coordinator.store.add(row)
        proc = subprocess.run([sys.executable, "-m", "fedcare", "study", "--insecure", "status", study,
                               "--coordinator", f"127.0.0.1:{coordinator.port}"],
                              capture_output=True, text=True, timeout=120)
    finally:
        coordinator.stop(0)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "[bold red]x[/] [/oops]" in proc.stdout  # shown, not interpreted
    assert "\\x1b]0;pwned\\x07" in proc.stdout  # visible as an escape, so the reader sees it was there
