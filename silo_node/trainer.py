"""Local training and evaluation at the silo: the study's model on the silo's own samples.

Differential privacy wraps the training without rewriting it (privacy.dp.make_private:
per-sample clipping, Poisson sampling, Gaussian noise). FedProx's proximal term is applied
as a separate step after each optimiser step: it depends on no data, so it is
post-processing for DP and Opacus' per-sample gradients need not see it. Personal layers
(spec.model.personal_layers) are trained here and never leave the silo.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, Dataset

from coordinator.api.study import StudySpec
from pipelines.models import (
    build_model,
    get_shared_weights,
    mean_gate_weights,
    multimodal_loss,
    set_shared_weights,
    shared_parameter_names,
)
from pipelines.models.weights import shared_parameters
from privacy.dp import DPStep, make_private

log = logging.getLogger(__name__)
MODALITIES = ("ehr", "image", "signal")


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class RoundResult:
    delta: list[np.ndarray]
    weight: float
    train_loss: float
    dp_step: DPStep | None  # the mechanism this round ran, for the ledger


class LocalTrainer:
    def __init__(self, spec: StudySpec, train: Dataset, test: Dataset, *, device: torch.device | None = None) -> None:
        if len(train) == 0:
            raise ValueError("the silo has no training samples for this study's cohort")
        self.spec = spec
        self.train_set = train
        self.test_set = test
        self.device = device or torch.device("cpu")
        torch.manual_seed(spec.training.seed)
        self.model = build_model(**spec.model_arguments()).to(self.device)
        self.personal = tuple(spec.model.personal_layers)

    def initial_weights(self) -> tuple[list[str], list[np.ndarray]]:
        """Version 0 of the study's model as the coordinator builds it (coordinator/model_layout.py):
        the architecture initialised from the study seed."""
        torch.manual_seed(self.spec.training.seed)
        model = build_model(**self.spec.model_arguments())
        return shared_parameter_names(model, self.personal), get_shared_weights(model, self.personal)

    @property
    def n_train(self) -> int:
        return len(self.train_set)

    def batches_per_epoch(self) -> int:
        return max(1, math.ceil(self.n_train / self.spec.training.batch_size))

    def steps_per_round(self) -> int:
        return self.batches_per_epoch() * self.spec.training.local_epochs

    def sample_rate(self) -> float:
        return 1.0 / self.batches_per_epoch()

    # --- training ------------------------------------------------------------------------------
    def train_round(self, global_weights: list[np.ndarray], *, noise_multiplier: float | None, round_seed: int) -> RoundResult:
        """Train from the global weights; return the shared layers' delta."""
        t, p = self.spec.training, self.spec.privacy
        set_shared_weights(self.model, self.personal, global_weights)
        # Without DP the round seed makes a round reproducible (shuffling, dropout). Under DP nothing
        # random may follow from it: the coordinator chose it, and with it could regenerate and subtract
        # the noise. Then torch's global generator is seeded from the OS CSPRNG too, and Opacus draws
        # sampling and noise from its own secret generators (privacy.dp.SiloPrivacyEngine).
        torch.manual_seed(secrets.randbits(63) if p.dp else round_seed)
        model = copy.deepcopy(self.model).train()
        if t.optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=t.learning_rate)
        else:
            optimizer = torch.optim.SGD(model.parameters(), lr=t.learning_rate, momentum=t.momentum)
        loader = DataLoader(self.train_set, batch_size=t.batch_size, shuffle=True)
        dp_step = None
        trained = model
        if p.dp:
            private = make_private(module=model, optimizer=optimizer, data_loader=loader,
                                   noise_multiplier=float(noise_multiplier or 0.0), max_grad_norm=p.max_grad_norm,
                                   accountant=p.accountant, device=self.device)
            trained, optimizer, loader = private.module, private.optimizer, private.data_loader
        anchors = {n: w.detach().clone() for n, w in model.named_parameters()}
        losses = []
        steps = 0
        for _ in range(t.local_epochs):
            for batch in loader:
                ehr, image, signal, mask, label = (x.to(self.device) for x in batch)
                if label.numel() == 0:  # Poisson sampling can draw an empty batch
                    continue
                optimizer.zero_grad(set_to_none=True)
                out = trained(ehr, image, signal, mask)
                loss, _ = multimodal_loss(out, label, mask, kl_weight=self.spec.model.kl_weight,
                                          consistency_weight=self.spec.model.consistency_weight)
                loss.backward()
                optimizer.step()
                steps += 1
                if t.fedprox_mu > 0:
                    self._proximal_step(model, anchors, t.learning_rate * t.fedprox_mu)
                losses.append(float(loss.detach()))
        if p.dp:
            history = private.engine.accountant.history
            dp_step = DPStep(noise_multiplier=float(noise_multiplier or 0.0), sample_rate=self.sample_rate(),
                             steps=int(sum(h[2] for h in history)))
        self.model.load_state_dict(model.state_dict())
        new = get_shared_weights(self.model, self.personal)
        delta = [(n - g).astype(np.float32) for n, g in zip(new, global_weights)]
        return RoundResult(delta=delta, weight=float(self.n_train), train_loss=float(np.mean(losses)) if losses else float("nan"),
                           dp_step=dp_step)

    def _proximal_step(self, model: torch.nn.Module, anchors: dict[str, torch.Tensor], strength: float) -> None:
        with torch.no_grad():
            for name, w in shared_parameters(model, self.personal):
                w.sub_(strength * (w - anchors[name]))

    # --- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, global_weights: list[np.ndarray]) -> dict[str, float]:
        set_shared_weights(self.model, self.personal, global_weights)
        model = self.model.eval()
        scores, labels, losses = [], [], []
        loader = DataLoader(self.test_set, batch_size=256)
        for batch in loader:
            ehr, image, signal, mask, label = (x.to(self.device) for x in batch)
            out = model(ehr, image, signal, mask)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, label, reduction="sum")
            losses.append(float(loss))
            scores.append(torch.sigmoid(out.logits).cpu().numpy())
            labels.append(label.cpu().numpy())
        y, s = np.concatenate(labels), np.concatenate(scores)
        metrics: dict[str, Any] = {
            "loss": float(sum(losses) / max(len(y), 1)),
            "accuracy": float(((s >= 0.5) == (y >= 0.5)).mean()) if len(y) else 0.0,
            "auroc": float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else 0.5,
        }
        gates = mean_gate_weights(model, loader)
        metrics.update({f"gate_{m}": float(v) for m, v in gates.items()})
        return metrics
