"""The finalizing round: every participant evaluates the last version, the study releases one
version (the best by its selection metric, or the last: coordinator/release.py) and is done.

Under CKKS the coordinator cannot decrypt any version, so the key holder, once the others have
reported their metrics of the last version (or half the round's time has passed), publishes the
version to release and evaluates that one instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from coordinator.api import federation_pb2 as pb
from coordinator.api.study import StudySpec
from coordinator.outcome import Release, RoundOutcome
from coordinator.release import choose_release
from coordinator.store import MetricsRow, RoundRow, Store, StudyRow
from coordinator.versions import ModelVersions

log = logging.getLogger(__name__)


class Finalization:
    def __init__(self, store: Store, versions: ModelVersions, *, spec: Callable[[str], StudySpec],
                 audit: Callable[..., None], clock: Callable[[], float]) -> None:
        self.store, self.versions, self.spec, self.audit, self.clock = store, versions, spec, audit, clock

    def task(self, row: StudyRow, rnd: RoundRow, silo: str) -> pb.Task | None:
        """The silo's task in the finalizing round, if it has one now."""
        final_version = rnd.number - 1
        if self.spec(row.id).protocol.encrypted and silo == row.key_holder:
            if row.final_model_sha:
                return None
            participants = json.loads(rnd.participants_json)
            others = [s for s in participants if s != silo]
            reported = [s for s in others if self.store.get(MetricsRow, row.id, final_version, s)]
            if len(reported) < len(others) and not (self.clock() >= rnd.deadline - self._publish_margin(row)):
                return None  # the release is chosen once the others' metrics of the last version are in
            release = self.release(row, rnd)
            return pb.Task(kind=pb.TASK_FINALIZE, study_id=row.id, round=rnd.number, nonce=rnd.nonce,
                           spec_json=row.spec_json, model_version=release.version, publish_model=True)
        if self.store.get(MetricsRow, row.id, final_version, silo) is None:
            return pb.Task(kind=pb.TASK_FINALIZE, study_id=row.id, round=rnd.number, nonce=rnd.nonce,
                           spec_json=row.spec_json, model_version=final_version, publish_model=False)
        return None

    def _publish_margin(self, row: StudyRow) -> float:
        """How long before the finalizing deadline the key holder publishes without the stragglers."""
        return self.spec(row.id).training.round_timeout_s / 2

    def release(self, row: StudyRow, rnd: RoundRow) -> Release:
        """The version this study releases, chosen once (kept in the finalizing round's outcome)."""
        outcome = RoundOutcome.of(rnd.outcome_json)
        if outcome.release is None:
            outcome.release = choose_release(self.store, row.id, self.spec(row.id), rnd.number - 1)
            rnd.outcome_json = outcome.to_json()
            self.store.add(rnd)
            log.info("study %s releases version %d: %s", row.id, outcome.release.version, outcome.release.reason)
        return outcome.release

    def close(self, row: StudyRow, rnd: RoundRow) -> str | None:
        """Release and finish once every participant reported (at the deadline: once some did); the
        reason the study fails when the deadline passes without a published final model, else None."""
        encrypted = self.spec(row.id).protocol.encrypted
        participants = rnd.participant_set()
        timed_out = self.clock() >= rnd.deadline
        # Every report settles the study: counted first (no row read), as in lifecycle._maybe_close_round. Under
        # CKKS the key holder's answer is the published model and its evaluation of it (maybe another version).
        reports = self.store.count(MetricsRow, study_id=row.id, model_version=rnd.number - 1)
        if not timed_out and reports + int(encrypted) < len(participants):
            return None
        evaluated = self.store.column(MetricsRow.silo, study_id=row.id, model_version=rnd.number - 1)
        reported = [s for s in participants if s in evaluated
                    or (encrypted and s == row.key_holder and RoundOutcome.of(rnd.outcome_json).release_evaluated)]
        needs_model = encrypted and not row.final_model_sha
        if (len(reported) == len(participants) or (timed_out and reported)) and not needs_model:
            release = self.release(row, rnd)
            if not encrypted:
                row.final_model_sha = self.versions.sha(row.id, release.version)
            rnd.state, rnd.closed_at = "closed", self.clock()
            row.state = "done"
            self.store.add(rnd, row)
            self.audit("model_released", study=row.id, version=release.version, model_sha256=row.final_model_sha,
                       metric=release.metric, value=release.value)
            log.info("study %s: done; released version %d (%s)", row.id, release.version, release.reason)
        elif timed_out:
            return "finalization timed out without a published final model"
        return None
