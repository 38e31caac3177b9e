"""What a participant may fetch (FetchBlob): model versions, the study's public CKKS context,
its own wrapped secret, the round's screening scalars (key holder only), and, once the study
is done, the released model. Each answer is a header whose sha256 names a blob of the store.
"""

from __future__ import annotations

from coordinator.api import federation_pb2 as pb
from coordinator.blobs import BlobStore
from coordinator.errors import NotFound, Refused
from coordinator.outcome import RoundOutcome
from coordinator.store import EnrollmentRow, ModelVersionRow, RoundRow, Store
from coordinator.studies import Studies
from coordinator.versions import ModelVersions


def kind_name(kind: int) -> str:
    return pb.BlobKind.Name(kind) if kind in pb.BlobKind.values() else f"unknown kind ({kind})"


def check_own_key(silo: str, ref: pb.BlobRef) -> None:
    """A silo fetches only its own wrapped key (at the coordinator and at a region)."""
    if ref.silo and ref.silo != silo:
        raise Refused(f"silo {silo} may only fetch its own wrapped key, not {ref.silo!r}'s")


class Downloads:
    def __init__(self, store: Store, blobs: BlobStore, studies: Studies, versions: ModelVersions) -> None:
        self.store, self.blobs, self.studies, self.versions = store, blobs, studies, versions

    def _enrollment(self, study_id: str, silo: str) -> EnrollmentRow | None:
        """The silo's acceptance of the study, if it accepted it."""
        enrollment = self.store.get(EnrollmentRow, study_id, silo)
        return enrollment if enrollment is not None and enrollment.accepted else None

    def model(self, silo: str, ref: pb.BlobRef) -> pb.BlobHeader:
        """The header of a model version a participant may fetch (full, or a compressed delta);
        its sha256 names the blob, whose chunks the service streams from the blob store."""
        row = self.studies.row(ref.study_id)
        if self._enrollment(row.id, silo) is None:
            raise Refused(f"silo {silo} is not a participant of study {row.id}")
        version = self.store.get(ModelVersionRow, row.id, ref.version)
        if version is None:
            raise NotFound(f"study {row.id} has no model version {ref.version}")
        header = self.versions.header(row.id, self.studies.spec(row.id), version)
        header.ref.CopyFrom(ref)
        return header

    def blob(self, silo: str, ref: pb.BlobRef) -> tuple[pb.BlobHeader, bytes]:
        """What a silo may fetch besides model versions: the public context, its own wrapped key, the screening scalars."""
        row = self.studies.row(ref.study_id)
        enrollment = self._enrollment(row.id, silo)
        if ref.kind == pb.BLOB_SCREEN_SCALARS and silo == row.key_holder:
            rnd = self.store.get(RoundRow, row.id, row.current_round)
            sha = RoundOutcome.of(rnd.outcome_json).screen_sha if rnd else None
            if sha:
                return pb.BlobHeader(ref=ref, sha256=sha), self.blobs.get(sha)
        if ref.kind == pb.BLOB_PUBLIC_CONTEXT and row.public_context_sha and enrollment is not None:
            return pb.BlobHeader(ref=ref, sha256=row.public_context_sha), self.blobs.get(row.public_context_sha)
        if ref.kind == pb.BLOB_WRAPPED_KEY and enrollment is not None and enrollment.wrapped_key_sha:
            check_own_key(silo, ref)
            return pb.BlobHeader(ref=ref, sha256=enrollment.wrapped_key_sha), self.blobs.get(enrollment.wrapped_key_sha)
        raise NotFound(f"no blob of kind {kind_name(ref.kind)} for silo {silo} in study {row.id}")

    def final_model(self, study_id: str) -> tuple[str, bytes]:
        row = self.studies.row(study_id)
        if row.state != "done":
            raise Refused(f"study {study_id} is {row.state}; the final model is released when it is done")
        sha = row.final_model_sha or self.versions.sha(row.id, row.current_round - 1)
        return sha, self.blobs.get(sha)
