"""The region's state: its silos, the studies proposed to them, and the task each silo gets next.

Downstream this is the coordinator protocol: silos join, long-poll `next_task`, answer
proposals, fetch models and keys, push updates. The state changes that upstream work
produces (a relayed round opens, a round completes) notify the waiting polls, as in
coordinator.federation. State lives in memory: a restarted region re-joins upstream and its
silos re-join it, but a round in flight at the restart is lost (the central coordinator's
deadline and retry cover it).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compliance.keys import write_secret_file
from coordinator.api import federation_pb2 as pb
from coordinator.api.chunks import sha256_hex
from coordinator.api.codecs import ErrorFeedback
from coordinator.api.protocol import Encryption, StudyKind
from coordinator.api.study import StudySpec
from coordinator.api.tensors import decode_tensors
from coordinator.enrollment import audit_answer, check_approval, check_join, repeats
from coordinator.errors import InvalidInput, NotFound, Refused
from coordinator.intake import audit_received
from coordinator.key_recipients import SEP
from coordinator.long_poll import long_poll
from coordinator.regional_node.work import FinalizeWork, KeygenWork, KeyMaterial, RoundWork, Work, keys_from_upstream
from coordinator.tasks import first_task, proposal

log = logging.getLogger(__name__)

RECENT_S = 30.0  # a silo that polled this recently is expected to answer a proposal
MODEL_VERSIONS_KEPT = 3
FetchModel = Callable[[str, int], tuple[pb.BlobHeader, bytes]]


@dataclass
class SiloLink:
    name: str
    modalities: list[str]
    wrap_public_key: bytes
    last_seen: float


@dataclass
class RegionalStudy:
    study_id: str
    spec: StudySpec
    spec_json: str
    proposed_at: float
    answers: dict[str, pb.ProposalAnswer] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)  # accepted silos, fixed when the region answers upstream
    answered_upstream: bool = False
    keys: KeyMaterial | None = None
    models: dict[int, tuple[pb.BlobHeader, bytes]] = field(default_factory=dict)
    feedback: ErrorFeedback | None = None
    work: Work | None = None


def refusal_reason(spec: StudySpec) -> str | None:
    """Why this region cannot relay a study at all, or None."""
    if spec.kind is StudyKind.ANALYSIS:
        return ("an analysis study (kind = 'analysis') is not relayed by a regional aggregator: each hospital's "
                "released statistics go to the coordinator as they are; connect these silos to it directly")
    if spec.protocol.encryption is Encryption.CKKS_SCREEN:
        return ("privacy.encryption = 'ckks-screen' is not relayed by a regional aggregator: the screened rules "
                "decide on norms and distances of single silo updates, and upstream the region's update is a "
                "ciphertext sum; connect these silos to the central coordinator directly")
    return None


class Region:
    def __init__(self, name: str, *, fetch_model: FetchModel, audit: Callable[..., None],
                 expected_silos: int | None = None, enrollment_timeout_s: float = 60.0,
                 keys_dir: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.keys_dir = keys_dir
        self.fetch_model = fetch_model
        self.audit = audit
        self.expected_silos = expected_silos
        self.enrollment_timeout_s = enrollment_timeout_s
        self.clock = clock
        self.silos: dict[str, SiloLink] = {}
        self.studies: dict[str, RegionalStudy] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._fetching = threading.Lock()

    # --- silos ------------------------------------------------------------------------------------
    def join(self, silo: str, modalities: list[str], wrap_public_key: bytes) -> None:
        check_join(silo, wrap_public_key)
        if silo == self.name:
            raise InvalidInput(f"a silo may not take the region's own name {silo!r}")
        with self._lock:
            self.silos[silo] = SiloLink(silo, sorted(modalities), wrap_public_key, self.clock())
            log.info("silo %s joined region %s (%s)", silo, self.name, ", ".join(modalities))
            self._changed.notify_all()

    def modalities(self) -> list[str]:
        with self._lock:
            return sorted({m for s in self.silos.values() for m in s.modalities})

    def next_task(self, silo: str, wait_s: float, deferred: frozenset[str]) -> pb.Task:
        with self._lock:
            link = self.silos.get(silo)
            if link is None:
                raise Refused(f"silo {silo!r} has not joined region {self.name}; call Join first")

            def find() -> pb.Task | None:
                link.last_seen = self.clock()
                return self._task_for(silo, deferred)

            return long_poll(self._changed, wait_s, find)

    def _task_for(self, silo: str, deferred: frozenset[str]) -> pb.Task | None:
        """As at the coordinator (coordinator.tasks): the first study, oldest first, with work for the silo."""
        studies = sorted(self.studies.values(), key=lambda s: s.proposed_at)
        return first_task(self._task_in(st, silo, deferred) for st in studies)

    def _task_in(self, st: RegionalStudy, silo: str, deferred: frozenset[str]) -> pb.Task | None:
        """A proposal until the region answered upstream, then the relayed task the silo takes part in."""
        if not st.answered_upstream:
            return proposal(st.study_id, st.spec_json, enrolling=True, answered=silo in st.answers, deferred=deferred)
        if st.work is not None and silo in st.work.participants:
            return st.work.task_for(silo)
        return None

    # --- proposals ----------------------------------------------------------------------------------
    def open_proposal(self, study_id: str, spec_json: str) -> StudySpec:
        spec = StudySpec.from_json(spec_json)  # SpecError: the caller declines upstream
        with self._lock:
            if study_id not in self.studies:
                self.studies[study_id] = RegionalStudy(study_id, spec, spec_json, proposed_at=self.clock())
                self.audit("study_received", study=study_id, spec_sha256=spec.sha256())
                log.info("study %s proposed to region %s's silos", study_id, self.name)
                self._changed.notify_all()
        return spec

    def pending_proposals(self) -> list[str]:
        with self._lock:
            return [s.study_id for s in self.studies.values() if not s.answered_upstream]

    def answer_proposal(self, silo: str, ans: pb.ProposalAnswer) -> None:
        """Recorded by the coordinator's rules (coordinator.enrollment): received and audited, a retried
        answer kept as it was, an acceptance only of the spec the study has."""
        with self._lock:
            st = self._study(ans.study_id)
            audit_received(self.audit, "proposal_answer", silo, st.study_id, 0, ans)
            recorded = st.answers.get(silo)
            if repeats(recorded.accept if recorded is not None else None, ans):
                return
            if st.answered_upstream:
                raise Refused(f"region {self.name} already answered study {st.study_id} upstream; it is no longer enrolling")
            check_approval(ans, st.spec.sha256())
            st.answers[silo] = ans
            audit_answer(self.audit, silo, ans)
            self._changed.notify_all()

    def ready_answers(self) -> list[pb.ProposalAnswer]:
        """Upstream answers for proposals every expected silo answered (members fixed from here on)."""
        out = []
        with self._lock:
            now = self.clock()
            recent = {s.name for s in self.silos.values() if now - s.last_seen < RECENT_S}
            for st in self.studies.values():
                if st.answered_upstream:
                    continue
                answered = set(st.answers)
                timed_out = now - st.proposed_at >= self.enrollment_timeout_s
                if self.expected_silos is not None:
                    ready = len(answered) >= self.expected_silos or timed_out
                else:
                    ready = (bool(answered) and recent <= answered) or timed_out
                if not ready:
                    continue
                accepted = sorted(s for s, a in st.answers.items() if a.accept)
                declined = {s: a.reason for s, a in st.answers.items() if not a.accept}
                st.members = accepted
                reason = (f"region {self.name}: accepted by {', '.join(accepted) or 'none'}"
                          + "".join(f"; declined by {s} ({r[:200]})" for s, r in sorted(declined.items())))
                if not st.answers:
                    reason = f"region {self.name}: no silo answered within {self.enrollment_timeout_s:g} s"
                # Under CKKS the study secret is wrapped for each member ("<region>/<member>"), never
                # for the region: upstream learns the members' wrap keys with the answer.
                member_keys = ({s: self.silos[s].wrap_public_key for s in accepted if s in self.silos}
                               if st.spec.protocol.encrypted else {})
                out.append(pb.ProposalAnswer(
                    study_id=st.study_id, accept=bool(accepted), reason=reason[:2000], spec_sha256=st.spec.sha256(),
                    train_samples=sum(st.answers[s].train_samples for s in accepted),
                    test_samples=sum(st.answers[s].test_samples for s in accepted), member_wrap_keys=member_keys))
        return out

    def mark_answered(self, study_id: str) -> None:
        with self._lock:
            st = self._study(study_id)
            st.answered_upstream = True
            protocol = st.spec.protocol
            if not protocol.encrypted and protocol.codec.sparse:
                st.feedback = ErrorFeedback(protocol.uplink_codec())
            self._changed.notify_all()

    # --- upstream work ---------------------------------------------------------------------------------
    def has_keys(self, study_id: str) -> bool:
        with self._lock:
            return self._study(study_id).keys is not None

    def start_keygen(self, task: pb.Task, deadline: float) -> KeygenWork:
        with self._lock:
            st = self._member_study_for_work(task)
            # Relayed as the central coordinator sent it: the region's members are listed as
            # "<region>/<member>" with the wrap keys this region sent in its answer.
            for m in st.members:
                key = task.participant_keys.get(f"{self.name}{SEP}{m}")
                if key is None or (m in self.silos and key != self.silos[m].wrap_public_key):
                    raise Refused(f"study {st.study_id}: the KEYGEN task does not list member {m}'s wrap key as this "
                                  "region sent it; no key holder of this region generates keys for it")
            work = KeygenWork(task, st.spec, [st.members[0]], secrets.token_hex(16), deadline,
                              participant_keys=dict(task.participant_keys))
            return self._set_work(st, work)

    def start_round(self, task: pb.Task, deadline: float) -> RoundWork:
        st = self._member_study_for_work(task)
        n_values = self._he_values(st) if st.spec.protocol.encrypted else 0
        with self._lock:
            work = RoundWork(task, st.spec, list(st.members), secrets.token_hex(16), deadline, keys=st.keys,
                             n_values=n_values, feedback=st.feedback)
            return self._set_work(st, work)

    def start_finalize(self, task: pb.Task, deadline: float) -> FinalizeWork:
        with self._lock:
            st = self._member_study_for_work(task)
            return self._set_work(st, FinalizeWork(task, st.spec, list(st.members), secrets.token_hex(16), deadline))

    def _set_work(self, st: RegionalStudy, work: Work) -> Any:
        st.work = work
        log.info("study %s: relaying %s to %s", st.study_id, type(work).__name__, ", ".join(work.participants))
        self._changed.notify_all()
        return work

    def wait(self, work: Work) -> None:
        """Until every participant answered, or the work's deadline."""
        with self._lock:
            while not work.complete and not work.expired:
                self._changed.wait(timeout=min(1.0, max(0.01, work.deadline - self.clock())))

    def end(self, work: Work) -> None:
        with self._lock:
            st = self.studies.get(work.upstream.study_id)
            if st is not None and st.work is work:
                st.work = None
            self._changed.notify_all()

    def _he_values(self, st: RegionalStudy) -> int:
        """Values per encrypted update: the model's (from version 0), or the round's random-k share."""
        _, v0 = self.model(None, st.study_id, 0)
        return st.spec.protocol.encrypted_values(sum(a.size for a in decode_tensors(v0)[1]))

    # --- silo inputs -------------------------------------------------------------------------------------
    def _work_of(self, silo: str, study_id: str, kind: type) -> Any:
        st = self._study(study_id)
        if not isinstance(st.work, kind):
            raise Refused(f"study {study_id} has no open regional {kind.__name__} for silo {silo}")
        return st.work

    def accept_update(self, silo: str, header: pb.BlobHeader, data: bytes) -> None:
        with self._lock:
            work: RoundWork = self._work_of(silo, header.ref.study_id, RoundWork)
            work.check(silo, header.round, header.nonce)
            work.add_update(silo, header, data)
            self._audit_received("update", silo, work, len(data), header.sha256)
            self._changed.notify_all()

    def accept_key_bundle(self, silo: str, study_id: str, data: bytes, sha: str) -> None:
        """Keep the region's members' wrapped keys from its key holder silo's bundle (which goes
        upstream whole, see KeygenWork)."""
        with self._lock:
            work: KeygenWork = self._work_of(silo, study_id, KeygenWork)
            st = self._study(work.upstream.study_id)
            st.keys = work.accept_bundle(silo, data, st.members, self.name)
            self._keep_keys(study_id, st.keys)
            self._audit_received("key_bundle", silo, work, len(data), sha)
            self._changed.notify_all()

    def install_keys(self, study_id: str, public_context: bytes, wrapped_blob: bytes) -> None:
        """The key material of a study whose key holder is outside the region, as fetched upstream:
        the public context and the region's wrapped-key blob, `{member: base64(wrapped)}`
        (coordinator.key_recipients). Only the members' own wrapped keys are kept."""
        with self._lock:
            st = self._study(study_id)
            st.keys = keys_from_upstream(public_context, wrapped_blob, st.members)
            self._keep_keys(study_id, st.keys)
            log.info("study %s: region %s holds the public context (sha256 %s) and the wrapped keys of %s", study_id,
                     self.name, sha256_hex(public_context)[:12], ", ".join(sorted(st.keys.wrapped)))
            self._changed.notify_all()

    def _keep_keys(self, study_id: str, keys: KeyMaterial) -> None:
        """What the region holds of the study's keys, on disk and open to inspection: the public
        context and its members' secrets, wrapped for silo keys it does not have."""
        if self.keys_dir is None:
            return
        write_secret_file(self.keys_dir / f"{sha256_hex(study_id.encode())[:16]}.bundle.json", keys.to_json())

    def accept_final_model(self, silo: str, header: pb.BlobHeader, data: bytes) -> None:
        with self._lock:
            work: FinalizeWork = self._work_of(silo, header.ref.study_id, FinalizeWork)
            work.check(silo, header.round, header.nonce)
            work.accept_final_model(silo, data)
            self._audit_received("final_model", silo, work, len(data), header.sha256)
            self._changed.notify_all()

    def report_metrics(self, silo: str, rep: pb.MetricsReport) -> None:
        with self._lock:
            st = self._study(rep.study_id)
            work = st.work
            if not isinstance(work, (RoundWork, FinalizeWork)):
                raise Refused(f"study {rep.study_id} has no open regional round for silo {silo}")
            work.check(silo, rep.round, rep.nonce)
            audit_received(self.audit, "metrics", silo, st.study_id, rep.round, rep)
            if rep.skipped:
                if not isinstance(work, RoundWork):
                    raise Refused("a round can only be skipped while the study is training")
                work.skip(silo, rep.skip_reason[:2000])
                self.audit("round_skipped", study=st.study_id, silo=silo, round=rep.round, reason=rep.skip_reason[:500])
            else:
                try:
                    work.metrics.add(silo, rep)
                except Refused as e:
                    self.audit("update_refused", study=st.study_id, silo=silo, round=rep.round, reason=str(e)[:500])
                    raise
            self._changed.notify_all()

    def _audit_received(self, kind: str, silo: str, work: Work, size: int, sha: str) -> None:
        self.audit("message_received", study=work.upstream.study_id, silo=silo, kind=kind, round=work.upstream.round,
                   size=size, sha256=sha)

    # --- blobs for silos ------------------------------------------------------------------------------------
    def model(self, silo: str | None, study_id: str, version: int) -> tuple[pb.BlobHeader, bytes]:
        """A model version for a member silo: fetched from the central coordinator once, then served
        from here to every silo of the region (header and bytes as the central coordinator sent them)."""
        with self._lock:
            st = self._study(study_id)
            if silo is not None and silo not in st.members:
                raise Refused(f"silo {silo} is not a participant of study {study_id} in region {self.name}")
            if version in st.models:
                return st.models[version]
        with self._fetching:  # silos asking for the same version wait for one upstream fetch
            with self._lock:
                if version in st.models:
                    return st.models[version]
            header, data = self.fetch_model(study_id, version)
            with self._lock:
                st.models[version] = (header, data)
                for old in sorted(st.models)[:-MODEL_VERSIONS_KEPT]:
                    del st.models[old]
            self.audit("model_received", study=study_id, version=version, sha256=header.sha256, size=len(data))
            return header, data

    def wrapped_key(self, silo: str, study_id: str) -> bytes:
        with self._lock:
            st = self._study(study_id)
            if st.keys is None or silo not in st.keys.wrapped:
                raise NotFound(f"region {self.name} holds no wrapped key for silo {silo} in study {study_id}")
            return st.keys.wrapped[silo]

    def public_context(self, silo: str, study_id: str) -> bytes:
        with self._lock:
            st = self._study(study_id)
            if st.keys is None or silo not in st.members:
                raise NotFound(f"region {self.name} holds no public context of study {study_id} for silo {silo}")
            return st.keys.public_context

    # --- helpers --------------------------------------------------------------------------------------------
    def _study(self, study_id: str) -> RegionalStudy:
        st = self.studies.get(study_id)
        if st is None:
            raise NotFound(f"study {study_id!r} was not proposed to region {self.name}")
        return st

    def _member_study_for_work(self, task: pb.Task) -> RegionalStudy:
        with self._lock:
            st = self.studies.get(task.study_id)
            if st is None:  # e.g. this region restarted mid-study: its silos' approvals are not known here
                raise Refused(f"study {task.study_id} was not enrolled through this region process")
            if not st.members:
                raise Refused(f"no silo of region {self.name} takes part in study {task.study_id}")
            return st


__all__ = ["Region", "RegionalStudy", "SiloLink", "refusal_reason"]
