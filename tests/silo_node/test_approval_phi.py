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
