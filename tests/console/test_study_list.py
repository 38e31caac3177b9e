"""The coordinator's ListStudies over real gRPC, and the researcher console's study list built from it:
studies submitted elsewhere (another console, the CLI) are listed too, newest first."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from console.audit_view import AuditSources
from console.researcher import accounts_in, create_app
from coordinator.api.study import StudySpec
from fedcare.researcher import ResearcherClient

PASSWORD = "correct horse battery"


@pytest.fixture
def researcher(coordinator_channel):
    target, channel = coordinator_channel
    return ResearcherClient(channel, target=target)


def test_list_studies_names_every_study_newest_first(researcher, tmp_path, sign_in) -> None:
    first = researcher.submit(StudySpec(name="overview-a", kind="analysis"))
    second = researcher.submit(StudySpec(name="overview-b", kind="analysis"))
    listed = researcher.studies()
    assert [s.study_id for s in listed.studies] == [second, first] and not listed.truncated
    assert [s.state for s in listed.studies] == ["enrolling", "enrolling"] and not listed.studies[0].summary_json

    # a console that submitted nothing lists both, from the coordinator
    console_dir = tmp_path / "console"
    accounts_in(console_dir).add("dr-who", PASSWORD, "researcher")
    app = create_app(researcher, state_dir=console_dir, coordinator=researcher.target, audit_sources=AuditSources(logs=[]))
    client = TestClient(app)
    sign_in(client, "dr-who")
    page = client.get("/").text
    assert page.index(f"/studies/{second}") < page.index(f"/studies/{first}") and "overview-a" in page
    assert "could not be read" not in page
