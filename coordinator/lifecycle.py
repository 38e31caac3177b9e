"""A study's life: submitted -> enrolling -> (keygen, under CKKS) -> running -> finalizing -> done (or failed).

`tick` moves every study as far as its state allows: it starts a study once enough silos
accepted, opens round 1 once the key holder's keys are stored, closes a round once every
participant answered (or its deadline passed) and opens the next, reopens a round that
missed its quorum (at most MAX_ROUND_RETRIES times) or ends the study early, and hands the
finalizing round to coordinator/finalizing.py. The caller holds the Federation's lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable

from compliance.errors import PHIFieldError
from compliance.phi import check_no_phi
from coordinator.aggregation import AggregationError
from coordinator.aggregation.state import StudyAggregation
from coordinator.analysis import pooled_statistics
from coordinator.api.protocol import TENSORS, ProtocolError, StudyKind, check_study_id, study_id_for
from coordinator.api.server_step import ServerStepError
from coordinator.api.study import SpecError, StudySpec
from coordinator.blobs import BlobStore
from coordinator.buffer import UpdateBuffer, is_async
from coordinator.enrollment import ENROLLING
from coordinator.errors import InvalidInput
from coordinator.finalizing import Finalization
from coordinator.model_layout import build_initial_model
from coordinator.outcome import RoundOutcome
from coordinator.release import plateau
from coordinator.rounds import RoundAggregator
from coordinator.selection import choose_participants
from coordinator.store import EnrollmentRow, ModelVersionRow, RoundRow, SiloRow, Store, StudyRow, UpdateRow
from coordinator.studies import Studies
from coordinator.versions import ModelVersions
from privacy.errors import HEError

log = logging.getLogger(__name__)

MAX_ROUND_RETRIES = 3
RECENTLY_SEEN_S = 30  # a silo seen this recently is waited for at enrollment (unless expected_silos is set)


class StudyLifecycle:
    def __init__(self, store: Store, blobs: BlobStore, studies: Studies, *, versions: ModelVersions,
                 rounds: RoundAggregator, buffer: UpdateBuffer, finalization: Finalization,
                 audit: Callable[..., None], clock: Callable[[], float]) -> None:
        self.store, self.blobs, self.studies = store, blobs, studies
        self.versions, self.rounds, self.buffer, self.finalization = versions, rounds, buffer, finalization
        self.audit, self.clock = audit, clock

    # --- submission --------------------------------------------------------------------------
    @staticmethod
    def validate(spec_json: str) -> tuple[StudySpec, StudyAggregation, str]:
        """Validate the spec (fields, the protocol's compatibility rules, the study name), build its
        rule and server optimiser once, so that a bad combination is refused now, naming the field,
        and not when round 1 closes after the silos spent privacy budget."""
        try:
            spec = StudySpec.from_json(spec_json)
            check_no_phi({"study": spec.name})
            aggregation = StudyAggregation.for_spec(spec)
            study_id = check_study_id(study_id_for(spec.name))
        except SpecError as e:
            raise InvalidInput(str(e)) from None
        except PHIFieldError as e:
            raise InvalidInput(f"name: {e}; choose a study name without patient identifiers") from None
        except AggregationError as e:
            raise InvalidInput(f"study spec: aggregation: {e}") from None
        except ProtocolError as e:
            raise InvalidInput(f"study spec: name: {e}") from None
        return spec, aggregation, study_id

    def initial_model(self, spec: StudySpec) -> str:
        """Version 0's blob; its chunks are ready before the first silo asks (unless only its hash travels)."""
        return self.blobs.put(build_initial_model(spec), serve=spec.protocol.downlink_encoding is None)

    def submit(self, study_id: str, spec: StudySpec, aggregation: StudyAggregation, initial_sha: str) -> None:
        """Store the validated study and its version 0; it starts enrolling."""
        self.store.add(
            StudyRow(id=study_id, name=spec.name, spec_json=spec.to_json(), spec_sha256=spec.sha256(),
                     state=ENROLLING, created_at=self.clock(), current_round=0),
            ModelVersionRow(study_id=study_id, version=0, blob_sha=initial_sha, encoding=TENSORS, base_version=None),
        )
        self.studies.adopt(study_id, spec)
        self.rounds.adopt(study_id, aggregation)
        self.versions.layout(study_id)  # read once now, not by the first update of round 1
        self.audit("study_received", study=study_id, spec_sha256=spec.sha256(), rounds=spec.training.rounds)
        log.info("study %s submitted (%d rounds, %s)", study_id, spec.training.rounds, spec.privacy.encryption)

    # --- state transitions -------------------------------------------------------------------
    def tick(self) -> None:
        for row in self.store.all(StudyRow):
            if row.state == ENROLLING:
                self._maybe_start(row)
            elif row.state == "keygen" and row.public_context_sha:
                self._open_round(row, 1, self.studies.accepted(row.id))  # the key holder's keys are stored
            elif row.state in ("running", "finalizing"):
                self._maybe_close_round(row)

    def _maybe_start(self, row: StudyRow) -> None:
        spec = self.studies.spec(row.id)
        accepted = self.studies.accepted(row.id)
        answered = self.store.column(EnrollmentRow.silo, study_id=row.id)
        t = spec.training
        enough = len(accepted) >= t.min_silos
        waited_out = self.clock() - row.created_at >= t.enrollment_timeout_s
        if t.expected_silos is not None:  # wait for the silos the researcher expects (a slow one too)
            ready = len(accepted) >= t.expected_silos or (enough and (len(answered) >= t.expected_silos or waited_out))
        else:
            recent = {s.name for s in self.store.all(SiloRow) if self.clock() - s.last_seen < RECENTLY_SEEN_S}
            ready = enough and (recent <= answered or waited_out)
        if not ready:
            return
        if spec.protocol.encrypted and spec.kind is StudyKind.TRAINING:
            row.state, row.key_holder = "keygen", accepted[0]
            self.store.add(row)
            log.info("study %s: %d silos enrolled; %s generates the CKKS keys", row.id, len(accepted), accepted[0])
        else:
            self._open_round(row, 1, accepted)

    def _open_round(self, row: StudyRow, number: int, participants: list[str], *, finalizing: bool | None = None,
                    outcome: RoundOutcome | None = None, closing: RoundRow | None = None) -> None:
        """Open round `number`; the finalizing round evaluates version number - 1 and releases it."""
        spec = self.studies.spec(row.id)
        finalizing = number > spec.training.rounds if finalizing is None else finalizing
        if not finalizing:  # partial participation: the selector's pick (all silos unless silos_per_round)
            t = spec.training
            participants = choose_participants(self.store, row.id, number, participants, silos_per_round=t.silos_per_round,
                                               min_silos=t.min_silos, max_rounds_unselected=t.max_rounds_unselected)
        row.state = "finalizing" if finalizing else "running"
        row.current_round = number
        # The round seed (shuffling, DP noise, random-k coordinates at the silos) follows from the
        # study seed, so a study is reproducible; the nonce is random, so a replay is refused.
        attempt = outcome.retries if outcome is not None else 0
        seed_src = f"{spec.training.seed}:{number}:{attempt}".encode()
        rnd = RoundRow(study_id=row.id, number=number, state="open", nonce=secrets.token_hex(16),
                       seed=int.from_bytes(hashlib.sha256(seed_src).digest()[:4], "big") >> 1, participants_json=json.dumps(participants),
                       opened_at=self.clock(), deadline=self.clock() + spec.training.round_timeout_s,
                       outcome_json=(outcome or RoundOutcome()).to_json())
        # Closing the last round and opening this one is one transaction: a crash between them
        # would otherwise leave the study with no open round.
        newcomers = self._first_time(row.id, number, participants) if number > 1 and not finalizing else []
        self.store.add(row, *([closing] if closing is not None else []), rnd)
        for silo in newcomers:
            self.audit("silo_joined", study=row.id, silo=silo, round=number)
            log.info("study %s: %s takes part from round %d", row.id, silo, number)
        log.info("study %s: %s %d with %s", row.id, "finalizing version" if finalizing else "round",
                 number - 1 if finalizing else number, participants)

    def _first_time(self, study_id: str, number: int, participants: list[str]) -> list[str]:
        """The participants of round `number` that took part in no earlier round."""
        earlier: set[str] = set()
        for r in self.store.all(RoundRow, study_id=study_id):
            if r.number <= number:  # (round `number` itself: an earlier attempt of it, reopened)
                earlier.update(json.loads(r.participants_json))
        return [s for s in participants if s not in earlier]

    def _maybe_close_round(self, row: StudyRow) -> None:
        rnd = self.store.get(RoundRow, row.id, row.current_round)
        if rnd is None or rnd.state != "open":
            return
        spec = self.studies.spec(row.id)
        timed_out = self.clock() >= rnd.deadline
        if row.state == "finalizing":
            failure = self.finalization.close(row, rnd)
            if failure is not None:
                self.fail(row, failure)
            return
        # An asynchronous buffer also waits for silos still training on an older version (no participants of it).
        awaited = self.buffer.awaited(rnd, self.studies.keyed(row.id)) if is_async(spec) else rnd.participant_set()
        # Every message settles the study: at N silos, N checks a round. Counted first (no row read), the
        # answers are read as a set only once there may be one from every participant.
        if not (timed_out or is_async(spec)) and self.studies.answer_count(row.id, rnd.number) < len(awaited):
            return
        answered = self.studies.answered_silos(row.id, rnd.number)
        all_answered = all(s in answered for s in awaited)
        if not (all_answered or timed_out or is_async(spec)):
            return  # the round's updates are read once it may close
        updates = self.store.all(UpdateRow, study_id=row.id, round=rnd.number)
        all_answered = all_answered or self.buffer.full(spec, updates)
        if not (all_answered or timed_out):
            return
        if spec.kind is StudyKind.ANALYSIS:
            self._close_analysis(row, rnd, spec, updates)
            return
        if len(updates) < spec.training.min_silos:
            self._quorum_missed(row, rnd, spec, updates, all_answered=all_answered)
            return
        if spec.protocol.screened and not self._screened(row, rnd, spec, updates):
            return  # waiting for the key holder to decrypt the screening scalars
        try:
            outcome = self.rounds.close(row, rnd, spec, updates)
        except (AggregationError, InvalidInput, HEError, ServerStepError) as e:
            # A round that cannot be aggregated (e.g. too few updates for the rule's f) ends the
            # study with the reason, instead of failing at every deadline check.
            self.fail(row, f"round {rnd.number} could not be aggregated: {e}")
            return
        rnd.state, rnd.closed_at = "closed", self.clock()
        rnd.outcome_json = outcome.to_json()
        stop = plateau(self.store, row.id, spec, evaluated_up_to=rnd.number - 1)
        if stop is not None and rnd.number < spec.training.rounds:
            log.info("study %s: %s", row.id, stop)
            self._open_round(row, rnd.number + 1, self._round_candidates(row, rnd), finalizing=True,
                             outcome=RoundOutcome(early_stop=stop), closing=rnd)
            return
        self._open_round(row, rnd.number + 1, self._round_candidates(row, rnd), closing=rnd)

    def _quorum_missed(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, updates: list[UpdateRow], *,
                       all_answered: bool) -> None:
        """Fewer updates than training.min_silos: the round again with a fresh nonce (updates for the
        failed attempt are then refused), or, once everyone answered or the retries are spent, the
        last aggregated version becomes the final one."""
        retries = RoundOutcome.of(rnd.outcome_json).retries
        reason = f"round {rnd.number}: {len(updates)} updates, quorum is {spec.training.min_silos}"
        participants_now = self._round_candidates(row, rnd)
        if all_answered or retries >= MAX_ROUND_RETRIES:
            log.warning("study %s: %s; finishing the study early", row.id, reason)
            self._open_round(row, rnd.number, participants_now, finalizing=True, outcome=RoundOutcome(early_stop=reason))
            return
        log.warning("study %s: %s at the deadline; reopening the round", row.id, reason)
        with self.store.session.begin() as s:
            for u in updates:
                s.delete(s.get(UpdateRow, (u.study_id, u.round, u.silo)))
        self.rounds.forget(row.id, rnd.number)
        self._open_round(row, rnd.number, participants_now, outcome=RoundOutcome(retries=retries + 1, last_failure=reason))

    def _close_analysis(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, updates: list[UpdateRow]) -> None:
        """An analysis study's one round: with a quorum of releases, pool them and finish (coordinator/analysis.py)."""
        if len(updates) < spec.training.min_silos:
            self.fail(row, f"analysis: {len(updates)} silos released statistics, the quorum is "
                           f"{spec.training.min_silos} (training.min_silos); no pooled figures are released")
            return
        pooled = pooled_statistics(spec, updates, self.blobs.get)
        rnd.state, rnd.closed_at = "closed", self.clock()
        row.state = "done"
        self.store.add(rnd, row)
        self.audit("statistics_released", study=row.id, silos=pooled.silos,
                   suppressed={s: len(v) for s, v in pooled.suppressed.items()})
        log.info("study %s: statistics of %d patients pooled from %s", row.id, pooled.patients.value, pooled.silos)

    def _round_candidates(self, row: StudyRow, closing: RoundRow) -> list[str]:
        """Who is asked to the round after `closing`: the accepted silos, under CKKS only those the
        secret is wrapped for (a late joiner once the key holder wrapped it), less those gone away:
        a silo that neither answered `closing` nor asked for work since it opened is dropped from
        the quorum after that deadline, and is back at the next round once it asks again. If that
        leaves fewer than min_silos, everyone is asked (the round then waits for its deadline)."""
        keyed = self.buffer.offered(self.studies.spec(row.id), row.id, self.studies.keyed(row.id))  # async: budget left
        present = []
        for s in keyed:
            seen = self.store.get(SiloRow, s)
            if self.studies.answered(row.id, closing.number, s) or (seen is not None and seen.last_seen >= closing.opened_at):
                present.append(s)
            else:
                log.info("study %s: %s has not been seen since round %d opened; not asked to the next round until it "
                         "returns", row.id, s, closing.number)
        return present if len(present) >= self.studies.spec(row.id).training.min_silos else keyed

    def _screened(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, updates: list[UpdateRow]) -> bool:
        """Under ckks-screen: compute the encrypted scalars once, then wait for their decryption."""
        outcome = RoundOutcome.of(rnd.outcome_json)
        if outcome.screen_values is not None:
            return True
        if outcome.screen_sha is None:
            outcome.screen_sha = self.blobs.put(self.rounds.screening_scalars(row, spec, updates))
            outcome.screen_silos = sorted(u.silo for u in updates)
            rnd.outcome_json = outcome.to_json()
            self.store.add(rnd)
            log.info("study %s round %d: screening scalars ready for %s", row.id, rnd.number, row.key_holder)
        return False

    def fail(self, row: StudyRow, reason: str) -> None:
        row.state, row.error = "failed", reason
        self.store.add(row)
        self.audit("study_failed", study=row.id, reason=reason[:500])
        log.error("study %s failed: %s", row.id, reason)
