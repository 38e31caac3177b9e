"""The silo node: dial out, take tasks, keep every record inside the hospital.

`SiloNode.run()` joins the coordinator and long-polls for tasks. A proposal is approved
(by policy or by a person) before any data is read; training tasks check the privacy
budget before touching data; everything that leaves is written to the node's audit log
first (kind, size, SHA-256, round, ε). Raw records never leave this process: only model
deltas (optionally DP-noised and CKKS-encrypted), metrics and privacy accounting do.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from compliance.audit import Event
from compliance.durability import Durability
from compliance.node_log import open_node_log
from compliance.witness import SignedHead, WitnessError, witness
from compliance.keys import write_secret_file
from compliance.ledger import PrivacyLedger
from coordinator.api import federation_pb2 as pb
from coordinator.api.chunks import sha256_hex
from coordinator.api.protocol import (
    TENSORS,
    KeyBundle,
    ProtocolError,
    ServerOptimizerName,
    StudyKind,
    UpdateMetadata,
    VersionKind,
    VersionMetadata,
    check_study_id,
    decode_screening_scalars,
)
from coordinator.api.server_step import ServerOptimizer, build_server_optimizer
from coordinator.api.study import SpecError, StudySpec
from coordinator.api.tensors import encode_tensors
from pipelines.dataset import split_silo
from pipelines.ingest import STEPS, IngestResult, ingest_silo
from pipelines.wearables.stream_store import Snapshot, StreamStore, with_snapshot
from pipelines.normalise import fit_on_training
from pipelines.parallel import start_forkserver
from privacy.dp import noise_for_target
from privacy.he import SiloKeyPair, StudyKeys, unwrap_secret, wrap_secret
from privacy.he.screening import decrypt_scalar
from silo_node.analysis import is_analysis, run_analysis
from silo_node.approval import ApprovalBook, policy_decision
from silo_node.attacks import AttackingTrainer
from silo_node.client import WAITING_LOG_EVERY_S, CoordinatorClient, CoordinatorRefusal, CoordinatorUnreachable
from silo_node.config import NodeConfig
from silo_node.pseudonym_key import KEY_FILE, load_or_create_key
from silo_node.streams.service import stream_store_dir
from silo_node.private_round import BudgetRefused, PrivateRound
from silo_node.trainer import LocalTrainer, pick_device
from coordinator.api.codecs import ErrorFeedback
from silo_node.update import build_feedback, encode_update, resolve_version
from silo_node.state_files import LEDGER_FILE, STATE_FILES, WRAP_KEY_FILE  # noqa: F401 - re-exported

log = logging.getLogger(__name__)
WITNESS_EVERY_S = 30.0  # how often the node's signed audit head is gossiped with the coordinator


@dataclass
class StudyState:
    spec: StudySpec
    trainer: LocalTrainer
    noise_multiplier: float | None
    versions: dict[int, tuple[list[str], list[np.ndarray]]]
    secret_context: bytes | None = None
    feedback: ErrorFeedback | None = None  # residual of a sparse codec, kept across rounds and restarts
    link_bytes_per_s: float | None = None  # measured on the last update upload
    server_step: ServerOptimizer | None = None  # CKKS + a server optimiser: the step every silo applies


class SiloNode:
    def __init__(self, config: NodeConfig, client: CoordinatorClient, *,
                 durability: Durability = Durability.POWER_LOSS) -> None:
        """`durability`: not configuration; only `fedcare simulate` lowers it (compliance/durability.py)."""
        self.config = config
        self.client = client
        state = Path(config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        # A node with a ledger, approvals or keys but no audit log is refused, never given a fresh log.
        self.audit = open_node_log(state, node=config.name, role="silo",
                                   state_files=STATE_FILES, durability=durability)
        self._heads_exchanged_at = -math.inf
        self._count_after_exchange = -1  # this log's entry count right after the last exchange
        self.ledger = PrivacyLedger(state / LEDGER_FILE, durability=durability)
        self.approvals = ApprovalBook(state)
        self.wrap_keys = _load_or_create_wrap_keys(state / WRAP_KEY_FILE)
        self.studies: dict[str, StudyState] = {}
        self.finished: set[str] = set()
        self.device = pick_device(config.device)
        self.attack = config.attack.build() if config.attack is not None else None
        self._refusals_seen: set[tuple[str, str, int, str]] = set()
        self._wait_reason_said = ""  # the last TASK_WAIT reason logged
        self._idle_said_at = time.monotonic()

    # --- the loop ----------------------------------------------------------------------------
    def run(self, *, exit_after_studies: int | None = None) -> None:
        """Serve until `exit_after_studies` studies finished (None: for ever).

        A coordinator refusal never ends the node: it is logged once with its reason, audited,
        and the loop goes on (the next pull brings whatever the coordinator wants now). An
        outage is waited out inside the client (silo_node.client); only a `max_retry_s` that
        runs out ends the node, with CoordinatorUnreachable.
        """
        start_forkserver(self.config.data.workers)  # in the background: the first ingestion's workers are up at once
        self.start()
        while exit_after_studies is None or len(self.finished) < exit_after_studies:
            self.step()

    def start(self) -> None:
        """Join the coordinator and audit the node's configuration: what `run` does first."""
        self._join()
        self.audit.append("node_configured", silo=self.config.name, dataset=self.config.data.dataset,
                          epsilon_cap=self.config.privacy.epsilon_cap, approval=self.config.approval.mode)
        log.info("silo %s joined the coordinator at %s", self.config.name, self.config.coordinator)

    def step(self) -> pb.Task | None:
        """One turn of the loop: answer decided proposals, pull a task (waiting up to poll_wait_s)
        and handle it. The task pulled (TASK_WAIT when there was none), or None after a refused
        pull. `fedcare simulate` drives simulated hospitals turn by turn with it."""
        self._answer_decided_proposals()
        task = self._pull()
        if task is None:
            return None
        if task.kind == pb.TASK_WAIT:
            if task.wait_reason and task.wait_reason != self._wait_reason_said:  # the coordinator's why, said once
                self._wait_reason_said = task.wait_reason
                log.warning("waiting: %s", task.wait_reason)
            self._say_what_we_wait_for()
        else:
            self._idle_said_at = time.monotonic()
        try:
            self.handle(task)
            self._witness_heads(now=task.kind == pb.TASK_FINALIZE)
        except CoordinatorRefusal as e:
            # e.g. the round closed while we trained: the next pull brings the current task.
            self._refused(e, what=f"task {pb.TaskKind.Name(task.kind)}", study=task.study_id, round_=task.round)
        return task

    def _join(self) -> None:
        self.client.join(sorted(self._modalities()), self.wrap_keys.public_bytes())

    def _pull(self) -> pb.Task | None:
        """The next task; None after a refused pull (the node joins again and goes on)."""
        try:
            return self.client.pull_task(self.config.poll_wait_s, deferred=self._deferred())
        except CoordinatorRefusal as e:
            # e.g. a coordinator restored from a backup that does not know this silo yet.
            self._refused(e, what="pull task", study="", round_=0)
            time.sleep(min(self.config.poll_wait_s, 5.0))
            try:
                self._join()
            except CoordinatorRefusal as again:
                self._refused(again, what="join", study="", round_=0)
            return None

    def _refused(self, e: CoordinatorRefusal, *, what: str, study: str, round_: int) -> None:
        """A coordinator refusal: logged and audited once (a repeat is only a debug line); the node goes on."""
        key = (what, study, round_, str(e))
        if key in self._refusals_seen:
            log.debug("%s refused again: %s", what, e)
            return
        self._refusals_seen.add(key)
        where = f" (study {study}, round {round_})" if study else ""
        log.warning("%s%s: %s; the node goes on", what, where, e)
        self.audit.append(Event.REFUSAL_RECEIVED, study=study, round=round_, request=what, code=e.code.name,
                          reason=str(e)[:500])

    def _witness_heads(self, *, now: bool = False) -> None:
        """Gossip signed audit heads with the coordinator, at most every WITNESS_EVERY_S (or `now`):
        each side records the other's in its own log (compliance.witness), so neither log can
        later be cut back or rewritten unseen. A failed exchange is logged; the next one retries.
        Nothing new in this log since the last exchange: an idle node stays quiet (no entries)."""
        mine = SignedHead.of(self.audit)
        if not now and (time.monotonic() - self._heads_exchanged_at < WITNESS_EVERY_S
                        or mine.count == self._count_after_exchange):
            return
        self._heads_exchanged_at = time.monotonic()
        try:
            theirs = self.client.exchange_heads(pb.SignedHead(**mine.as_dict()))
            self._count_after_exchange = witness(self.audit, SignedHead.from_message(theirs)).index
        except CoordinatorRefusal as e:
            if e.code == grpc.StatusCode.UNIMPLEMENTED:  # e.g. a regional aggregator: say so once, stop asking
                self._heads_exchanged_at = math.inf
            log.warning("audit heads not exchanged with the coordinator: %s", e)
        except (CoordinatorUnreachable, WitnessError) as e:
            log.warning("audit heads not exchanged with the coordinator: %s", e)

    def _say_what_we_wait_for(self) -> None:
        """One log line every few minutes while there is no work: what this node is waiting for."""
        if time.monotonic() - self._idle_said_at < WAITING_LOG_EVERY_S:
            return
        self._idle_said_at = time.monotonic()
        undecided = self._deferred()
        running = sorted(set(self.studies) - self.finished)
        log.info("silo %s is waiting for work from the coordinator: %s%s", self.config.name,
                 f"studies in progress here: {', '.join(running)}" if running else "no study in progress here",
                 f"; awaiting your decision: {', '.join(f'fedcare silo approve|reject {s}' for s in undecided)}"
                 if undecided else "")

    def handle(self, task: pb.Task) -> None:
        handlers = {pb.TASK_PROPOSAL: self.on_proposal, pb.TASK_KEYGEN: self.on_keygen, pb.TASK_WRAP_KEY: self.on_wrap_key,
                    pb.TASK_TRAIN: self.on_train, pb.TASK_SCREEN: self.on_screen, pb.TASK_FINALIZE: self.on_finalize}
        if task.kind not in handlers:
            return
        try:
            handlers[task.kind](task)
        except (CoordinatorRefusal, CoordinatorUnreachable):
            raise
        except Exception as e:  # noqa: BLE001 - one failed task must not take the node down
            log.exception("task %s of study %s failed", pb.TaskKind.Name(task.kind), task.study_id)
            if task.kind == pb.TASK_TRAIN:  # tell the coordinator, so the round need not wait for its deadline
                reason = f"silo error: {type(e).__name__}: {e}"[:500]
                self.audit.append("round_skipped", study=task.study_id, round=task.round, reason=reason)
                self._report(pb.MetricsReport(study_id=task.study_id, round=task.round, nonce=task.nonce,
                                                    model_version=task.model_version, skipped=True, skip_reason=reason))

    def _modalities(self) -> set[str]:
        d = self.config.data
        return {m for m, present in (("ehr", d.fhir or d.tabular), ("image", d.dicom or d.dicomweb), ("signal", d.wearables))
                if present}

    def _deferred(self) -> list[str]:
        return [p["study_id"] for p in self.approvals.proposals() if p["decision"] is None]

    # --- proposals ---------------------------------------------------------------------------------
    def on_proposal(self, task: pb.Task) -> None:
        """Record the proposal and decide (policy or person). A proposal this node cannot handle
        (an id the protocol refuses, a spec that does not parse, a field the audit guard or the
        approval store refuses) is answered with a refusal and the reason, never left to come
        back at every poll."""
        try:
            check_study_id(task.study_id)
            spec = StudySpec.from_json(task.spec_json)
            self.audit.append("study_received", study=task.study_id, spec_sha256=spec.sha256())
            self.approvals.record_proposal(task.study_id, spec, others=list(task.other_silos))
        except (ProtocolError, SpecError, ValueError, OSError) as e:
            self._refuse_proposal(task.study_id, f"silo cannot handle this proposal: {e}")
            return
        decision = self.approvals.valid_decision(task.study_id, spec)
        if decision is None and self.config.approval.mode == "auto":
            ok, reason = policy_decision(spec, self.config.approval, self.config.privacy)
            decision = self.approvals.decide(task.study_id, approved=ok, reason=reason, by="auto-approval policy")
        if decision is None:
            log.info("study %s awaits a decision: fedcare silo approve|reject %s", task.study_id, task.study_id)
            return
        self._answer(task.study_id, spec, decision.approved, decision.reason, decision.by)

    def _refuse_proposal(self, study_id: str, reason: str) -> None:
        """Decline a proposal the node cannot record. Audited first, as every message that leaves;
        an id the audit log would not take is audited by its hash."""
        log.warning("study %r refused: %s", study_id[:80], reason)
        answer = pb.ProposalAnswer(study_id=study_id, accept=False, reason=reason[:500], silo=self.config.name)
        wire = answer.SerializeToString(deterministic=True)
        try:
            check_study_id(study_id)
            self.audit.append("study_rejected", study=study_id, by="node", reason=reason[:500])
            self._audit_message("proposal_answer", study_id, 0, wire)
        except (ProtocolError, ValueError):
            self._audit_message("proposal_answer", f"unreadable-id-{sha256_hex(study_id.encode())[:16]}", 0, wire)
        self.client.answer(answer)

    def _answer_decided_proposals(self) -> None:
        for p in self.approvals.proposals():
            sid = p["study_id"]
            if p["decision"] is not None and not p["answered"]:
                spec = self.approvals.spec_of(sid)
                if self.approvals.valid_decision(sid, spec) is not None:
                    try:
                        self._answer(sid, spec, p["decision"]["approved"], p["decision"]["reason"], p["decision"]["by"])
                    except CoordinatorRefusal as e:  # e.g. the study started meanwhile and takes no late silos
                        self._refused(e, what="answer proposal", study=sid, round_=0)

    def _answer(self, study_id: str, spec: StudySpec, approved: bool, reason: str, by: str) -> None:
        self.audit.append("study_approved" if approved else "study_rejected", study=study_id, by=by, reason=reason,
                          spec_sha256=spec.sha256())
        answer = pb.ProposalAnswer(study_id=study_id, accept=approved, reason=reason, spec_sha256=spec.sha256())
        if approved and spec.kind is StudyKind.TRAINING:  # an analysis reads its data at its one task
            try:
                state = self.studies.get(study_id) or self._prepare(study_id, spec)  # prepared once, not per try
            except Exception as e:  # noqa: BLE001 - a study we cannot prepare is declined, with the reason
                log.exception("cannot prepare study %s", study_id)
                answer.accept, answer.reason = False, f"silo could not prepare its data: {e}"[:500]
            else:
                self.studies[study_id] = state
                answer.train_samples, answer.test_samples = state.trainer.n_train, len(state.trainer.test_set)
        try:
            self._answer_msg(answer)
        except CoordinatorRefusal:
            # The coordinator heard the answer and will not take it (the study no longer enrols):
            # asking again cannot change that, so it counts as answered and the data is let go.
            self.approvals.mark_answered(study_id)
            self.studies.pop(study_id, None)
            raise
        self.approvals.mark_answered(study_id)

    def _ingest(self, study_id: str, spec: StudySpec) -> IngestResult:
        """The study's cohort from this node's data (de-identified), the ingestion audited by its counts."""
        d = self.config.data
        snapshot = self._stream_snapshot()  # fixed before reading, so what the study trains on is named in the audit
        result = ingest_silo(fhir=d.fhir, tabular=d.tabular, dicom=d.dicom, wearables=d.wearables, dicomweb=d.dicomweb,
                             tables=d.tables, split_file=d.split_file, fhir_mrn_system=d.fhir_mrn_system,
                             fhir_validation=d.fhir_validation, limits=d.limits, workers=d.workers, cohort=spec.cohort,
                             wearable_mapping=self.config.wearables, steps=with_snapshot(STEPS, snapshot),
                             pseudonym_key=self._pseudonym_key(), cache_dir=Path(self.config.state_dir) / "cache")
        report = result.report.model_dump(mode="json")
        self.audit.append("data_ingested", study=study_id, report=_counts_only(report),
                          **({"stream_snapshot": snapshot.audit()} if snapshot is not None else {}))
        return result

    def _stream_snapshot(self) -> Snapshot | None:
        """With [streams]: the stream store's rows committed by now, which this study's ingestion windows."""
        if self.config.streams is None:
            return None
        with StreamStore(stream_store_dir(Path(self.config.state_dir))) as store:
            return store.snapshot()

    def _prepare(self, study_id: str, spec: StudySpec) -> StudyState:
        result = self._ingest(study_id, spec)
        c = spec.cohort
        train, validation, test = split_silo(result.dataset, test_fraction=c.test_fraction, seed=spec.training.seed,
                                             validation_fraction=c.validation_fraction, stratify=c.stratify_split,
                                             by_column=c.split == "column")
        sizes = {"train": len(train), "validation": len(validation), "test": len(test)}
        log.info("study %s: split by %s: %s (data named a part for %s)", study_id, c.split, sizes,
                 result.report.split_assigned)
        self.audit.append("data_split", study=study_id, by=c.split, sizes=sizes, assigned=result.report.split_assigned)
        train, validation, test = fit_on_training(train, validation, test, features=c.features)  # no test row informs it
        if self.attack is not None:  # a deliberately malicious node, for robustness tests only
            log.warning("THIS NODE IS CONFIGURED TO ATTACK THE FEDERATION: %r", self.attack)
            self.audit.append("attack_configured", study=study_id, kind=self.config.attack.kind)
            train = self.attack.poison(train)
        trainer = LocalTrainer(spec, train, test, validation=validation, device=self.device)
        if self.attack is not None:  # the attack wraps the trainer; nothing else in the node knows of it
            trainer = AttackingTrainer(trainer, self.attack, benign_runs=self.config.attack.benign_runs)
        noise = spec.privacy.noise_multiplier
        if spec.privacy.dp and noise is None:
            noise = noise_for_target(target_epsilon=spec.privacy.target_epsilon, delta=spec.privacy.delta,
                                     sample_rate=trainer.sample_rate(),
                                     steps=trainer.steps_per_round() * spec.training.rounds, accountant=spec.privacy.accountant)
        log.info("study %s: %d train / %d test samples, noise multiplier %s", study_id, len(train), len(test), noise)
        feedback = build_feedback(spec)
        if feedback is not None:
            path = self._feedback_path(study_id)
            if path.exists():
                n = sum(p.numel() for p in trainer.model.parameters())
                feedback.restore(path.read_bytes(), max_values=n)
                log.info("study %s: restored the error-feedback residual from %s", study_id, path)
        return StudyState(spec=spec, trainer=trainer, noise_multiplier=noise, versions={}, feedback=feedback)

    def _feedback_path(self, study_id: str) -> Path:
        return Path(self.config.state_dir) / "feedback" / f"{study_id}.fcup"

    def _save_feedback(self, study_id: str, feedback: ErrorFeedback) -> None:
        """Atomically persist the residual: a restarted node carries on with it (nothing lost)."""
        write_secret_file(self._feedback_path(study_id), feedback.state_bytes())

    def _pseudonym_key(self) -> bytes:
        return load_or_create_key(Path(self.config.state_dir) / KEY_FILE)

    # --- keys ----------------------------------------------------------------------------------------
    def on_keygen(self, task: pb.Task) -> None:
        state = self._state(task)
        keys = StudyKeys.generate(state.spec.protocol.encryption.he_mode)
        secret = keys.secret_context()
        wrapped = _wrapped_for(secret, task)
        bundle = KeyBundle(public_context=keys.public_context(), wrapped=wrapped).to_json()
        header = pb.BlobHeader(ref=pb.BlobRef(study_id=task.study_id, kind=pb.BLOB_KEY_BUNDLE))
        self._send(header, bundle, kind="key_bundle", study=task.study_id, round_=0)
        state.secret_context = secret
        log.info("study %s: generated the CKKS keys and wrapped them for %d silos", task.study_id, len(wrapped))

    def on_wrap_key(self, task: pb.Task) -> None:
        """Key holder, late join: wrap the study's existing secret for the silos that enrolled after
        KEYGEN; the bundle carries the study's own public context, so the keys stay the same."""
        self._state(task)
        wrapped = _wrapped_for(self._secret_context(task.study_id), task)
        _, public = self.client.fetch(task.study_id, pb.BLOB_PUBLIC_CONTEXT)
        bundle = KeyBundle(public_context=bytes(public), wrapped=wrapped).to_json()
        header = pb.BlobHeader(ref=pb.BlobRef(study_id=task.study_id, kind=pb.BLOB_KEY_BUNDLE), round=task.round)
        self._send(header, bundle, kind="key_bundle", study=task.study_id, round_=task.round)
        log.info("study %s: wrapped the CKKS secret for %s, who joined late", task.study_id, ", ".join(sorted(wrapped)))

    def _secret_context(self, study_id: str) -> bytes:
        state = self.studies[study_id]
        if state.secret_context is None:
            _, blob = self.client.fetch(study_id, pb.BLOB_WRAPPED_KEY)
            state.secret_context = unwrap_secret(bytes(blob), self.wrap_keys, context=study_id.encode())
        return state.secret_context

    # --- rounds ------------------------------------------------------------------------------------
    def _model(self, study_id: str, version: int) -> tuple[list[str], list[np.ndarray]]:
        """Weights of a model version. Under CKKS with a server optimiser each version is the
        previous one plus the optimiser's step, whose state must be the one every other silo
        has: when this node's optimiser is not at version - 1 (a restart, or the release of an
        earlier version), it replays the study's versions from version 0."""
        state = self.studies[study_id]
        if version in state.versions:
            return state.versions[version]
        protocol = state.spec.protocol
        if protocol.encrypted and protocol.server_optimizer is not ServerOptimizerName.NONE and version > 0:
            if state.server_step is None or state.server_step.steps != version - 1:
                a = state.spec.aggregation
                state.server_step = build_server_optimizer(a.server_optimizer, a.server_learning_rate,
                                                           a.server_momentum)
                state.versions = {v: w for v, w in state.versions.items() if v == 0}
                for v in range(1, version):
                    self._fetch_version(study_id, v)
        return self._fetch_version(study_id, version)

    def _fetch_version(self, study_id: str, version: int) -> tuple[list[str], list[np.ndarray]]:
        state = self.studies[study_id]
        if version not in state.versions:
            header, data = self.client.fetch(study_id, pb.BLOB_MODEL, version=version)
            kind = VersionKind.of(header.encoding)
            if kind is VersionKind.SEEDED:  # only the hash travelled: rebuild version 0 here
                names, weights = state.trainer.initial_weights()
                if _weights_sha(names, weights) == VersionMetadata.from_json(header.metadata_json or "{}").model_sha256:
                    state.versions[version] = (names, weights)
                    self.audit.append("model_received", study=study_id, version=version, size=0,
                                      sha256=_weights_sha(names, weights), rebuilt_from_seed=True)
                    return state.versions[version]
                raise ValueError(f"study {study_id}: version 0 rebuilt from the spec's seed at this silo differs from "
                                 "the coordinator's (a different torch build?); the study needs compression.downlink "
                                 "= 'none', which sends version 0 in full")
            base = self._model(study_id, version - 1) if kind is not VersionKind.FULL else None
            encrypted = kind is VersionKind.ENCRYPTED
            secret = self._secret_context(study_id) if encrypted else None
            step = state.server_step.step if encrypted and state.server_step is not None else None
            state.versions[version] = resolve_version(data, header.encoding, header.metadata_json, base=base,
                                                      secret_context=secret, server_step=step)
            state.versions = {v: w for v, w in state.versions.items() if v >= version - 1}
            self.audit.append("model_received", study=study_id, version=version, sha256=header.sha256, size=len(data))
        return state.versions[version]

    def _state(self, task: pb.Task) -> StudyState:
        """The study's state; after a restart, rebuilt from the approval on disk (data re-ingested)."""
        if task.study_id not in self.studies:
            spec = StudySpec.from_json(task.spec_json)
            decision = self.approvals.valid_decision(task.study_id, spec)
            if decision is None or not decision.approved:
                raise PermissionError(f"study {task.study_id} has no valid approval at this node")
            log.info("resuming study %s after a restart", task.study_id)
            self.studies[task.study_id] = self._prepare(task.study_id, spec)
        return self.studies[task.study_id]

    def on_train(self, task: pb.Task) -> None:
        if is_analysis(task):  # an analysis study's one round: release statistics (silo_node/analysis.py)
            run_analysis(self, task)
            return
        state = self._state(task)
        spec = state.spec
        names, weights = self._model(task.study_id, task.model_version)
        metrics = state.trainer.evaluate(weights)
        self._report(pb.MetricsReport(study_id=task.study_id, round=task.round, nonce=task.nonce,
                                            model_version=task.model_version, metrics=metrics,
                                            samples=len(state.trainer.test_set), model_sha256=_weights_sha(names, weights)))
        private = PrivateRound(state.trainer, spec=spec, ledger=self.ledger, silo=self.config.name,
                               dataset=self.config.data.dataset, epsilon_cap=self.config.privacy.epsilon_cap,
                               noise_multiplier=state.noise_multiplier)
        try:
            private.check_budget()
        except BudgetRefused as e:
            self.audit.append("budget_refused", study=task.study_id, round=task.round, epsilon_after=e.epsilon_after,
                              cap=e.cap)
            # ε only grows: no later local run fits under the cap either (budget_spent: an
            # asynchronous study then offers this silo no more tasks, so this is said once)
            self._report(pb.MetricsReport(study_id=task.study_id, round=task.round, nonce=task.nonce,
                                          model_version=task.model_version, skipped=True, skip_reason=str(e),
                                          budget_spent=True))
            log.warning("study %s round %d skipped: %s", task.study_id, task.round, e)
            return
        self.audit.append("round_joined", study=task.study_id, round=task.round)
        result = private.train(weights, study=task.study_id, round_=task.round, round_seed=task.round_seed)
        if self.config.train_delay_s:  # node config train_delay_s: a slow hospital, for benchmarks and tests only
            time.sleep(self.config.train_delay_s)
        secret = self._secret_context(task.study_id) if spec.protocol.encrypted else None
        encoded = encode_update(spec, names, result.delta, secret_context=secret, round_seed=task.round_seed,
                                feedback=state.feedback)
        if state.feedback is not None:
            self._save_feedback(task.study_id, state.feedback)
        # Scalars for the coordinator's silo selection (coordinator/selection.py).
        norm = float(np.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in result.delta)))
        meta = UpdateMetadata(privacy=result.privacy, train_loss=_finite_or_none(result.train_loss),
                              update_norm=_finite_or_none(norm), link_bytes_per_s=state.link_bytes_per_s)
        header = pb.BlobHeader(ref=pb.BlobRef(study_id=task.study_id, kind=pb.BLOB_UPDATE), round=task.round,
                               nonce=task.nonce, weight=result.weight, encoding=encoded.encoding,
                               metadata_json=meta.to_json())
        started = time.monotonic()
        try:
            self._send(header, encoded.data, kind="update", study=task.study_id, round_=task.round,
                       epsilon=result.privacy.epsilon)
        except CoordinatorRefusal:
            if state.feedback is not None and not spec.protocol.encrypted:  # e.g. too stale for the async buffer
                state.feedback.give_back(encoded.data)  # error feedback: sent with the next update, not lost
                self._save_feedback(task.study_id, state.feedback)
            raise
        state.link_bytes_per_s = len(encoded.data) / max(time.monotonic() - started, 1e-6)

    def on_screen(self, task: pb.Task) -> None:
        """Key holder: decrypt the round's screening scalars (squared norms / distances of updates)."""
        self._state(task)
        _, blob = self.client.fetch(task.study_id, pb.BLOB_SCREEN_SCALARS)
        secret = self._secret_context(task.study_id)
        values = [decrypt_scalar(secret, c) for c in decode_screening_scalars(blob)]
        report = pb.ScreenReport(silo=self.config.name, study_id=task.study_id, round=task.round, nonce=task.nonce,
                                 values=values)
        self._audit_message("screen_scalars", task.study_id, task.round, report.SerializeToString(deterministic=True))
        self.client.report_screen(report)
        log.info("round %d: decrypted %d screening scalars", task.round, len(values))

    def on_finalize(self, task: pb.Task) -> None:
        state = self._state(task)
        names, weights = self._model(task.study_id, task.model_version)
        if task.publish_model:
            header = pb.BlobHeader(ref=pb.BlobRef(study_id=task.study_id, kind=pb.BLOB_FINAL_MODEL), round=task.round,
                                   nonce=task.nonce, encoding=TENSORS)
            self._send(header, encode_tensors(names, weights), kind="final_model", study=task.study_id, round_=task.round)
        metrics = state.trainer.evaluate(weights)
        self._report(pb.MetricsReport(study_id=task.study_id, round=task.round, nonce=task.nonce,
                                            model_version=task.model_version, metrics=metrics,
                                            samples=len(state.trainer.test_set), model_sha256=_weights_sha(names, weights)))
        self.finished.add(task.study_id)
        log.info("study %s finished at this silo: AUROC %.3f", task.study_id, metrics.get("auroc", float("nan")))

    def _report(self, report: pb.MetricsReport) -> None:
        """Metrics (and skips) leave the silo too: audited like every outgoing message."""
        report.silo = self.config.name
        self._audit_message("metrics", report.study_id, report.round, report.SerializeToString(deterministic=True))
        self.client.report(report)

    def _answer_msg(self, answer: pb.ProposalAnswer) -> None:
        answer.silo = self.config.name
        self._audit_message("proposal_answer", answer.study_id, 0, answer.SerializeToString(deterministic=True))
        self.client.answer(answer)

    def _audit_message(self, kind: str, study: str, round_: int, wire: bytes) -> None:
        self.audit.append("message_sent", study=study, kind=kind, round=round_, size=len(wire), sha256=sha256_hex(wire))

    def _send(self, header: pb.BlobHeader, data: bytes, *, kind: str, study: str, round_: int, epsilon: float | None = None) -> None:
        """Audit first, then send: the log never misses a message that left."""
        header.sha256 = sha256_hex(data)
        self.audit.append("message_sent", study=study, kind=kind, round=round_, size=len(data), sha256=header.sha256,
                          epsilon=epsilon)
        self.client.push(header, data)


def _load_or_create_wrap_keys(path: Path) -> SiloKeyPair:
    """The node's X25519 key pair that study secrets are wrapped for; private, kept across restarts."""
    if path.exists():
        return SiloKeyPair.from_private_bytes(path.read_bytes())
    keys = SiloKeyPair.generate()
    if not write_secret_file(path, keys.private_bytes(), replace=False):  # another process made one first
        return SiloKeyPair.from_private_bytes(path.read_bytes())
    return keys


def _wrapped_for(secret: bytes, task: pb.Task) -> dict[str, bytes]:
    """The study secret wrapped (X25519 + AEAD, bound to the study id) for each of the task's participant keys."""
    context = task.study_id.encode()
    return {silo: wrap_secret(secret, pub, context=context) for silo, pub in task.participant_keys.items()}


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _weights_sha(names: list[str], weights: list[np.ndarray]) -> str:
    return sha256_hex(encode_tensors(names, weights))


def _counts_only(report: dict[str, Any]) -> dict[str, Any]:
    """The ingestion report without file paths (they may name patients)."""
    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("files", "paths", "items", "records")}
        if isinstance(x, list):
            return len(x)
        return x

    return strip(report)
