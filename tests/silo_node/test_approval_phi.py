"""A decision whose reason holds a patient identifier is refused before it is stored (#16 item 4):
before, the decision was written and the PHI guard fired later, inside the audit append."""

from __future__ import annotations

from pathlib import Path

import pytest

from compliance import PHIFieldError
from coordinator.api.study import StudySpec
from silo_node.approval import ApprovalBook


def test_a_reason_with_an_ssn_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    book = ApprovalBook(tmp_path)
    book.record_proposal("sepsis-1", StudySpec(name="sepsis"))
    with pytest.raises(PHIFieldError, match="'reason' looks like protected health information.*nothing was stored"):
        book.decide("sepsis-1", approved=False, reason="patient 123-45-6789 opted out")
    assert book.decision("sepsis-1") is None
    assert book.decide("sepsis-1", approved=False, reason="outside our consent scope").reason == "outside our consent scope"


def test_listing_proposals_of_a_node_not_yet_started_leaves_no_state(tmp_path) -> None:
    """`fedcare silo studies` may run before the node's first start; it must not create node state, or the node
    then refuses to start (state without an audit log)."""
    from silo_node.approval import ApprovalBook

    book = ApprovalBook(tmp_path / "state")
    assert book.proposals() == [] and book.decision("some-study") is None
    assert not (tmp_path / "state").exists()
