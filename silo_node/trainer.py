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

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from coordinator.api.study import StudySpec
from pipelines.models import (
    MultimodalModel,
    build_model,
    get_shared_weights,
    mean_gate_weights,
    per_sample_loss,
    set_shared_weights,
    shared_parameter_names,
)
from pipelines.models.weights import shared_parameters
from privacy.dp import (
    AdaptiveClipping,
    DPStep,
    GradSampleMode,
    make_private,
    mean_backward,
)
from silo_node.evaluation import (
    DEFAULT_THRESHOLD,
    VALIDATION_PREFIX,
    choose_threshold,
    clinical_metrics,
)

log = logging.getLogger(__name__)
# How Opacus computes per-sample gradients, chosen by measurement (benchmarks/dp_cost.py, one thread, 600 patients,
# best of 3, two runs on a loaded 2-core machine; seconds per epoch over plain SGD's): on the demo's model expanded
# weights 1.44x / 1.13x, ghost clipping 2.03x / 1.28x, hooks 2.13x / 1.36x, functorch 2.75x / 2.09x; on the CNN
# expanded weights 3.19x / 2.84x, hooks 3.47x / 4.08x, ghost clipping 5.28x / 3.69x (Opacus 1.6 has ghost norms
# for Linear layers only: convolutions still materialise per-sample gradients, and it runs two backward passes).
# Re-measured in CPU seconds (dp_cost.py, two runs, docs/privacy-utility.md): demo ew 1.55x / 1.48x, hooks 1.68x / 1.33x,
# ghost 1.80x / 1.55x, functorch 2.25x / 2.02x; CNN ew 2.23x / 2.24x, hooks 2.82x / 2.93x, ghost 3.29x / 3.09x,
# functorch 4.24x / 4.84x; channels-last no better.
GRAD_SAMPLE_MODE: GradSampleMode = "ew"
# Opacus' adaptive-clipping optimizer reads per-sample gradients, which expanded weights and ghost clipping do not keep
ADAPTIVE_CLIPPING_GRAD_SAMPLE_MODE: GradSampleMode = "hooks"


class DeviceUnavailable(ValueError):
    """The node config asks for a device this machine's torch cannot use; the message says what to do."""


def pick_device(preference: str = "auto") -> torch.device:
    """The node config's `device`: "auto" trains on the GPU when torch sees one, "cuda" insists on it."""
    available = torch.cuda.is_available()
    if preference == "cuda" and not available:
        raise DeviceUnavailable(f"device = \"cuda\" in the node config, but this torch ({torch.__version__}) sees no CUDA "
                         "GPU: install a CUDA build of torch and the NVIDIA driver, or set device = \"auto\" or \"cpu\"")
    if preference == "cpu" or not available:
        log.info("training on the CPU (%d threads)", torch.get_num_threads())
        return torch.device("cpu")
    log.info("training on CUDA: %s (torch %s, CUDA %s)", torch.cuda.get_device_name(0), torch.__version__,
             torch.version.cuda)
    return torch.device("cuda")


@dataclass
class RoundResult:
    delta: list[np.ndarray]
    weight: float
    train_loss: float
    dp_step: DPStep | None  # the mechanism this round ran, for the ledger
    clip_bound: float | None = None  # DP clip bound after the round (adapted under adaptive clipping)


class LocalTrainer:
    """Trains on `train`, chooses the decision threshold on `validation`, reports on `test`
    (the silo's split, pipelines.dataset.split_silo)."""

    def __init__(self, spec: StudySpec, train: Dataset, test: Dataset, *, validation: Dataset | None = None,
                 device: torch.device | None = None) -> None:
        if len(train) == 0:
            raise ValueError("the silo has no training samples for this study's cohort")
        self.spec = spec
        self.train_set = train
        self.test_set = test
        self.validation_set = validation
        # the DP clip bound; adaptive clipping carries the adapted bound from round to round
        self.clip_bound = spec.privacy.max_grad_norm
        self.device = device or torch.device("cpu")
        torch.manual_seed(spec.training.seed)
        self.model = build_model(**spec.model_arguments()).to(self.device)
        if isinstance(self.model, MultimodalModel):  # fixed image/signal statistics standardised on the training split
            self.model.fit_feature_scaling((image.to(self.device), signal.to(self.device), mask.to(self.device))
                                           for _, image, signal, mask, _ in DataLoader(train, batch_size=256))
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
        backward = mean_backward
        if p.dp:
            noise = float(noise_multiplier or 0.0)
            adaptive = self.adaptive_clipping(noise)
            private = make_private(module=model, optimizer=optimizer, data_loader=loader,
                                   noise_multiplier=noise, max_grad_norm=self.clip_bound,
                                   accountant=p.accountant, device=self.device, adaptive=adaptive,
                                   grad_sample_mode=GRAD_SAMPLE_MODE if adaptive is None else ADAPTIVE_CLIPPING_GRAD_SAMPLE_MODE)
            trained, optimizer, loader = private.module, private.optimizer, private.data_loader
            backward = private.backward
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
                losses_per_sample, _ = per_sample_loss(out, label, mask, kl_weight=self.spec.model.kl_weight,
                                                       consistency_weight=self.spec.model.consistency_weight)
                backward(losses_per_sample)
                optimizer.step()
                steps += 1
                if t.fedprox_mu > 0:
                    self._proximal_step(model, anchors, t.learning_rate * t.fedprox_mu)
                losses.append(float(losses_per_sample.detach().mean()))
        if p.dp:
            history = private.engine.accountant.history
            dp_step = DPStep(noise_multiplier=float(noise_multiplier or 0.0), sample_rate=self.sample_rate(),
                             steps=int(sum(h[2] for h in history)))
            self.clip_bound = float(optimizer.max_grad_norm)  # released through the noisy count: post-processing
        self.model.load_state_dict(model.state_dict())
        new = get_shared_weights(self.model, self.personal)
        delta = [(n - g).astype(np.float32) for n, g in zip(new, global_weights)]
        return RoundResult(delta=delta, weight=float(self.n_train), train_loss=float(np.mean(losses)) if losses else float("nan"),
                           dp_step=dp_step, clip_bound=self.clip_bound if p.dp else None)

    def adaptive_clipping(self, noise_multiplier: float) -> AdaptiveClipping | None:
        """The study's adaptive clipping, with the clipped-count noise σ_b of Andrew et al. 2021
        (expected batch / 20) unless the spec names one, raised to σ so that σ < 2σ_b holds."""
        p = self.spec.privacy
        if p.clipping != "adaptive":
            return None
        count_noise = p.clip_count_noise or max(self.n_train * self.sample_rate() / 20, noise_multiplier)
        return AdaptiveClipping(target_quantile=p.clip_target_quantile, learning_rate=p.clip_learning_rate,
                                count_noise=count_noise)

    def _proximal_step(self, model: torch.nn.Module, anchors: dict[str, torch.Tensor], strength: float) -> None:
        with torch.no_grad():
            for name, w in shared_parameters(model, self.personal):
                w.sub_(strength * (w - anchors[name]))

    # --- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def _predict(self, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, float]:
        """(labels, predicted probabilities, mean cross-entropy) of the loaded model on `dataset`."""
        model = self.model.eval()
        scores, labels, loss = [], [], 0.0
        for batch in DataLoader(dataset, batch_size=256):
            ehr, image, signal, mask, label = (x.to(self.device) for x in batch)
            out = model(ehr, image, signal, mask)
            loss += float(torch.nn.functional.binary_cross_entropy_with_logits(out.logits, label, reduction="sum"))
            scores.append(torch.sigmoid(out.logits).cpu().numpy())
            labels.append(label.cpu().numpy())
        if not labels:
            return np.zeros(0), np.zeros(0), 0.0
        y = np.concatenate(labels)
        return y, np.concatenate(scores), loss / max(len(y), 1)

    def evaluate(self, global_weights: list[np.ndarray]) -> dict[str, float]:
        """Metrics of the global model (with this silo's personal layers) on the test split, at the
        threshold chosen on the validation split, and the validation metrics under `val_`."""
        set_shared_weights(self.model, self.personal, global_weights)
        metrics: dict[str, float] = {}
        threshold = DEFAULT_THRESHOLD
        if self.validation_set is not None and len(self.validation_set) > 0:
            y, s, loss = self._predict(self.validation_set)
            threshold = choose_threshold(y, s)
            validation = {**clinical_metrics(y, s, threshold=threshold), "loss": loss}
            metrics.update({VALIDATION_PREFIX + k: v for k, v in validation.items()})
        y, s, loss = self._predict(self.test_set)
        metrics.update({**clinical_metrics(y, s, threshold=threshold), "loss": loss})
        gates = mean_gate_weights(self.model.eval(), DataLoader(self.test_set, batch_size=256))
        metrics.update({f"gate_{m}": float(v) for m, v in gates.items()})
        return metrics
