"""What every part of the Federation reads about a study: its row, its parsed spec, who takes part.

A spec is parsed once per study (at submission, or on first use after a restart) and kept.
Under CKKS a silo can train only once the study's secret is wrapped for it: `keyed` silos,
as opposed to accepted ones still `awaiting_key` (late joiners before the key holder wraps it).
"""

from __future__ import annotations

from coordinator.api.study import StudySpec
from coordinator.errors import NotFound
from coordinator.store import EnrollmentRow, SkipRow, Store, StudyRow, UpdateRow


class Studies:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._specs: dict[str, StudySpec] = {}

    def row(self, study_id: str) -> StudyRow:
        row = self.store.get(StudyRow, study_id)
        if row is None:
            raise NotFound(f"unknown study {study_id!r}")
        return row

    def spec(self, study_id: str) -> StudySpec:
        if study_id not in self._specs:
            self._specs[study_id] = StudySpec.from_json(self.row(study_id).spec_json)
        return self._specs[study_id]

    def adopt(self, study_id: str, spec: StudySpec) -> None:
        """Keep the spec just validated at submission (not parsed again)."""
        self._specs[study_id] = spec

    def accepted(self, study_id: str) -> list[str]:
        return sorted(self.store.column(EnrollmentRow.silo, study_id=study_id, accepted=True))

    def awaiting_key(self, study_id: str) -> list[str]:
        """Under CKKS once the keys exist: the accepted silos the secret was not yet wrapped for (late joiners)."""
        if not self.spec(study_id).protocol.encrypted:
            return []
        return sorted(e.silo for e in self.store.all(EnrollmentRow, study_id=study_id, accepted=True)
                      if not e.wrapped_key_sha)

    def keyed(self, study_id: str) -> list[str]:
        """The accepted silos that can train: under CKKS, those the study's secret is wrapped for."""
        awaiting = set(self.awaiting_key(study_id))
        return [s for s in self.accepted(study_id) if s not in awaiting]

    def answered_silos(self, study_id: str, round_: int) -> set[str]:
        """The silos that sent their update for the round or said they skip it (two queries for any number)."""
        where = {"study_id": study_id, "round": round_}
        return self.store.column(UpdateRow.silo, **where) | self.store.column(SkipRow.silo, **where)

    def answer_count(self, study_id: str, round_: int) -> int:
        """How many updates and skips the round holds, counted by the store: fewer than its participants, and
        someone has not answered yet (what every message's check asks, without reading N rows each time)."""
        where = {"study_id": study_id, "round": round_}
        return self.store.count(UpdateRow, **where) + self.store.count(SkipRow, **where)

    def answered(self, study_id: str, round_: int, silo: str) -> bool:
        """The silo sent its update for the round, or said it skips it."""
        return (self.store.get(UpdateRow, study_id, round_, silo) is not None
                or self.store.get(SkipRow, study_id, round_, silo) is not None)
