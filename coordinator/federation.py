"""The coordinator's state machine: studies, enrollment, rounds, tasks for silos.

A study goes enrolling -> (keygen, under CKKS) -> running -> finalizing -> done. Silos
dial out and long-poll `next_task`; every state change notifies the waiting polls, so a
silo learns about new work as soon as it exists (no polling delay). One lock orders all
state changes; everything is persisted in the Store before the lock is released, so a
restarted coordinator resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from compliance.errors import PHIFieldError
from compliance.phi import check_no_phi
from coordinator.aggregation import AggregationError
from coordinator.aggregation.state import StudyAggregation
from coordinator.analysis import parse_release, pooled_statistics
from coordinator.api import federation_pb2 as pb
from coordinator.api.protocol import (
    TENSORS,
    ProtocolError,
    StudyKind,
    check_screening_values,
    check_study_id,
    decode_screening_scalars,
    study_id_for,
)
from coordinator.api.server_step import ServerStepError
from coordinator.api.study import SpecError, StudySpec
from coordinator.api.tensors import TensorFormatError, decode_tensors
from coordinator.blobs import BlobStore, Incoming
from coordinator.buffer import UpdateBuffer, is_async, staleness_weight
from coordinator.errors import InvalidInput, NotFound, Refused
from privacy.errors import HEError
from coordinator.key_recipients import (
    check_member_keys,
    check_silo_name,
    member_keys_from_json,
    member_keys_to_json,
    recipients,
)
from coordinator.model_layout import build_initial_model
from coordinator.long_poll import long_poll
from coordinator.keystore import KeyStore
from coordinator.late_keys import LateKeys
from coordinator.finalizing import Finalization
from coordinator.outcome import RoundOutcome
from coordinator.release import plateau
from coordinator.rounds import RoundAggregator
from coordinator.versions import ModelVersions
from coordinator.selection import choose_participants
from coordinator.store import (
    EnrollmentRow,
    MetricsRow,
    ModelVersionRow,
    RoundRow,
    SiloRow,
    SkipRow,
    Store,
    StudyRow,
    UpdateRow,
    dumps,
)

log = logging.getLogger(__name__)

ACTIVE_STATES = ("enrolling", "keygen", "running", "finalizing")
LATE_JOIN_STATES = ("keygen", "running")  # an acceptance then joins the next round if training.late_join
MAX_ROUND_RETRIES = 3
AuditFn = Callable[..., None]


def kind_name(kind: int) -> str:
    return pb.BlobKind.Name(kind) if kind in pb.BlobKind.values() else f"unknown kind ({kind})"


def _no_audit(event: str, **fields: Any) -> None:
    return None


class Federation:
    def __init__(self, store: Store, blobs: BlobStore, *, audit: AuditFn = _no_audit, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.blobs = blobs
        self.audit = audit
        self.clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._specs: dict[str, StudySpec] = {}
        self.versions = ModelVersions(store, blobs)
        self.keys = KeyStore(blobs)
        self.rounds = RoundAggregator(self.versions, audit=audit)
        self.buffer = UpdateBuffer(store, audit=audit)
        self.finalization = Finalization(store, self.versions, spec=self.spec, audit=audit, clock=clock)
        self.late_keys = LateKeys(store, clock=clock)

    # --- helpers --------------------------------------------------------------------------
    def spec(self, study_id: str) -> StudySpec:
        if study_id not in self._specs:
            row = self.store.get(StudyRow, study_id)
            if row is None:
                raise NotFound(f"unknown study {study_id!r}")
            self._specs[study_id] = StudySpec.from_json(row.spec_json)
        return self._specs[study_id]

    def study(self, study_id: str) -> StudyRow:
        row = self.store.get(StudyRow, study_id)
        if row is None:
            raise NotFound(f"unknown study {study_id!r}")
        return row

    def _notify(self) -> None:
        self._changed.notify_all()

    def accepted_silos(self, study_id: str) -> list[str]:
        return sorted(e.silo for e in self.store.all(EnrollmentRow, study_id=study_id, accepted=True))

    def current_round_of(self, study_id: str) -> int:
        """The round that traffic is counted against: 0 before training, R+1 while finalizing."""
        return self.study(study_id).current_round

    # --- researcher side -------------------------------------------------------------------
    def submit_study(self, spec_json: str) -> str:
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
        # Version 0's chunks are ready before the first silo asks (unless only its hash travels).
        sha = self.blobs.put(build_initial_model(spec), serve=spec.protocol.downlink_encoding is None)
        with self._lock:
            self.store.add(
                StudyRow(id=study_id, name=spec.name, spec_json=spec.to_json(), spec_sha256=spec.sha256(),
                         state="enrolling", created_at=self.clock(), current_round=0),
                ModelVersionRow(study_id=study_id, version=0, blob_sha=sha, encoding=TENSORS, base_version=None),
            )
            self._specs[study_id] = spec
            self.rounds.adopt(study_id, aggregation)
            self.versions.layout(study_id)  # read once now, not by the first update of round 1
            self.audit("study_received", study=study_id, spec_sha256=spec.sha256(), rounds=spec.training.rounds)
            log.info("study %s submitted (%d rounds, %s)", study_id, spec.training.rounds, spec.privacy.encryption)
            self._notify()
        return study_id

    # --- silo side --------------------------------------------------------------------------
    def join(self, silo: str, modalities: list[str], wrap_public_key: bytes) -> None:
        check_silo_name(silo)
        if wrap_public_key and len(wrap_public_key) != 32:
            raise InvalidInput("wrap_public_key must be a 32-byte X25519 public key")
        with self._lock:
            self.store.add(SiloRow(name=silo, modalities_json=json.dumps(sorted(modalities)),
                                   wrap_public_key=wrap_public_key, last_seen=self.clock()))
            log.info("silo %s joined (%s)", silo, ", ".join(modalities))
            self._notify()

    def answer_proposal(self, silo: str, ans: pb.ProposalAnswer) -> None:
        with self._lock:
            row = self.study(ans.study_id)
            self._audit_received("proposal_answer", silo, row.id, 0, ans)
            existing = self.store.get(EnrollmentRow, row.id, silo)
            if existing is not None and existing.accepted == ans.accept:
                return  # a retried answer: already recorded (and its wrapped key, if any, kept)
            late = row.state != "enrolling"
            if late and not (ans.accept and row.state in LATE_JOIN_STATES and self.spec(row.id).training.late_join):
                why = "; its spec has training.late_join = false" if row.state in LATE_JOIN_STATES else ""
                raise Refused(f"study {ans.study_id} is no longer enrolling (state {row.state}){why}")
            if ans.accept and ans.spec_sha256 != row.spec_sha256:
                raise Refused("the approved spec hash does not match the study's spec")
            check_silo_name(silo)
            members = check_member_keys(ans.member_wrap_keys) if ans.accept else {}
            self.store.add(EnrollmentRow(study_id=ans.study_id, silo=silo, accepted=ans.accept, reason=ans.reason,
                                         train_samples=ans.train_samples, test_samples=ans.test_samples,
                                         member_wrap_keys_json=member_keys_to_json(members)))
            self.audit("study_approved" if ans.accept else "study_rejected", study=ans.study_id, silo=silo, reason=ans.reason,
                       **({"late": True, "state": row.state} if late else {}))
            if late:
                log.info("study %s: %s accepted late (state %s); it joins from the next round", row.id, silo, row.state)
            self._tick_locked()
            self._notify()

    def next_task(self, silo: str, wait_s: float, deferred: frozenset[str] = frozenset()) -> pb.Task:
        with self._lock:
            silo_row = self.store.get(SiloRow, silo)
            if silo_row is None:
                raise Refused(f"silo {silo!r} has not joined; call Join first")
            silo_row.last_seen = self.clock()
            self.store.add(silo_row)

            def find() -> pb.Task | None:
                self._tick_locked()
                return self._task_for(silo, deferred)

            return long_poll(self._changed, wait_s, find)

    def _task_for(self, silo: str, deferred: frozenset[str]) -> pb.Task | None:
        for row in sorted(self.store.all(StudyRow), key=lambda r: r.created_at):
            if row.state not in ACTIVE_STATES:
                continue
            enrollment = self.store.get(EnrollmentRow, row.id, silo)
            may_enroll = row.state == "enrolling" or (row.state in LATE_JOIN_STATES and self.spec(row.id).training.late_join)
            if enrollment is None and may_enroll and row.id not in deferred:
                return pb.Task(kind=pb.TASK_PROPOSAL, study_id=row.id, spec_json=row.spec_json)
            if row.state == "enrolling" or enrollment is None or not enrollment.accepted:
                continue
            if row.state == "keygen" and row.key_holder == silo and not row.public_context_sha:
                return pb.Task(kind=pb.TASK_KEYGEN, study_id=row.id, participant_keys=self._key_recipients(row.id),
                               spec_json=row.spec_json)
            if row.state == "running" and row.public_context_sha:  # late joiners: any silo holding the key wraps it
                late = self._awaiting_key(row.id)
                holders = self._keyed_silos(row.id)
                if self.late_keys.wraps(row.id, silo, waiting=late, holders=holders):
                    return pb.Task(kind=pb.TASK_WRAP_KEY, study_id=row.id, round=row.current_round,
                                   participant_keys=self._key_recipients(row.id, only=late), spec_json=row.spec_json)
                if silo in late:
                    self.late_keys.waits(row.id, silo, holders)
            rnd = self.store.get(RoundRow, row.id, row.current_round)
            if rnd is None or rnd.state != "open" or (silo not in json.loads(rnd.participants_json) and not (
                    row.state == "running" and self.buffer.enlist(self.spec(row.id), rnd, silo,
                                                                  keyed=silo not in self._awaiting_key(row.id)))):
                continue
            if row.state == "running" and silo == row.key_holder:
                outcome = RoundOutcome.of(rnd.outcome_json)
                if outcome.screen_sha and outcome.screen_values is None:
                    return pb.Task(kind=pb.TASK_SCREEN, study_id=row.id, round=rnd.number, nonce=rnd.nonce,
                                   spec_json=row.spec_json)
            if row.state == "running" and not self._answered(row.id, rnd.number, silo):
                return pb.Task(kind=pb.TASK_TRAIN, study_id=row.id, round=rnd.number, nonce=rnd.nonce,
                               spec_json=row.spec_json, model_version=rnd.number - 1, round_seed=rnd.seed,
                               max_update_bytes=self.versions.max_update_bytes(row.id, self.spec(row.id)))
            if row.state == "finalizing":
                task = self.finalization.task(row, rnd, silo)
                if task is not None:
                    return task
        return None

    def _awaiting_key(self, study_id: str) -> list[str]:
        """Under CKKS once the keys exist: the accepted silos the secret was not yet wrapped for (late joiners)."""
        if not self.spec(study_id).protocol.encrypted:
            return []
        return sorted(e.silo for e in self.store.all(EnrollmentRow, study_id=study_id, accepted=True)
                      if not e.wrapped_key_sha)

    def _key_recipients(self, study_id: str, only: list[str] | None = None) -> dict[str, bytes]:
        """KEYGEN's participant_keys: each direct silo's wrap key, each region's members' as "<region>/<member>"."""
        participants = {}
        for e in self.store.all(EnrollmentRow, study_id=study_id, accepted=True):
            if only is not None and e.silo not in only:
                continue
            silo_row = self.store.get(SiloRow, e.silo)
            own = silo_row.wrap_public_key if silo_row is not None else b""
            participants[e.silo] = (own, member_keys_from_json(e.member_wrap_keys_json))
        return recipients(participants)

    def _answered(self, study_id: str, round_: int, silo: str) -> bool:
        return (self.store.get(UpdateRow, study_id, round_, silo) is not None
                or self.store.get(SkipRow, study_id, round_, silo) is not None)

    # --- state transitions -------------------------------------------------------------------
    def tick(self) -> None:
        with self._lock:
            self._tick_locked()
            self._notify()

    def _tick_locked(self) -> None:
        for row in self.store.all(StudyRow):
            if row.state == "enrolling":
                self._maybe_start(row)
            elif row.state in ("running", "finalizing"):
                self._maybe_close_round(row)

    def _maybe_start(self, row: StudyRow) -> None:
        spec = self.spec(row.id)
        accepted = self.accepted_silos(row.id)
        answered = {e.silo for e in self.store.all(EnrollmentRow, study_id=row.id)}
        recent = {s.name for s in self.store.all(SiloRow) if self.clock() - s.last_seen < 30}
        t = spec.training
        enough = len(accepted) >= t.min_silos
        waited_out = self.clock() - row.created_at >= t.enrollment_timeout_s
        if t.expected_silos is not None:  # wait for the silos the researcher expects (a slow one too)
            ready = len(accepted) >= t.expected_silos or (enough and (len(answered) >= t.expected_silos or waited_out))
        else:
            ready = enough and (recent <= answered or waited_out)
        if not ready:
            return
        if spec.protocol.encrypted and spec.kind is StudyKind.TRAINING:
            row.state, row.key_holder = "keygen", accepted[0]
            self.store.add(row)
            log.info("study %s: %d silos enrolled; %s generates the CKKS keys", row.id, len(accepted), accepted[0])
        else:
            self._open_round(row, 1, accepted)

    def key_bundle_received(self, study_id: str) -> None:
        """Called once the key holder's public context and wrapped keys are stored."""
        row = self.study(study_id)
        self._open_round(row, 1, self.accepted_silos(study_id))

    def _open_round(self, row: StudyRow, number: int, participants: list[str], *, finalizing: bool | None = None,
                    outcome: RoundOutcome | None = None, closing: RoundRow | None = None) -> None:
        """Open round `number`; the finalizing round evaluates version number - 1 and releases it."""
        spec = self.spec(row.id)
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
        spec = self.spec(row.id)
        participants = json.loads(rnd.participants_json)
        timed_out = self.clock() >= rnd.deadline
        if row.state == "finalizing":
            failure = self.finalization.close(row, rnd)
            if failure is not None:
                self._fail(row, failure)
            return
        updates = self.store.all(UpdateRow, study_id=row.id, round=rnd.number)
        # An asynchronous buffer also waits for silos still training on an older version (no participants of it).
        awaited = self.buffer.awaited(rnd, self._keyed_silos(row.id)) if is_async(spec) else participants
        all_answered = all(self._answered(row.id, rnd.number, s) for s in awaited) or self.buffer.full(spec, updates)
        if not (all_answered or timed_out):
            return
        if spec.kind is StudyKind.ANALYSIS:
            self._close_analysis(row, rnd, spec, updates)
            return
        if len(updates) < spec.training.min_silos:
            retries = RoundOutcome.of(rnd.outcome_json).retries
            reason = f"round {rnd.number}: {len(updates)} updates, quorum is {spec.training.min_silos}"
            participants_now = self._round_candidates(row, rnd)
            if all_answered or retries >= MAX_ROUND_RETRIES:
                # Quorum lost for good: the last aggregated version becomes the final one.
                log.warning("study %s: %s; finishing the study early", row.id, reason)
                self._open_round(row, rnd.number, participants_now, finalizing=True,
                                 outcome=RoundOutcome(early_stop=reason))
            else:
                # The same round again, with a fresh nonce: updates for the failed attempt are refused.
                log.warning("study %s: %s at the deadline; reopening the round", row.id, reason)
                with self.store.session.begin() as s:
                    for u in updates:
                        s.delete(s.get(UpdateRow, (u.study_id, u.round, u.silo)))
                self.rounds.forget(row.id, rnd.number)
                self._open_round(row, rnd.number, participants_now,
                                 outcome=RoundOutcome(retries=retries + 1, last_failure=reason))
            return
        if spec.protocol.screened and not self._screened(row, rnd, spec, updates):
            return  # waiting for the key holder to decrypt the screening scalars
        try:
            outcome = self.rounds.close(row, rnd, spec, updates)
        except (AggregationError, InvalidInput, HEError, ServerStepError) as e:
            # A round that cannot be aggregated (e.g. too few updates for the rule's f) ends the
            # study with the reason, instead of failing at every deadline check.
            self._fail(row, f"round {rnd.number} could not be aggregated: {e}")
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

    def _close_analysis(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, updates: list[UpdateRow]) -> None:
        """An analysis study's one round: with a quorum of releases, pool them and finish (coordinator/analysis.py)."""
        if len(updates) < spec.training.min_silos:
            self._fail(row, f"analysis: {len(updates)} silos released statistics, the quorum is "
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
        keyed = self._keyed_silos(row.id)
        present = []
        for s in keyed:
            seen = self.store.get(SiloRow, s)
            if self._answered(row.id, closing.number, s) or (seen is not None and seen.last_seen >= closing.opened_at):
                present.append(s)
            else:
                log.info("study %s: %s has not been seen since round %d opened; not asked to the next round until it "
                         "returns", row.id, s, closing.number)
        return present if len(present) >= self.spec(row.id).training.min_silos else keyed

    def _keyed_silos(self, study_id: str) -> list[str]:
        """The accepted silos that can train: under CKKS, those the study's secret is wrapped for."""
        awaiting = set(self._awaiting_key(study_id))
        return [s for s in self.accepted_silos(study_id) if s not in awaiting]

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

    def report_screen(self, silo: str, rep: pb.ScreenReport) -> None:
        with self._lock:
            row, rnd = self.check_round(rep.study_id, silo, rep.round, rep.nonce)
            outcome = RoundOutcome.of(rnd.outcome_json)
            if silo != row.key_holder or outcome.screen_sha is None or outcome.screen_values is not None:
                raise Refused(f"silo {silo} is not expected to report screening scalars for round {rnd.number}")
            try:
                expected = len(decode_screening_scalars(self.blobs.get(outcome.screen_sha)))
                outcome.screen_values = check_screening_values(rep.values, expected)
            except ProtocolError as e:
                raise InvalidInput(str(e)) from None
            rnd.outcome_json = outcome.to_json()
            self.store.add(rnd)
            self._audit_received("screen_scalars", silo, row.id, rnd.number, rep)
            self._tick_locked()
            self._notify()

    def _fail(self, row: StudyRow, reason: str) -> None:
        row.state, row.error = "failed", reason
        self.store.add(row)
        self.audit("study_failed", study=row.id, reason=reason[:500])
        log.error("study %s failed: %s", row.id, reason)

    # --- round inputs ---------------------------------------------------------------------
    def check_round(self, study_id: str, silo: str, round_: int, nonce: str) -> tuple[StudyRow, RoundRow]:
        row = self.study(study_id)
        rnd = self.store.get(RoundRow, study_id, row.current_round)
        if rnd is None or rnd.state != "open" or rnd.number != round_:
            raise Refused(f"round {round_} of study {study_id} is not open (current round {row.current_round})")
        if nonce != rnd.nonce:
            raise Refused(f"round nonce does not match round {round_}: a replayed or late message")
        if silo not in json.loads(rnd.participants_json):
            raise Refused(f"silo {silo!r} is not a participant of round {round_}")
        return row, rnd

    def max_update_bytes(self, study_id: str) -> int:
        return self.versions.max_update_bytes(study_id, self.spec(study_id))

    def accept_update(self, silo: str, header: pb.BlobHeader, blob: Incoming) -> pb.PushReply:
        blob.view()  # flushed and fsynced before the lock: uploads reach the disk in parallel
        with self._lock:
            row, rnd, staleness, existing = self._buffer_or_round(silo, header)
            if existing is not None:
                if existing.blob_sha == header.sha256:  # a retried upload: idempotent
                    return pb.PushReply(accepted=True, sha256=existing.blob_sha, size=existing.size, reason="duplicate")
                raise Refused(f"silo {silo} already sent a different update for round {rnd.number}")
            spec = self.spec(row.id)
            # Checked and added to the round's running aggregate as it arrives (O(model) memory);
            # a refused update is audited with the reason (NaN, dtype, layout, weight, encoding).
            try:
                if spec.kind is StudyKind.ANALYSIS:  # released statistics, checked against the study
                    parse_release(spec, header.encoding, blob.view())
                else:
                    self._check_weight(row.id, silo, header.weight)
                    self.rounds.add_update(row, rnd, spec, header, blob.view(),
                                           scale=staleness_weight(spec, staleness) if staleness is not None else 1.0)
            except InvalidInput as e:
                self.audit("update_refused", study=row.id, silo=silo, round=rnd.number, reason=str(e)[:500])
                raise
            sha = blob.commit(header.sha256)
            if staleness is not None:
                self.buffer.record(rnd, silo, staleness)
            self.store.add(UpdateRow(study_id=row.id, round=rnd.number, silo=silo, blob_sha=sha, size=header.size,
                                     weight=header.weight, encoding=header.encoding,
                                     metadata_json=header.metadata_json or "{}", received_at=self.clock()),
                           *([rnd] if staleness is not None else []))
            self.audit("message_received", study=row.id, silo=silo, kind="update", round=rnd.number,
                       size=header.size, sha256=sha, **({"staleness": staleness} if staleness is not None else {}))
            self._tick_locked()
            self._notify()
            return pb.PushReply(accepted=True, sha256=sha, size=header.size)

    def check_upload(self, silo: str, header: pb.BlobHeader) -> None:
        """Refused unless the silo may start (or resume) this upload now: an update for the open
        round (or, in an asynchronous study, for its buffer), a final model for the finalizing round."""
        with self._lock:
            if header.ref.kind == pb.BLOB_UPDATE:
                self._buffer_or_round(silo, header)
            else:
                self.check_round(header.ref.study_id, silo, header.round, header.nonce)

    def _buffer_or_round(self, silo: str, header: pb.BlobHeader) -> tuple[StudyRow, RoundRow, int | None, UpdateRow | None]:
        """The round an update goes to, its staleness (asynchronous studies: the buffer, coordinator/buffer.py)
        and the update the silo already stored there, if any."""
        spec = self.spec(header.ref.study_id)
        staleness = None
        if is_async(spec):
            row = self.study(header.ref.study_id)
            retried = self.buffer.taken(row, silo, header)
            if retried is not None:
                return row, self.store.get(RoundRow, row.id, retried.round), None, retried
            rnd, staleness = self.buffer.place(row, spec, silo, header)
        else:
            row, rnd = self.check_round(header.ref.study_id, silo, header.round, header.nonce)
            if row.state != "running":
                raise Refused(f"study {row.id} is {row.state}; no updates are taken now")
        return row, rnd, staleness, self.store.get(UpdateRow, row.id, rnd.number, silo)

    def _check_weight(self, study_id: str, silo: str, weight: float) -> None:
        """A silo weighs in with at most the training samples it declared at enrollment (a region: its
        accepting silos' sum), so no participant can make FedAvg its own by declaring a huge weight."""
        enrollment = self.store.get(EnrollmentRow, study_id, silo)
        declared = enrollment.train_samples if enrollment is not None else 0
        if declared > 0 and weight > declared:
            raise InvalidInput(f"update weight {weight:g} exceeds the {declared} training samples silo {silo!r} "
                               "declared when it accepted the study; an update weighs at most its declared samples")

    def accept_key_bundle(self, silo: str, header: pb.BlobHeader, blob: Incoming) -> pb.PushReply:
        with self._lock:
            row = self.study(header.ref.study_id)
            if row.state == "running" and row.public_context_sha and silo in self._keyed_silos(row.id):
                return self._accept_late_keys(row, silo, header, bytes(blob.view()))
            if row.state != "keygen" or row.key_holder != silo:
                raise Refused(f"silo {silo} is not expected to send keys for study {row.id} (state {row.state})")
            members = {e.silo: sorted(member_keys_from_json(e.member_wrap_keys_json))
                       for e in self.store.all(EnrollmentRow, study_id=row.id, accepted=True)}
            public_sha, wrapped, wrapped_for = self.keys.store_bundle(bytes(blob.view()), members)
            row.public_context_sha = public_sha
            for name, sha in wrapped.items():
                enrollment = self.store.get(EnrollmentRow, row.id, name)
                enrollment.wrapped_key_sha = sha
                self.store.add(enrollment)
            self.store.add(row)
            self.audit("message_received", study=row.id, silo=silo, kind="key_bundle", round=0, size=header.size,
                       sha256=header.sha256, wrapped_for=wrapped_for)
            self.key_bundle_received(row.id)
            self._notify()
            return pb.PushReply(accepted=True, sha256=header.sha256, size=header.size)

    def _accept_late_keys(self, row: StudyRow, silo: str, header: pb.BlobHeader, data: bytes) -> pb.PushReply:
        """TASK_WRAP_KEY's answer: a key bundle whose public context is the study's own (the keys stay
        the same) and whose secret is wrapped for the late joiners the task named."""
        late = self._awaiting_key(row.id)
        if not late:
            raise Refused(f"study {row.id}: no silo is waiting for a wrapped key; nothing stored")
        members = {e.silo: sorted(member_keys_from_json(e.member_wrap_keys_json))
                   for e in self.store.all(EnrollmentRow, study_id=row.id, accepted=True) if e.silo in late}
        public_sha, wrapped, wrapped_for = self.keys.store_bundle(data, members)
        if public_sha != row.public_context_sha:
            raise InvalidInput(f"study {row.id}: a late join's key bundle must carry the study's public context "
                               f"(sha256 {row.public_context_sha[:12]}…), not new keys; refused")
        for name, sha in wrapped.items():
            enrollment = self.store.get(EnrollmentRow, row.id, name)
            enrollment.wrapped_key_sha = sha
            self.store.add(enrollment)
        self.audit("message_received", study=row.id, silo=silo, kind="key_bundle", round=header.round, size=header.size,
                   sha256=header.sha256, wrapped_for=wrapped_for)
        log.info("study %s: %s wrapped the study's key for %s", row.id, silo, ", ".join(wrapped_for))
        self.late_keys.wrapped(row.id, wrapped_for)
        self._notify()
        return pb.PushReply(accepted=True, sha256=header.sha256, size=header.size)

    def accept_final_model(self, silo: str, header: pb.BlobHeader, blob: Incoming) -> pb.PushReply:
        with self._lock:
            row, rnd = self.check_round(header.ref.study_id, silo, header.round, header.nonce)
            if row.state != "finalizing" or row.final_model_sha:
                raise Refused(f"study {row.id} does not expect a final model now")
            try:
                decode_tensors(blob.view(), expected=self.versions.layout(row.id))
            except TensorFormatError as e:
                raise InvalidInput(f"final model: {e}") from None
            row.final_model_sha = blob.commit(header.sha256)
            self.store.add(row)
            self.audit("message_received", study=row.id, silo=silo, kind="final_model", round=rnd.number,
                       size=header.size, sha256=row.final_model_sha)
            self._tick_locked()
            self._notify()
            return pb.PushReply(accepted=True, sha256=row.final_model_sha, size=header.size)

    def _audit_received(self, kind: str, silo: str, study: str, round_: int, message: Any) -> None:
        """The counterpart of the silo's message_sent entry, for reconciliation."""
        wire = message.SerializeToString(deterministic=True)
        self.audit("message_received", study=study, silo=silo, kind=kind, round=round_, size=len(wire),
                   sha256=hashlib.sha256(wire).hexdigest())

    def report_metrics(self, silo: str, rep: pb.MetricsReport) -> None:
        with self._lock:
            row, rnd = self.check_round(rep.study_id, silo, rep.round, rep.nonce)
            self._audit_received("metrics", silo, row.id, rep.round, rep)
            if rep.skipped:
                if row.state != "running":
                    raise Refused("a round can only be skipped while the study is running")
                self.store.add(SkipRow(study_id=row.id, round=rnd.number, silo=silo, reason=rep.skip_reason[:2000]))
                self.audit("round_skipped", study=row.id, silo=silo, round=rnd.number, reason=rep.skip_reason[:500])
            else:
                outcome = RoundOutcome.of(rnd.outcome_json)
                releasing = (row.state == "finalizing" and silo == row.key_holder and outcome.release is not None
                             and rep.model_version == outcome.release.version)
                if rep.model_version != rnd.number - 1 and not releasing:
                    raise Refused(f"metrics for model version {rep.model_version}; round {rnd.number} evaluates {rnd.number - 1}")
                if releasing and self.spec(row.id).protocol.encrypted:
                    outcome.release_evaluated = True
                    rnd.outcome_json = outcome.to_json()
                    self.store.add(rnd)
                self._check_same_aggregate(row, silo, rep)
                clean = {k: float(v) for k, v in rep.metrics.items() if len(k) <= 64}
                if any(v != v or v in (float("inf"), float("-inf")) for v in clean.values()):
                    raise InvalidInput("metrics contain NaN or Inf")
                self.store.add(MetricsRow(study_id=row.id, model_version=rep.model_version, silo=silo,
                                          metrics_json=dumps(clean), samples=int(rep.samples), model_sha=rep.model_sha256))
            self._tick_locked()
            self._notify()

    def _check_same_aggregate(self, row: StudyRow, silo: str, rep: pb.MetricsReport) -> None:
        """Every silo must have obtained the same model for a version (under CKKS each decrypts it itself)."""
        if not rep.model_sha256:
            return
        others = {m.silo: m.model_sha for m in self.store.all(MetricsRow, study_id=row.id, model_version=rep.model_version)
                  if m.silo != silo and m.model_sha}
        differing = sorted(s for s, sha in others.items() if sha != rep.model_sha256)
        if differing:
            self.audit("update_refused", study=row.id, silo=silo, round=rep.round,
                       reason=f"model version {rep.model_version} differs from {differing}")
            raise Refused(f"silo {silo} obtained a different model for version {rep.model_version} than "
                          f"{', '.join(differing)}: the aggregate was not the same for every silo")

    def model_for(self, silo: str, ref: pb.BlobRef) -> pb.BlobHeader:
        """The header of a model version a participant may fetch (full, or a compressed delta);
        its sha256 names the blob, whose chunks the service streams from the blob store."""
        with self._lock:
            row = self.study(ref.study_id)
            enrollment = self.store.get(EnrollmentRow, row.id, silo)
            if enrollment is None or not enrollment.accepted:
                raise Refused(f"silo {silo} is not a participant of study {row.id}")
            version = self.store.get(ModelVersionRow, row.id, ref.version)
            if version is None:
                raise NotFound(f"study {row.id} has no model version {ref.version}")
            header = self.versions.header(row.id, self.spec(row.id), version)
            header.ref.CopyFrom(ref)
            return header

    def blob_for(self, silo: str, ref: pb.BlobRef) -> tuple[pb.BlobHeader, bytes]:
        """What a silo may fetch: model versions, the public context, its own wrapped key, the final model."""
        if ref.kind == pb.BLOB_MODEL:
            header = self.model_for(silo, ref)
            return header, self.versions.body(header)
        with self._lock:
            row = self.study(ref.study_id)
            enrollment = self.store.get(EnrollmentRow, row.id, silo)
            is_participant = enrollment is not None and enrollment.accepted
            if ref.kind == pb.BLOB_SCREEN_SCALARS and silo == row.key_holder:
                rnd = self.store.get(RoundRow, row.id, row.current_round)
                sha = RoundOutcome.of(rnd.outcome_json).screen_sha if rnd else None
                if sha:
                    return pb.BlobHeader(ref=ref, sha256=sha), self.blobs.get(sha)
            if ref.kind == pb.BLOB_PUBLIC_CONTEXT and row.public_context_sha and is_participant:
                return pb.BlobHeader(ref=ref, sha256=row.public_context_sha), self.blobs.get(row.public_context_sha)
            if ref.kind == pb.BLOB_WRAPPED_KEY and is_participant and enrollment.wrapped_key_sha:
                if ref.silo and ref.silo != silo:
                    raise Refused(f"silo {silo} may only fetch its own wrapped key")
                return pb.BlobHeader(ref=ref, sha256=enrollment.wrapped_key_sha), self.blobs.get(enrollment.wrapped_key_sha)
            raise NotFound(f"no blob of kind {kind_name(ref.kind)} for silo {silo} in study {row.id}")

    def final_model(self, study_id: str) -> tuple[str, bytes]:
        row = self.study(study_id)
        if row.state != "done":
            raise Refused(f"study {study_id} is {row.state}; the final model is released when it is done")
        sha = row.final_model_sha or self.versions.sha(row.id, row.current_round - 1)
        return sha, self.blobs.get(sha)
