"""A round of local training under the silo's own privacy budget, wrapped around the trainer.

As Opacus' `PrivacyEngine` wraps a user's optimiser without rewriting the training loop, a
`PrivateRound` wraps the study's trainer: before training it checks that the round keeps
the dataset under the node's ε cap (composition over every study on the same dataset, with
the study's accountant); after training it records the round in the privacy ledger and says
what was spent, as the update's privacy claim (coordinator.api.protocol.PrivacyClaim).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from compliance.ledger import PrivacyLedger
from coordinator.api.protocol import PrivacyClaim
from coordinator.api.study import StudySpec
from privacy.dp import DPStep, epsilon_spent, would_exceed

log = logging.getLogger(__name__)


class BudgetRefused(Exception):
    """The round would bring ε over the node's cap; the message is the reason sent to the coordinator."""

    def __init__(self, reason: str, *, epsilon_after: float, cap: float) -> None:
        super().__init__(reason)
        self.epsilon_after, self.cap = epsilon_after, cap


@dataclass
class RoundOutput:
    delta: list[np.ndarray]
    weight: float
    train_loss: float | None
    privacy: PrivacyClaim


class PrivateRound:
    def __init__(self, trainer: Any, *, spec: StudySpec, ledger: PrivacyLedger, silo: str, dataset: str,
                 epsilon_cap: float, noise_multiplier: float | None) -> None:
        self.trainer, self.spec, self.ledger = trainer, spec, ledger
        self.silo, self.dataset, self.epsilon_cap = silo, dataset, epsilon_cap
        self.noise_multiplier = noise_multiplier

    def _history(self) -> list[DPStep]:
        return [DPStep(noise_multiplier=r.noise_multiplier, sample_rate=r.sample_rate, steps=r.steps)
                for r in self.ledger.history(self.dataset)]

    def check_budget(self) -> None:
        """BudgetRefused when this round would exceed the node's cap on its dataset."""
        p = self.spec.privacy
        if not p.dp:
            return
        prospective = DPStep(noise_multiplier=self.noise_multiplier, sample_rate=self.trainer.sample_rate(),
                             steps=self.trainer.steps_per_round())
        exceed, eps_after = would_exceed(self._history(), prospective, cap_epsilon=self.epsilon_cap, delta=p.delta,
                                         accountant=p.accountant)
        if exceed:
            raise BudgetRefused(f"privacy budget: this round would bring ε on dataset {self.dataset} to "
                                f"{eps_after:.3f}, above the node's cap {self.epsilon_cap}",
                                epsilon_after=eps_after, cap=self.epsilon_cap)

    def train(self, weights: list[np.ndarray], *, study: str, round_: int, round_seed: int) -> RoundOutput:
        """Train one round (the trainer draws DP noise from its own CSPRNG) and enter it in the ledger."""
        p = self.spec.privacy
        result = self.trainer.train_round(weights, noise_multiplier=self.noise_multiplier, round_seed=round_seed)
        claim = PrivacyClaim()
        if result.dp_step is not None:
            history = self._history()
            eps = epsilon_spent([*history, result.dp_step], delta=p.delta, accountant=p.accountant)
            step = result.dp_step
            self.ledger.record(silo=self.silo, dataset=self.dataset, study=study, round=round_, epsilon=eps,
                               delta=p.delta, noise_multiplier=step.noise_multiplier, sample_rate=step.sample_rate,
                               steps=step.steps, accountant=p.accountant)
            claim = PrivacyClaim(enabled=True, epsilon=eps, delta=p.delta, noise_multiplier=step.noise_multiplier,
                                 sample_rate=step.sample_rate, steps=step.steps, accountant=p.accountant)
        return RoundOutput(delta=result.delta, weight=result.weight, train_loss=result.train_loss, privacy=claim)
