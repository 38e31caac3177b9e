"""What the coordinator tells about its studies: to a researcher or auditor one study's status
(GetStudyStatus) and the list of all of them, newest first (ListStudies); to a silo proposed a
study, which other silos have accepted it (Task.other_silos), and nothing more about them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.api import federation_pb2 as pb
from coordinator.store import StudyRow
from coordinator.summary import build_summary

if TYPE_CHECKING:
    from coordinator.federation import Federation

DEFAULT_LIMIT = 500  # a ListStudies without a limit
MAX_LIMIT = 5000


def study_status(fed: "Federation", row: StudyRow, *, with_summary: bool) -> pb.StudyStatus:
    """A study's state, round (capped at its rounds while finalizing) and accepted silos; its summary.json on request."""
    spec = fed.spec(row.id)
    return pb.StudyStatus(
        study_id=row.id, name=row.name, state=row.state, current_round=min(row.current_round, spec.training.rounds),
        rounds=spec.training.rounds, silos=fed.accepted_silos(row.id),
        summary_json=build_summary(fed, row.id) if with_summary else "", error=row.error or "")


def list_studies(fed: "Federation", limit: int = 0) -> pb.StudyList:
    """Every study, newest first, at most `limit` (0: DEFAULT_LIMIT; never above MAX_LIMIT), without summaries."""
    limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
    rows = sorted(fed.store.all(StudyRow), key=lambda r: r.created_at, reverse=True)
    return pb.StudyList(studies=[study_status(fed, r, with_summary=False) for r in rows[:limit]],
                        truncated=len(rows) > limit)


def other_participants(fed: "Federation", study_id: str, silo: str) -> list[str]:
    """The silos that have accepted `study_id`, other than `silo`: names only (a region counts as one)."""
    return [s for s in fed.accepted_silos(study_id) if s != silo]
