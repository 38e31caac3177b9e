"""What a silo is asked to do next (PullTask): the first study, oldest first, that has work for it.

Proposal (enrollment, or a late join), keygen (the key holder under CKKS), wrap-key (a silo
holding the study's secret, for late joiners: coordinator/late_keys.py),
screen (the key holder decrypts the screening scalars of ckks-screen), train (the open
round, or an asynchronous study's buffer) and finalize (coordinator/finalizing.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from coordinator.api import federation_pb2 as pb
from coordinator.buffer import UpdateBuffer
from coordinator.enrollment import ENROLLING, Enrollment, may_enroll
from coordinator.finalizing import Finalization
from coordinator.late_keys import LateKeys
from coordinator.outcome import RoundOutcome
from coordinator.store import EnrollmentRow, RoundRow, Store, StudyRow
from coordinator.studies import Studies
from coordinator.versions import ModelVersions

ACTIVE_STATES = (ENROLLING, "keygen", "running", "finalizing")


def first_task(tasks: Iterable[pb.Task | None]) -> pb.Task | None:
    """The first task with work in `tasks` (a silo's task in each study, oldest study first; read
    only as far as needed), else the first TASK_WAIT, which says why, else None. A region picks
    its silos' next task by the same rule."""
    waiting = None
    for task in tasks:
        if task is not None and task.kind != pb.TASK_WAIT:
            return task
        waiting = waiting or task
    return waiting


def proposal(study_id: str, spec_json: str, *, enrolling: bool, answered: bool, deferred: frozenset[str]) -> pb.Task | None:
    """A study that may still take the silo is proposed to it until it answers, unless the silo put
    it off (`deferred`: PullTaskRequest.deferred_studies, whose site has not decided yet)."""
    if enrolling and not answered and study_id not in deferred:
        return pb.Task(kind=pb.TASK_PROPOSAL, study_id=study_id, spec_json=spec_json)
    return None


class Tasks:
    def __init__(self, store: Store, studies: Studies, enrollment: Enrollment, versions: ModelVersions,
                 buffer: UpdateBuffer, finalization: Finalization, late_keys: LateKeys) -> None:
        self.store, self.studies, self.enrollment, self.late_keys = store, studies, enrollment, late_keys
        self.versions, self.buffer, self.finalization = versions, buffer, finalization

    def for_silo(self, silo: str, deferred: frozenset[str]) -> pb.Task | None:
        """The silo's next task, or None; `deferred`: studies whose proposal it has not decided yet.
        With no work but a reason to say (TASK_WAIT with wait_reason), that wait."""
        rows = sorted(self.store.all(StudyRow), key=lambda r: r.created_at)
        return first_task(self._in_study(row, silo, deferred) for row in rows if row.state in ACTIVE_STATES)

    def _in_study(self, row: StudyRow, silo: str, deferred: frozenset[str]) -> pb.Task | None:
        enrollment = self.store.get(EnrollmentRow, row.id, silo)
        offer = proposal(row.id, row.spec_json, enrolling=may_enroll(self.studies, row), answered=enrollment is not None,
                         deferred=deferred)
        if offer is not None:
            return offer
        if row.state == ENROLLING or enrollment is None or not enrollment.accepted:
            return None
        if row.state == "keygen" and row.key_holder == silo and not row.public_context_sha:
            return pb.Task(kind=pb.TASK_KEYGEN, study_id=row.id, participant_keys=self.enrollment.key_recipients(row.id),
                           spec_json=row.spec_json)
        if row.state == "running" and row.public_context_sha:  # late joiners: any silo holding the key wraps it
            late = self.studies.awaiting_key(row.id)
            holders = self.studies.keyed(row.id)
            if self.late_keys.wraps(row.id, silo, waiting=late, holders=holders):
                return pb.Task(kind=pb.TASK_WRAP_KEY, study_id=row.id, round=row.current_round,
                               participant_keys=self.enrollment.key_recipients(row.id, only=late), spec_json=row.spec_json)
            reason = self.late_keys.waits(row.id, silo, holders) if silo in late else None
            if reason is not None:
                return pb.Task(kind=pb.TASK_WAIT, study_id=row.id, wait_reason=reason)
        rnd = self.store.get(RoundRow, row.id, row.current_round)
        if rnd is None or rnd.state != "open" or not self._takes_part(row, rnd, silo):
            return None
        if row.state == "running" and silo == row.key_holder:
            outcome = RoundOutcome.of(rnd.outcome_json)
            if outcome.screen_sha and outcome.screen_values is None:
                return pb.Task(kind=pb.TASK_SCREEN, study_id=row.id, round=rnd.number, nonce=rnd.nonce,
                               spec_json=row.spec_json)
        if row.state == "running" and not self.studies.answered(row.id, rnd.number, silo):
            spec = self.studies.spec(row.id)
            return pb.Task(kind=pb.TASK_TRAIN, study_id=row.id, round=rnd.number, nonce=rnd.nonce,
                           spec_json=row.spec_json, model_version=rnd.number - 1, round_seed=rnd.seed,
                           max_update_bytes=self.versions.max_update_bytes(row.id, spec))
        if row.state == "finalizing":
            return self.finalization.task(row, rnd, silo)
        return None

    def _takes_part(self, row: StudyRow, rnd: RoundRow, silo: str) -> bool:
        """A participant of the open round, or (an asynchronous study) a keyed silo enlisted in its buffer now."""
        if silo in rnd.participant_set():
            return True
        return row.state == "running" and self.buffer.enlist(self.studies.spec(row.id), rnd, silo,
                                                              keyed=silo not in self.studies.awaiting_key(row.id))
