"""A study submitted to an in-process Federation and accepted by every silo: the set-up many coordinator tests share."""

from __future__ import annotations

from coordinator.api import federation_pb2 as pb
from coordinator.api.study import ModelSpec, PrivacySpec, StudySpec, TrainingSpec
from coordinator.federation import Federation

SMALL_MODEL = ModelSpec(ehr_hidden=8, embed_dim=4)  # one version 0 in the suite's model cache for all of them


def small_spec(name: str, *, encryption: str, silos: int, rounds: int = 1) -> StudySpec:
    """An EHR study of the small model that starts once `silos` silos accepted it."""
    return StudySpec(name=name, modalities=("ehr",), model=SMALL_MODEL,
                     training=TrainingSpec(rounds=rounds, min_silos=silos, expected_silos=silos),
                     privacy=PrivacySpec(dp=False, encryption=encryption))


def enrolled(fed: Federation, spec: StudySpec, silos: tuple[str, ...]) -> str:
    """Submit `spec`; each silo joins (wrap key of zeros) and accepts it. The study's id."""
    study = fed.submit_study(spec.to_json())
    sha = fed.study(study).spec_sha256
    for s in silos:
        fed.join(s, ["ehr"], bytes(32))
        fed.answer_proposal(s, pb.ProposalAnswer(study_id=study, accept=True, spec_sha256=sha, train_samples=10))
    return study
