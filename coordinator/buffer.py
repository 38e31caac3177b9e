"""Buffered asynchronous aggregation: FedBuff (Nguyen et al., "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022), for studies with `training.mode = "async"`.

An asynchronous study's open round is its buffer. A silo trains on the newest version it was
given, uploads when done and is given its next task at once, on the newest version. An update
trained on version `v` lands in the open buffer, which builds version `b`; its staleness is
`s = b - 1 - v`, the versions built since. An update staler than `training.max_staleness` is
refused with the reason, and audited. Once `training.buffer_size` updates are in (K), the
round closes into the next version:

    version b = version b-1 + rule({ s(τ_i) · Δ_i }, weights { n_i })

with s(τ) the study's staleness weight (`Staleness`, polynomial (1+τ)^-a as in the paper) and
n_i the silo's sample weight: with FedAvg Σ n_i s(τ_i) Δ_i / Σ n_i, so stale updates shrink the
step (FedBuff's Algorithm 1 with sample weights). In the clear a robust rule aggregates the
staleness-scaled updates; under CKKS the weight n_i · s(τ_i) is the plaintext scale the
coordinator multiplies each ciphertext by, the silos divide by Σ n_i s(τ_i) and multiply by the
version's post_scale Σ n_i s(τ_i) / Σ n_i.

The buffer is in the store, not only in memory: its updates are UpdateRows of the open round and
each one's staleness is in the round's outcome (`RoundOutcome.staleness`), written in the same
transaction, so a restarted coordinator resumes the buffer where it stopped. A silo contributes
at most one update per buffer, so one fast silo cannot fill it alone (the robust rules assume
distinct silos).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from coordinator.aggregation.base import AggregationRule
from coordinator.api import federation_pb2 as pb
from coordinator.api.protocol import Staleness, TrainingMode
from coordinator.api.study import SpecError, StudySpec
from coordinator.errors import Refused
from coordinator.outcome import RoundOutcome
from coordinator.store import RoundRow, Store, StudyRow, UpdateRow

log = logging.getLogger(__name__)


def is_async(spec: StudySpec) -> bool:
    return TrainingMode(spec.training.mode) is TrainingMode.ASYNC


def check_buffer_fits(spec: StudySpec, rule: AggregationRule) -> None:
    """SpecError naming training.buffer_size when a version's K updates can never be enough for the
    study's rule (multi-Krum needs n > 2f + 2): refused at submission, not when version 1 fails.
    A version is built from at most K updates (fewer when the buffer closes short of K)."""
    k = spec.training.buffer_size
    fewest = rule.fewest_updates()
    if is_async(spec) and k < fewest:
        raise SpecError(f"training.buffer_size: a version of this asynchronous study is built from {k} updates, but "
                        f"aggregation.rule {spec.aggregation.rule!s} with its params needs at least {fewest}; "
                        f"set training.buffer_size to {fewest} or more, or lower aggregation.params")


def staleness_weight(spec: StudySpec, staleness: int) -> float:
    """s(τ) of the study's `training.staleness` function."""
    t = spec.training
    return Staleness(t.staleness).weight(staleness, t.staleness_exponent)


def staleness_scales(spec: StudySpec, outcome: RoundOutcome) -> dict[str, float]:
    """Each buffered update's s(τ), by silo (empty for a synchronous study: every update counts in full)."""
    if not is_async(spec):
        return {}
    return {silo: staleness_weight(spec, s) for silo, s in outcome.staleness.items()}


class UpdateBuffer:
    def __init__(self, store: Store, *, audit: Callable[..., None]) -> None:
        self.store = store
        self.audit = audit

    def place(self, row: StudyRow, spec: StudySpec, silo: str, header: pb.BlobHeader) -> tuple[RoundRow, int]:
        """The open round an update joins and its staleness. The update names the round whose task
        it answers (its nonce must be that round's, and the silo one of its participants); Refused,
        audited, when that round is unknown or the update is staler than training.max_staleness."""
        if row.state != "running":
            raise Refused(f"study {row.id} is {row.state}; no updates are taken now")
        buffer = self.store.get(RoundRow, row.id, row.current_round)
        trained = self.store.get(RoundRow, row.id, header.round)
        if buffer is None or buffer.state != "open" or trained is None or header.round > buffer.number:
            raise Refused(f"round {header.round} of study {row.id} gave no training task (current round {row.current_round})")
        if header.nonce != trained.nonce:
            raise Refused(f"round nonce does not match round {header.round}: a replayed or late message")
        if silo not in trained.participant_set():
            raise Refused(f"silo {silo!r} is not a participant of round {header.round}")
        staleness = buffer.number - header.round
        limit = spec.training.max_staleness
        if staleness > limit:
            reason = (f"update trained on version {header.round - 1} is {staleness} versions stale (the buffer builds "
                      f"version {buffer.number}); training.max_staleness is {limit}: take the next task, on the newest version")
            self.audit("update_refused", study=row.id, silo=silo, round=buffer.number, reason=reason)
            raise Refused(reason)
        return buffer, staleness

    def taken(self, row: StudyRow, silo: str, header: pb.BlobHeader) -> UpdateRow | None:
        """The stored update a retried upload repeats (same bytes, in the buffer it went to), if any."""
        for number in range(header.round, row.current_round + 1):
            existing = self.store.get(UpdateRow, row.id, number, silo)
            if existing is not None and existing.blob_sha == header.sha256:
                return existing
        return None

    @staticmethod
    def record(buffer: RoundRow, silo: str, staleness: int) -> None:
        """Note the update's staleness in the buffer's outcome (stored with its UpdateRow)."""
        outcome = RoundOutcome.of(buffer.outcome_json)
        outcome.staleness[silo] = staleness
        buffer.outcome_json = outcome.to_json()

    @staticmethod
    def full(spec: StudySpec, updates: list[UpdateRow]) -> bool:
        """The buffer holds training.buffer_size updates: build the next version."""
        return is_async(spec) and len(updates) >= spec.training.buffer_size

    def note_budget_spent(self, spec: StudySpec, buffer: RoundRow, silo: str) -> None:
        """`silo` skipped `buffer` because its privacy budget allows no further local run (ε only
        grows with each run, so none ever will): in an asynchronous study it is offered no more
        tasks, and the buffer no longer waits for it; the study goes on with the others. Noted in
        the buffer's outcome (the caller stores it with the skip), so a restart keeps it."""
        if not is_async(spec):
            return  # a synchronous round asks every silo; each refuses a round it cannot pay for
        outcome = RoundOutcome.of(buffer.outcome_json)
        if silo not in outcome.budget_spent:
            outcome.budget_spent.append(silo)
            buffer.outcome_json = outcome.to_json()
            log.info("study %s: %s has spent its privacy budget; it is offered no further tasks", buffer.study_id, silo)

    def budget_spent(self, study_id: str) -> set[str]:
        """The silos of an asynchronous study whose privacy budget allows no further local run."""
        return {s for r in self.store.all(RoundRow, study_id=study_id) for s in RoundOutcome.of(r.outcome_json).budget_spent}

    def offered(self, spec: StudySpec, study_id: str, silos: list[str]) -> list[str]:
        """`silos` less those whose budget is spent (an asynchronous study's next buffer asks only these)."""
        if not is_async(spec):
            return silos
        spent = self.budget_spent(study_id)
        return [s for s in silos if s not in spent]

    def awaited(self, rnd: RoundRow, keyed: list[str]) -> list[str]:
        """Whose answer (update or skip) the buffer waits for before it closes short of K updates:
        every keyed silo that took part in the study so far. A silo still training on an older
        version is no participant of this buffer (not seen since the last one opened) yet may
        still fill it; one whose budget is spent skips it (and is not waited for after that), and
        when all have answered with fewer than training.min_silos updates the study ends early
        instead of waiting for the deadline."""
        spent = self.budget_spent(rnd.study_id)
        took_part: set[str] = set()
        for r in self.store.all(RoundRow, study_id=rnd.study_id):
            if r.number <= rnd.number:
                took_part.update(json.loads(r.participants_json))
        return [s for s in keyed if s in took_part and s not in spent]

    def enlist(self, spec: StudySpec, rnd: RoundRow, silo: str, *, keyed: bool) -> bool:
        """A silo that asks for work while an asynchronous study's buffer is open gets its next task
        at once: it is added to the round's participants if it took part in the study before (a new
        silo starts at the next round, where its joining is recorded) and, under CKKS, holds the key."""
        if not is_async(spec) or rnd.state != "open" or not keyed or silo in self.budget_spent(rnd.study_id):
            return False
        participants = json.loads(rnd.participants_json)
        if silo in participants:
            return True
        earlier = any(silo in r.participant_set()
                      for r in self.store.all(RoundRow, study_id=rnd.study_id) if r.number < rnd.number)
        if not earlier:
            return False
        rnd.participants_json = json.dumps(sorted([*participants, silo]))
        self.store.add(rnd)
        log.info("study %s: %s asks for work; it trains on version %d", rnd.study_id, silo, rnd.number - 1)
        return True
