"""Study approval at the silo: hospital IT decides which studies may touch its data.

A study arrives as a proposal. The node shows what it would do (`fedcare silo studies`)
and waits for `fedcare silo approve|reject STUDY`, unless node.toml sets an auto-approval
policy. A decision binds to the SHA-256 of the study spec and of the model code, so a
changed study or a changed model implementation needs a new approval. An unapproved study
never touches data.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compliance.phi import check_no_phi
from coordinator.api.protocol import StudyKind
from coordinator.api.study import StudySpec
from silo_node.config import ApprovalConfig, BudgetConfig

MAX_OTHERS = 1000  # names of other silos kept with a proposal


def model_code_version() -> str:
    """SHA-256 over the model package's source: what the approval binds to besides the spec."""
    digest = hashlib.sha256()
    found = importlib.util.find_spec("pipelines.models")  # found, not imported: that would import torch
    assert found is not None and found.submodule_search_locations, "pipelines.models is not installed"
    root = Path(next(iter(found.submodule_search_locations)))
    for path in sorted(root.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def describe(spec: StudySpec) -> dict[str, Any]:
    """What a study will do at this silo, in the words hospital IT needs to decide."""
    if spec.kind is StudyKind.ANALYSIS:
        from silo_node.analysis import describe_analysis  # here: it imports the DP accountant, so torch

        return describe_analysis(spec)
    p = spec.privacy
    return {
        "name": spec.name,
        "description": spec.description,
        "modalities": list(spec.modalities),
        "label": f"{spec.cohort.label_system}|{spec.cohort.label_code} within {spec.cohort.label_window_days} days",
        "features": [f"{f.name} ({f.code}, {f.aggregate})" for f in spec.cohort.features] if "ehr" in spec.modalities else [],
        "model": {"fusion": spec.model.fusion, "embed_dim": spec.model.embed_dim, "personal_layers": list(spec.model.personal_layers)},
        "rounds": spec.training.rounds,
        "local_epochs": spec.training.local_epochs,
        "differential_privacy": {"enabled": p.dp, "target_epsilon": p.target_epsilon, "noise_multiplier": p.noise_multiplier,
                                 "delta": p.delta, "accountant": p.accountant, "max_grad_norm": p.max_grad_norm},
        "what_is_sent": (f"per round: one model update ({p.encryption} encrypted, "
                         f"{'DP-noised, ' if p.dp else ''}{spec.compression.codec} compressed), evaluation metrics, "
                         "ε spent; never records or identifiers"),
        "spec_sha256": spec.sha256(),
    }


@dataclass(frozen=True)
class Decision:
    study_id: str
    approved: bool
    by: str
    at: float
    reason: str
    spec_sha256: str
    code_version: str


def policy_decision(spec: StudySpec, policy: ApprovalConfig, budget: BudgetConfig) -> tuple[bool, str]:
    """Auto-approval: every limit of node.toml's [approval] must hold."""
    problems = []
    extra = sorted(set(spec.modalities) - set(policy.allowed_modalities))
    if extra:
        problems.append(f"modalities {extra} are not allowed here")
    if spec.kind is StudyKind.ANALYSIS:  # no training: what leaves is set by this node's [disclosure] rules
        return (not problems, "; ".join(problems) or "an analysis study within the node's allowed modalities; "
                "its figures leave under this node's [disclosure] rules")
    if policy.require_dp and not spec.privacy.dp:
        problems.append("the study does not use differential privacy")
    if policy.require_encryption and not spec.protocol.encrypted:
        problems.append("the study does not encrypt updates")
    if policy.max_epsilon is not None and spec.privacy.dp:
        target = spec.privacy.target_epsilon
        if target is None or target > policy.max_epsilon:
            problems.append(f"the study's target ε {target} exceeds this node's max_epsilon {policy.max_epsilon}")
    if spec.privacy.dp and spec.privacy.delta > budget.delta:
        problems.append(f"the study's δ {spec.privacy.delta} exceeds this node's δ {budget.delta}")
    if policy.max_rounds is not None and spec.training.rounds > policy.max_rounds:
        problems.append(f"{spec.training.rounds} rounds exceed this node's max_rounds {policy.max_rounds}")
    return (not problems, "; ".join(problems) or "within the node's auto-approval policy")


class ApprovalBook:
    """Proposals and decisions on disk under state_dir/studies/<study>/."""

    def __init__(self, state_dir: Path) -> None:
        # Nothing is created until something is recorded: `fedcare silo studies` on a node that has not started
        # yet must not leave node state behind (a node with state and no audit log refuses to start).
        self.root = Path(state_dir) / "studies"

    def _path(self, study_id: str) -> Path:
        """The study's folder (not created: for reading)."""
        if not study_id or "/" in study_id or study_id.startswith("."):
            raise ValueError(f"invalid study id {study_id!r}")
        return self.root / study_id

    def _dir(self, study_id: str) -> Path:
        """The study's folder, created: for writing."""
        d = self._path(study_id)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def record_proposal(self, study_id: str, spec: StudySpec, *, others: Sequence[str] = ()) -> None:
        """`others`: the silos that had accepted the study when the coordinator proposed it (Task.other_silos)."""
        path = self._dir(study_id) / "proposal.json"
        path.write_text(json.dumps({"study_id": study_id, "received_at": time.time(), "spec": json.loads(spec.to_json()),
                                    "summary": describe(spec), "others": [str(o)[:200] for o in others[:MAX_OTHERS]]},
                                   indent=2))

    def proposals(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if (d / "proposal.json").exists():
                p = json.loads((d / "proposal.json").read_text())
                decision = self.decision(d.name)
                p["decision"] = None if decision is None else asdict(decision)
                p["answered"] = (d / "answered").exists()
                out.append(p)
        return out

    def spec_of(self, study_id: str) -> StudySpec:
        path = self._path(study_id) / "proposal.json"
        if not path.exists():
            raise KeyError(f"no proposal for study {study_id!r} at this node; see `fedcare silo studies`")
        return StudySpec.model_validate(json.loads(path.read_text())["spec"])

    def decide(self, study_id: str, *, approved: bool, reason: str, by: str | None = None) -> Decision:
        # The reason goes to both audit logs and to the coordinator: refuse an identifier before it is stored.
        check_no_phi({"reason": reason, "by": by or ""})
        spec = self.spec_of(study_id)
        decision = Decision(study_id=study_id, approved=approved, by=by or _operator(), at=time.time(), reason=reason,
                            spec_sha256=spec.sha256(), code_version=model_code_version())
        tmp = self._dir(study_id) / "decision.json.tmp"
        tmp.write_text(json.dumps(asdict(decision), indent=2))
        os.replace(tmp, self._dir(study_id) / "decision.json")
        return decision

    def decision(self, study_id: str) -> Decision | None:
        path = self._path(study_id) / "decision.json"
        if not path.exists():
            return None
        return Decision(**json.loads(path.read_text()))

    def mark_answered(self, study_id: str) -> None:
        (self._dir(study_id) / "answered").write_text("1")

    def valid_decision(self, study_id: str, spec: StudySpec) -> Decision | None:
        """A decision counts only for the exact spec and model code it was made for."""
        d = self.decision(study_id)
        if d is None or d.spec_sha256 != spec.sha256() or d.code_version != model_code_version():
            return None
        return d


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"
