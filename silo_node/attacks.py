"""Attacks a malicious silo can run, for testing and benchmarking robust aggregation ONLY.

Each attack is a small class acting at one of two points of a silo's round:

- `poison(dataset)`: on the silo's training samples, before any training (label flipping,
  backdoor trigger); the node applies it once when it prepares a study.
- `apply(delta, benign=...)`: on the model delta after local training and before the update
  is encoded (sign flip, scaling, Gaussian noise, ALIE, IPM).

`build_attack(kind, **params)` makes one from a node config's `[attack]` table. A node with an
attack logs a warning at every use: an attacking node must never be mistaken for a real one.

Attacks that imitate the honest updates (ALIE, IPM) need the benign mean (and, for ALIE, the
per-coordinate standard deviation). The attacker does not see other silos' updates; it
estimates them from `benign`: updates it computed honestly itself (several local runs on its
own data with different seeds, or the honest updates of colluding silos). With a single
benign update the mean is that update and, for ALIE, the standard deviation is ASSUMED to be
`relative_std * |mean|` per coordinate (honest silos' updates vary by about their own size,
which is what we measured on the non-IID synthetic hospitals at small local batch counts).
"""

from __future__ import annotations

import logging
import math
from abc import ABC
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from scipy.stats import norm as _normal

from pipelines.dataset import MODALITIES, MultimodalDataset

log = logging.getLogger(__name__)
Update = list[np.ndarray]
_IMAGE = MODALITIES.index("image")


class AttackError(ValueError):
    """An attack that cannot be built or applied; the message says which parameter and why."""


class Attack(ABC):
    """One malicious behaviour. Subclasses override `apply` and/or `poison`."""

    kind: ClassVar[str]
    #: whether `apply` uses `benign` (the node then passes honest local runs)
    needs_benign: ClassVar[bool] = False

    def apply(self, delta: Sequence[np.ndarray], *, benign: Sequence[Sequence[np.ndarray]] | None = None,
              rng: np.random.Generator | None = None) -> Update:
        """The update the malicious silo sends instead of its honest `delta`."""
        return [np.array(a, dtype=np.float32) for a in delta]

    def poison(self, dataset: MultimodalDataset, *, rng: np.random.Generator | None = None) -> MultimodalDataset:
        """The training samples the malicious silo trains on instead of its own."""
        return dataset

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise AttackError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _as_float32(update: Sequence[np.ndarray]) -> Update:
    return [np.asarray(a, dtype=np.float32) for a in update]


def _benign_stats(delta: Sequence[np.ndarray], benign: Sequence[Sequence[np.ndarray]] | None,
                  relative_std: float) -> tuple[Update, Update]:
    """Per-array mean and std of the attacker's estimate of the honest updates."""
    runs = [list(delta)] if not benign else [list(b) for b in benign]
    if any(len(r) != len(runs[0]) for r in runs):
        raise AttackError("benign updates differ in their number of arrays; they must come from the same model")
    means, stds = [], []
    for j in range(len(runs[0])):
        stacked = np.stack([np.asarray(r[j], dtype=np.float64) for r in runs])
        mu = stacked.mean(axis=0)
        sd = stacked.std(axis=0, ddof=1) if len(runs) > 1 else relative_std * np.abs(mu)
        means.append(mu)
        stds.append(sd)
    return means, stds


# -- attacks on the update -----------------------------------------------------------------------


class SignFlip(Attack):
    """Send -scale x the honest delta (reversed gradient; Damaskinos 2018, Li 2019 "RSA")."""

    kind = "sign_flip"

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = _positive("sign_flip: scale", scale)

    def apply(self, delta, *, benign=None, rng=None) -> Update:
        return [(-self.scale * np.asarray(a, dtype=np.float64)).astype(np.float32) for a in delta]


class Scaling(Attack):
    """Boost the honest delta by `factor` (Bhagoji 2019 "explicit boosting"; model replacement)."""

    kind = "scaling"

    def __init__(self, *, factor: float = 10.0) -> None:
        self.factor = _positive("scaling: factor", factor)

    def apply(self, delta, *, benign=None, rng=None) -> Update:
        return [(self.factor * np.asarray(a, dtype=np.float64)).astype(np.float32) for a in delta]


class GaussianNoise(Attack):
    """Add N(0, std^2) to every coordinate of the delta (the Gaussian Byzantine of Blanchard 2017)."""

    kind = "gaussian_noise"

    def __init__(self, *, std: float = 1.0, seed: int | None = None) -> None:
        self.std = _positive("gaussian_noise: std", std)
        self.seed = seed

    def apply(self, delta, *, benign=None, rng=None) -> Update:
        rng = rng or np.random.default_rng(self.seed)
        return [(np.asarray(a, dtype=np.float64) + rng.normal(0.0, self.std, np.shape(a))).astype(np.float32)
                for a in delta]


class ALIE(Attack):
    """"A little is enough" (Baruch, Baruch, Goldberg 2019, NeurIPS): send mu - z * sigma.

    mu and sigma are the per-coordinate mean and standard deviation of the benign updates;
    z is the paper's z_max = Phi^-1((n - s) / n) with s = floor(n/2 + 1) - m, the largest shift
    that still keeps the malicious update inside the honest majority's spread, so that median,
    trimmed mean and Krum keep choosing it. Give `z` to override, or `n_silos` and `n_malicious`.
    """

    kind = "alie"
    needs_benign = True

    def __init__(self, *, z: float | None = None, n_silos: int | None = None, n_malicious: int | None = None,
                 relative_std: float = 1.0) -> None:
        if z is None:
            if n_silos is None or n_malicious is None:
                raise AttackError("alie: give z, or n_silos and n_malicious to derive the paper's z_max")
            z = self.z_max(int(n_silos), int(n_malicious))
        if not math.isfinite(z):
            raise AttackError(f"alie: z must be finite, got {z!r}")
        self.z = float(z)
        self.relative_std = _positive("alie: relative_std", relative_std)

    @staticmethod
    def z_max(n: int, m: int) -> float:
        if not (n >= 2 and 0 < m < n):
            raise AttackError(f"alie: need n_silos >= 2 and 0 < n_malicious < n_silos, got n={n}, m={m}")
        s = math.floor(n / 2 + 1) - m
        return float(_normal.ppf((n - s) / n))

    def apply(self, delta, *, benign=None, rng=None) -> Update:
        means, stds = _benign_stats(delta, benign, self.relative_std)
        return [(mu - self.z * sd).astype(np.float32) for mu, sd in zip(means, stds)]


class IPM(Attack):
    """Inner-product manipulation (Xie, Koyejo, Gupta 2020, "Fall of Empires", UAI): send
    -epsilon x the benign mean, so the aggregate's inner product with the true gradient turns
    negative once enough silos do it (epsilon small slips past Krum, large breaks FedAvg)."""

    kind = "ipm"
    needs_benign = True

    def __init__(self, *, epsilon: float = 0.5) -> None:
        self.epsilon = _positive("ipm: epsilon", epsilon)

    def apply(self, delta, *, benign=None, rng=None) -> Update:
        means, _ = _benign_stats(delta, benign, 1.0)
        return [(-self.epsilon * mu).astype(np.float32) for mu in means]


# -- attacks on the training samples ---------------------------------------------------------------


def _replace(dataset: MultimodalDataset, **fields: torch.Tensor) -> MultimodalDataset:
    current = {"ehr": dataset.ehr, "image": dataset.image, "signal": dataset.signal, "mask": dataset.mask,
               "label": dataset.label}
    current.update(fields)
    return MultimodalDataset(**current, pseudonyms=dataset.pseudonyms, feature_names=dataset.feature_names,
                             signal_channels=dataset.signal_channels)


class LabelFlip(Attack):
    """Train on 1 - label for every sample (Biggio 2012; Fang 2020's label-flipping baseline)."""

    kind = "label_flip"

    def poison(self, dataset: MultimodalDataset, *, rng=None) -> MultimodalDataset:
        return _replace(dataset, label=(1.0 - dataset.label).to(torch.float32))


class Backdoor(Attack):
    """Image trigger backdoor (Gu 2017 "BadNets"; Bagdasaryan 2020 "How to Backdoor FL").

    On a `fraction` of the training samples that have an image, a `size` x `size` patch in
    the top-left corner is set to `value` (default: the brightest pixel of the silo's images,
    so the patch is bright but in range) and the label is forced to 1 (heart failure). The
    other samples are left alone, so the model keeps its accuracy on clean inputs.
    `stamp(images)` puts the same trigger on test images to measure the attack's success.
    """

    kind = "backdoor"

    def __init__(self, *, fraction: float = 0.5, size: int = 4, value: float | None = None,
                 seed: int | None = None) -> None:
        if not (0.0 < fraction <= 1.0):
            raise AttackError(f"backdoor: fraction of poisoned samples must be in (0, 1], got {fraction!r}")
        if int(size) != size or size < 1:
            raise AttackError(f"backdoor: size (patch side in pixels) must be a whole number >= 1, got {size!r}")
        self.fraction, self.size, self.seed = float(fraction), int(size), seed
        self.value = None if value is None else float(value)

    def stamp(self, images: torch.Tensor, value: float | None = None) -> torch.Tensor:
        """Images [B, 1, S, S] with the trigger patch; the input is not modified."""
        v = self.value if value is None else value
        if v is None:
            raise AttackError("backdoor: no trigger value yet; give value= or poison a dataset first")
        out = images.clone()
        out[..., : self.size, : self.size] = v
        return out

    def poison(self, dataset: MultimodalDataset, *, rng=None) -> MultimodalDataset:
        rng = rng or np.random.default_rng(self.seed)
        has_image = np.flatnonzero(dataset.mask[:, _IMAGE].numpy() > 0)
        if len(has_image) == 0:
            raise AttackError("backdoor: the silo has no imaging samples to put the trigger on")
        if self.value is None:
            self.value = float(dataset.image[torch.as_tensor(has_image)].max())
        k = max(1, round(self.fraction * len(has_image)))
        chosen = torch.as_tensor(np.sort(rng.choice(has_image, size=k, replace=False)))
        image, label = dataset.image.clone(), dataset.label.clone()
        image[chosen] = self.stamp(image[chosen])
        label[chosen] = 1.0
        return _replace(dataset, image=image, label=label)


ATTACKS: dict[str, type[Attack]] = {
    cls.kind: cls for cls in (SignFlip, Scaling, GaussianNoise, LabelFlip, ALIE, IPM, Backdoor)
}


def build_attack(kind: str, **params: Any) -> Attack:
    """The attack named `kind` with its keyword parameters; refuses unknown kinds and parameters."""
    if kind not in ATTACKS:
        raise AttackError(f"unknown attack {kind!r}; known attacks: {', '.join(ATTACKS)}")
    try:
        return ATTACKS[kind](**params)
    except TypeError as e:
        raise AttackError(f"attack {kind!r}: {e}") from None


class AttackingTrainer:
    """A trainer whose rounds send `attack`'s poisoned delta: wrapped around the real trainer by the
    attack bench and the demo's --attack only (a node configured with `attack`), never in the
    production path. Everything but `train_round` is the wrapped trainer's."""

    def __init__(self, trainer: Any, attack: Attack, *, benign_runs: int = 1) -> None:
        self.inner, self.attack, self.benign_runs = trainer, attack, benign_runs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def train_round(self, weights: list[np.ndarray], *, noise_multiplier: float | None, round_seed: int) -> Any:
        result = self.inner.train_round(weights, noise_multiplier=noise_multiplier, round_seed=round_seed)
        result.delta = malicious_delta(self.attack, self.inner, weights, result.delta, noise_multiplier=noise_multiplier,
                                       round_seed=round_seed, benign_runs=self.benign_runs)
        return result


def malicious_delta(attack: Attack, trainer: Any, weights: list[np.ndarray], delta: list[np.ndarray], *,
                    noise_multiplier: float | None, round_seed: int, benign_runs: int = 1) -> Update:
    """The delta a malicious node sends (node hook). For ALIE/IPM with `benign_runs` > 1 the node
    trains `benign_runs - 1` extra times from the same global weights with other seeds to
    estimate the honest spread (these runs are NOT in the privacy ledger: attack nodes are test
    fixtures on synthetic data)."""
    benign = None
    if attack.needs_benign and benign_runs > 1:
        benign = [delta] + [trainer.train_round(weights, noise_multiplier=noise_multiplier,
                                                round_seed=round_seed * 7919 + k).delta for k in range(1, benign_runs)]
    log.warning("ATTACK %r: this silo sends a poisoned update (testing/benchmarking only)", attack)
    return attack.apply(delta, benign=benign, rng=np.random.default_rng(round_seed))
