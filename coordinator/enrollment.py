"""Enrollment: silos join, answer study proposals, and receive the study's CKKS secret wrapped for them.

A silo accepts a study by the hash of the spec it approved; a proposal answered after
enrollment closed is refused unless the spec allows late joining (training.late_join), and
then the silo takes part from the next round. Under CKKS the key holder's bundle carries the
public context and the secret wrapped for each accepted silo (a region's members,
coordinator/key_recipients.py); a late joiner's key is wrapped later by a silo holding the
secret, with the same public context (TASK_WRAP_KEY, coordinator/late_keys.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from coordinator.api import federation_pb2 as pb
from coordinator.blobs import Incoming
from coordinator.errors import InvalidInput, Refused
from coordinator.key_recipients import (check_member_keys, check_silo_name, check_wrap_public_key,
                                        member_keys_from_json, member_keys_to_json, recipients)
from coordinator.keystore import KeyStore
from coordinator.late_keys import LateKeys
from coordinator.store import EnrollmentRow, SiloRow, Store, StudyRow
from coordinator.studies import Studies

log = logging.getLogger(__name__)

ENROLLING = "enrolling"
LATE_JOIN_STATES = ("keygen", "running")  # an acceptance then joins the next round if training.late_join


def check_approval(ans: pb.ProposalAnswer, spec_sha256: str) -> None:
    """An acceptance must name the hash of the spec the study has (the one the site approved)."""
    if ans.accept and ans.spec_sha256 != spec_sha256:
        raise Refused(f"the approved spec hash {ans.spec_sha256[:12]!r} does not match the study's spec "
                      f"({spec_sha256[:12]}…); approve the study's current spec and answer again")


def check_join(silo: str, wrap_public_key: bytes) -> None:
    """Who may join: a silo name the protocol allows (no "/") and a wrap key that is none or a 32-byte
    X25519 public key (coordinator.key_recipients). A region applies it to its own silos."""
    check_silo_name(silo)
    check_wrap_public_key(wrap_public_key)


def repeats(recorded: bool | None, ans: pb.ProposalAnswer) -> bool:
    """The answer repeats the one recorded (`recorded`: its accept, None if there is none): a retry
    after a lost reply, which keeps what was recorded and is not audited again."""
    return recorded is not None and recorded == ans.accept


def audit_answer(audit: Callable[..., None], silo: str, ans: pb.ProposalAnswer, **fields: Any) -> None:
    """A recorded answer's audit entry: study_approved or study_rejected, with the site's reason."""
    audit("study_approved" if ans.accept else "study_rejected", study=ans.study_id, silo=silo, reason=ans.reason,
          **fields)


def may_enroll(studies: Studies, row: StudyRow) -> bool:
    """A silo may still be proposed (and accept) the study now."""
    return row.state == ENROLLING or (row.state in LATE_JOIN_STATES and studies.spec(row.id).training.late_join)


class Enrollment:
    def __init__(self, store: Store, studies: Studies, keys: KeyStore, late_keys: LateKeys, *,
                 audit: Callable[..., None], clock: Callable[[], float],
                 audit_received: Callable[[str, str, str, int, Any], None]) -> None:
        self.store, self.studies, self.keys, self.late_keys = store, studies, keys, late_keys
        self.audit, self.clock, self.audit_received = audit, clock, audit_received

    def join(self, silo: str, modalities: list[str], wrap_public_key: bytes) -> None:
        check_join(silo, wrap_public_key)
        self.store.add(SiloRow(name=silo, modalities_json=json.dumps(sorted(modalities)),
                               wrap_public_key=wrap_public_key, last_seen=self.clock()))
        log.info("silo %s joined (%s)", silo, ", ".join(modalities))

    def answer(self, silo: str, ans: pb.ProposalAnswer) -> bool:
        """Record the silo's answer; False for a retried answer already recorded (its wrapped key, if any, kept)."""
        row = self.studies.row(ans.study_id)
        self.audit_received("proposal_answer", silo, row.id, 0, ans)
        existing = self.store.get(EnrollmentRow, row.id, silo)
        if repeats(existing.accepted if existing is not None else None, ans):
            return False
        late = row.state != ENROLLING
        if late and not (ans.accept and may_enroll(self.studies, row)):
            why = "; its spec has training.late_join = false" if row.state in LATE_JOIN_STATES else ""
            raise Refused(f"study {ans.study_id} is no longer enrolling (state {row.state}){why}")
        check_approval(ans, row.spec_sha256)
        check_silo_name(silo)
        members = check_member_keys(ans.member_wrap_keys) if ans.accept else {}
        self.store.add(EnrollmentRow(study_id=ans.study_id, silo=silo, accepted=ans.accept, reason=ans.reason,
                                     train_samples=ans.train_samples, test_samples=ans.test_samples,
                                     member_wrap_keys_json=member_keys_to_json(members)))
        audit_answer(self.audit, silo, ans, **({"late": True, "state": row.state} if late else {}))
        if late:
            log.info("study %s: %s accepted late (state %s); it joins from the next round", row.id, silo, row.state)
        return True

    def key_recipients(self, study_id: str, only: list[str] | None = None) -> dict[str, bytes]:
        """KEYGEN's participant_keys: each direct silo's wrap key, each region's members' as "<region>/<member>"."""
        participants = {}
        for e in self.store.all(EnrollmentRow, study_id=study_id, accepted=True):
            if only is not None and e.silo not in only:
                continue
            silo_row = self.store.get(SiloRow, e.silo)
            own = silo_row.wrap_public_key if silo_row is not None else b""
            participants[e.silo] = (own, member_keys_from_json(e.member_wrap_keys_json))
        return recipients(participants)

    def check_key_sender(self, row: StudyRow, silo: str) -> bool:
        """Refused unless the silo may send the study a key bundle now (before a byte is kept): the key
        holder in state keygen, or a silo holding the secret while running; True for the latter (a wrap)."""
        wraps = row.state == "running" and bool(row.public_context_sha) and silo in self.studies.keyed(row.id)
        if not wraps and (row.state != "keygen" or row.key_holder != silo):
            raise Refused(f"silo {silo} is not expected to send keys for study {row.id} (state {row.state})")
        return wraps

    def accept_key_bundle(self, silo: str, header: pb.BlobHeader, blob: Incoming) -> pb.PushReply:
        """The key holder's bundle: the study's keys (state keygen; the lifecycle then opens round 1),
        or, once running, a keyed silo's answer to TASK_WRAP_KEY: the same public context with the
        secret wrapped for the late joiners (coordinator/late_keys.py)."""
        row = self.studies.row(header.ref.study_id)
        late = self.check_key_sender(row, silo)
        awaiting = self.studies.awaiting_key(row.id) if late else None
        if late and not awaiting:
            raise Refused(f"study {row.id}: no silo is waiting for a wrapped key; nothing stored")
        members = {e.silo: sorted(member_keys_from_json(e.member_wrap_keys_json))
                   for e in self.store.all(EnrollmentRow, study_id=row.id, accepted=True)
                   if awaiting is None or e.silo in awaiting}
        public_sha, wrapped, wrapped_for = self.keys.store_bundle(bytes(blob.view()), members)
        if late and public_sha != row.public_context_sha:
            raise InvalidInput(f"study {row.id}: a late join's key bundle must carry the study's public context "
                               f"(sha256 {row.public_context_sha[:12]}…), not new keys; refused")
        for name, sha in wrapped.items():
            enrollment = self.store.get(EnrollmentRow, row.id, name)
            enrollment.wrapped_key_sha = sha
            self.store.add(enrollment)
        if not late:
            row.public_context_sha = public_sha
            self.store.add(row)
        self.audit("message_received", study=row.id, silo=silo, kind="key_bundle", round=header.round if late else 0,
                   size=header.size, sha256=header.sha256, wrapped_for=wrapped_for)
        if late:
            log.info("study %s: %s wrapped the study's key for %s", row.id, silo, ", ".join(wrapped_for))
            self.late_keys.wrapped(row.id, wrapped_for)
        return pb.PushReply(accepted=True, sha256=header.sha256, size=header.size)
