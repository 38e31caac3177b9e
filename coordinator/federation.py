"""The coordinator's state machine, as the gRPC service calls it: one lock, one notice of change.

A study goes enrolling -> (keygen, under CKKS) -> running -> finalizing -> done. Silos
dial out and long-poll `next_task`; every state change notifies the waiting polls, so a
silo learns about new work as soon as it exists (no polling delay). One lock orders all
state changes; everything is persisted in the Store before the lock is released, so a
restarted coordinator resumes where it stopped.

This class only holds the lock and wires the parts, each with one job:
coordinator/studies.py (rows, specs, who takes part), enrollment.py (join, proposals, keys),
tasks.py (what a silo does next), intake.py (what silos send in a round), lifecycle.py
(study states, opening and closing rounds), downloads.py (what a silo may fetch), with
rounds.py, buffer.py, finalizing.py, versions.py and keystore.py beneath them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from coordinator.api import federation_pb2 as pb
from coordinator.api.study import StudySpec
from coordinator.blobs import BlobStore, Incoming
from coordinator.buffer import UpdateBuffer
from coordinator.downloads import Downloads
from coordinator.enrollment import Enrollment
from coordinator.errors import Refused
from coordinator.finalizing import Finalization
from coordinator.intake import Intake
from coordinator.keystore import KeyStore
from coordinator.late_keys import LateKeys
from coordinator.lifecycle import StudyLifecycle
from coordinator.long_poll import long_poll
from coordinator.rounds import RoundAggregator
from coordinator.store import SiloRow, Store, StudyRow
from coordinator.studies import Studies
from coordinator.tasks import Tasks
from coordinator.versions import ModelVersions

AuditFn = Callable[..., None]


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
        self.studies = Studies(store)
        self.versions = ModelVersions(store, blobs)
        self.keys = KeyStore(blobs)
        self.late_keys = LateKeys(store, clock=clock)
        self.rounds = RoundAggregator(self.versions, audit=audit)
        self.buffer = UpdateBuffer(store, audit=audit)
        self.finalization = Finalization(store, self.versions, spec=self.spec, audit=audit, clock=clock)
        self.intake = Intake(store, blobs, self.studies, versions=self.versions, rounds=self.rounds, buffer=self.buffer,
                             audit=audit, clock=clock)
        self.enrollment = Enrollment(store, self.studies, self.keys, self.late_keys, audit=audit, clock=clock,
                                     audit_received=self.intake.audit_received)
        self.tasks = Tasks(store, self.studies, self.enrollment, self.versions, self.buffer, self.finalization,
                           self.late_keys)
        self.lifecycle = StudyLifecycle(store, blobs, self.studies, versions=self.versions, rounds=self.rounds,
                                        buffer=self.buffer, finalization=self.finalization, audit=audit, clock=clock)
        self.downloads = Downloads(store, blobs, self.studies, self.versions)

    def _settle(self) -> None:
        """After a change: move every study as far as it can go, then wake the waiting polls. Under the lock."""
        self.lifecycle.tick()
        self._changed.notify_all()

    # --- what the service and the summaries read ---------------------------------------------
    def spec(self, study_id: str) -> StudySpec:
        return self.studies.spec(study_id)

    def study(self, study_id: str) -> StudyRow:
        return self.studies.row(study_id)

    def accepted_silos(self, study_id: str) -> list[str]:
        return self.studies.accepted(study_id)

    def current_round_of(self, study_id: str) -> int:
        """The round that traffic is counted against: 0 before training, R+1 while finalizing."""
        return self.study(study_id).current_round

    def max_update_bytes(self, study_id: str) -> int:
        return self.versions.max_update_bytes(study_id, self.spec(study_id))

    def tick(self) -> None:
        """Deadlines pass without a message: the server calls this every second."""
        with self._lock:
            self._settle()

    # --- researcher side -------------------------------------------------------------------
    def submit_study(self, spec_json: str) -> str:
        spec, aggregation, study_id = StudyLifecycle.validate(spec_json)
        initial_sha = self.lifecycle.initial_model(spec)  # built outside the lock (seconds for a large model)
        with self._lock:
            self.lifecycle.submit(study_id, spec, aggregation, initial_sha)
            self._changed.notify_all()
        return study_id

    # --- silo side --------------------------------------------------------------------------
    def join(self, silo: str, modalities: list[str], wrap_public_key: bytes) -> None:
        with self._lock:
            self.enrollment.join(silo, modalities, wrap_public_key)
            self._changed.notify_all()

    def answer_proposal(self, silo: str, ans: pb.ProposalAnswer) -> None:
        with self._lock:
            if self.enrollment.answer(silo, ans):
                self._settle()

    def next_task(self, silo: str, wait_s: float, deferred: frozenset[str] = frozenset()) -> pb.Task:
        with self._lock:
            silo_row = self.store.get(SiloRow, silo)
            if silo_row is None:
                raise Refused(f"silo {silo!r} has not joined; call Join first")
            silo_row.last_seen = self.clock()
            self.store.add(silo_row)

            def find() -> pb.Task | None:
                self.lifecycle.tick()
                return self.tasks.for_silo(silo, deferred)

            return long_poll(self._changed, wait_s, find)

    def check_upload(self, silo: str, header: pb.BlobHeader) -> None:
        """Refused unless the silo may start (or resume) this upload now, before a byte is kept."""
        with self._lock:
            if header.ref.kind == pb.BLOB_KEY_BUNDLE:
                self.enrollment.check_key_sender(self.study(header.ref.study_id), silo)
            else:
                self.intake.check_upload(silo, header)

    def accept_update(self, silo: str, header: pb.BlobHeader, blob: Incoming) -> pb.PushReply:
        blob.view()  # flushed and fsynced before the lock: uploads reach the disk in parallel
        with self._lock:
            reply = self.intake.accept_update(silo, header, blob)
            self._settle()
            return reply

    def accept_key_bundle(self, silo: str, header: pb.BlobHeader, blob: Incoming) -> pb.PushReply:
        with self._lock:
            reply = self.enrollment.accept_key_bundle(silo, header, blob)
            self._settle()  # the study's first keys: round 1 opens
            return reply

    def accept_final_model(self, silo: str, header: pb.BlobHeader, blob: Incoming) -> pb.PushReply:
        with self._lock:
            reply = self.intake.accept_final_model(silo, header, blob)
            self._settle()
            return reply

    def report_metrics(self, silo: str, rep: pb.MetricsReport) -> None:
        with self._lock:
            self.intake.report_metrics(silo, rep)
            self._settle()

    def report_screen(self, silo: str, rep: pb.ScreenReport) -> None:
        with self._lock:
            self.intake.report_screen(silo, rep)
            self._settle()

    def model_for(self, silo: str, ref: pb.BlobRef) -> pb.BlobHeader:
        with self._lock:
            return self.downloads.model(silo, ref)

    def blob_for(self, silo: str, ref: pb.BlobRef) -> tuple[pb.BlobHeader, bytes]:
        """What a silo may fetch: model versions, the public context, its own wrapped key, the screening scalars."""
        if ref.kind == pb.BLOB_MODEL:
            header = self.model_for(silo, ref)
            return header, self.versions.body(header)
        with self._lock:
            return self.downloads.blob(silo, ref)

    def final_model(self, study_id: str) -> tuple[str, bytes]:
        return self.downloads.final_model(study_id)
