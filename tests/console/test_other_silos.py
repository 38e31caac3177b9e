"""Who else takes part: a proposal names the silos that have accepted the study (Task.other_silos, filled
by the coordinator over real gRPC), the node keeps them with the proposal, the site console shows them."""

from __future__ import annotations

from starlette.testclient import TestClient

from console.site import accounts_of, create_app
from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.study import StudySpec
from silo_node.approval import ApprovalBook

PASSWORD = "correct horse battery"


def _proposal(stub, silo: str) -> pb.Task:
    stub.Join(pb.JoinRequest(silo=silo, modalities=["ehr"]), timeout=10)
    task = stub.PullTask(pb.PullTaskRequest(silo=silo, wait_s=0), timeout=10)
    assert task.kind == pb.TASK_PROPOSAL, task
    return task


def test_a_proposal_names_the_silos_that_accepted_and_the_site_console_shows_them(coordinator_channel, node_config,
                                                                                    sign_in) -> None:
    stub = pb_grpc.FederationStub(coordinator_channel[1])
    spec = StudySpec(name="overview", kind="analysis")
    study = stub.SubmitStudy(pb.SubmitStudyRequest(spec_json=spec.to_json()), timeout=60).study_id
    first = _proposal(stub, "st-anne")
    assert list(first.other_silos) == []
    stub.AnswerProposal(pb.ProposalAnswer(silo="st-anne", study_id=study, accept=True, spec_sha256=spec.sha256()),
                        timeout=10)
    declined = _proposal(stub, "st-paul")
    stub.AnswerProposal(pb.ProposalAnswer(silo="st-paul", study_id=study, accept=False, reason="no capacity",
                                          spec_sha256=spec.sha256()), timeout=10)
    assert list(declined.other_silos) == ["st-anne"]
    third = _proposal(stub, "st-mary")
    assert list(third.other_silos) == ["st-anne"]  # a silo that declined is not named

    ApprovalBook(node_config.state_dir).record_proposal(study, spec, others=list(third.other_silos))
    accounts_of(node_config).add("it-admin", PASSWORD, "site-admin")
    client = TestClient(create_app(node_config), client=("127.0.0.1", 50000))
    sign_in(client, "it-admin")
    page = client.get(f"/proposals/{study}").text
    assert "Who else takes part</strong>: st-anne had accepted" in page and "Reads</strong> the ehr, image, signal data" in page
    assert "no other hospital had accepted" in client.get("/proposals/hf-risk-1").text
