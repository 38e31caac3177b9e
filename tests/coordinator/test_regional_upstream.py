"""A regional aggregator's link to the central coordinator is a silo's (coordinator.api.client): an
outage of the central coordinator is waited out, and what the region was about to send arrives."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from coordinator.api import federation_pb2 as pb
from coordinator.api.study import StudySpec
from coordinator.regional_node.config import RegionalConfig
from coordinator.regional_node.server import RegionalAggregator
from coordinator.server import Coordinator, CoordinatorConfig
from fedcare.demo import free_port
from tests.coordinator.enrolled import small_spec

REGION = "region-east"


def _until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_regions_answer_waits_out_a_central_coordinator_outage(tmp_path: Path, caplog) -> None:
    port = free_port()
    central_config = CoordinatorConfig(insecure=True, listen=f"127.0.0.1:{port}", state_dir=tmp_path / "central")
    central = Coordinator(central_config).start()
    regional = RegionalAggregator(RegionalConfig(
        name=REGION, upstream=f"127.0.0.1:{port}", listen=f"127.0.0.1:{free_port()}", state_dir=tmp_path / "region",
        insecure=True, max_retries=0, expected_silos=1, poll_wait_s=1.0)).start()
    try:
        regional.region.join("st-mary", ["ehr"], bytes(32))
        study = central.federation.submit_study(small_spec("outage", encryption="none", silos=1).to_json())
        offered = regional.region.next_task("st-mary", 60, frozenset())  # once the region pulled the proposal
        assert (offered.kind, offered.study_id) == (pb.TASK_PROPOSAL, study)
        central.stop(0)
        with caplog.at_level(logging.INFO, logger="coordinator.api.client"):
            regional.region.answer_proposal("st-mary", pb.ProposalAnswer(
                silo="st-mary", study_id=study, accept=True, spec_sha256=StudySpec.from_json(offered.spec_json).sha256(),
                train_samples=10))
            # The region notices the outage (said once in its log) while its answer is ready to go.
            _until(lambda: any("is waiting for the central coordinator" in r.getMessage() for r in caplog.records), 10)
            central = Coordinator(central_config).start()  # back, on the same state
            assert _until(lambda: central.federation.accepted_silos(study) == [REGION], 90), \
                "the region's answer was lost in the outage"
    finally:
        regional.stop(0)
        central.stop(0)
