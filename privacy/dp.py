"""DP-SGD for a silo's local training, and the accounting of its privacy budget.

Wraps Opacus' `PrivacyEngine` (Abadi et al. 2016, "Deep Learning with Differential
Privacy"; Poisson-subsampled Gaussian mechanism) so that the silo's training loop stays its
own, and composes a dataset's whole history (all rounds of all studies) with Opacus' RDP
accountant (Mironov 2017; Balle et al. 2020 conversion) or PRV accountant (Gopi et al.
2021) so a silo can report ε after a round and refuse a round that would exceed its cap.
"""

from __future__ import annotations

import logging
import math
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from opacus import PrivacyEngine
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

from privacy.errors import DPError

log = logging.getLogger(__name__)

Accountant = Literal["rdp", "prv"]
# ghost: Opacus' fast gradient clipping with ghost norms (Li et al. 2022, "Large Language Models Can Be Strong
# Differentially Private Learners"; Lee & Kifer 2021): per-sample gradient norms without per-sample gradients
GradSampleMode = Literal["hooks", "functorch", "ew", "ghost"]
GRAD_SAMPLE_MODES: tuple[str, ...] = get_args(GradSampleMode)
_ACCOUNTANTS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}


def mean_backward(per_sample_loss: torch.Tensor) -> None:
    """Backpropagate the batch mean of `per_sample_loss` ([B]): plain training's backward pass, and
    DP-SGD's where per-sample gradients are computed (sum / B: finite for an empty Poisson batch)."""
    (per_sample_loss.sum() / max(per_sample_loss.shape[0], 1)).backward()


@dataclass(frozen=True)
class PrivateTraining:
    """What `make_private` hands back: always these fields, whatever the options.

    Backpropagate a batch through `backward(per_sample_loss)`, not `loss.backward()`: under ghost
    clipping the clipping happens inside the backward pass, which needs each sample's loss.
    """

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: torch.utils.data.DataLoader
    engine: PrivacyEngine
    grad_sample_mode: GradSampleMode = "hooks"

    def backward(self, per_sample_loss: torch.Tensor) -> None:
        """Backpropagate the batch mean of `per_sample_loss` (shape [B]) for the optimizer's next step.

        With per-sample gradients (hooks, functorch, ew) one ordinary backward pass; the optimizer
        clips each sample's gradient. Under ghost clipping two passes (Opacus'
        `DPTensorFastGradientClipping`): the first yields each sample's gradient norm from the
        layers' activations and backprops, the second backpropagates the losses weighted by each
        sample's clip factor min(1, C / norm), so the summed gradient is already clipped per sample.
        """
        if self.grad_sample_mode == "ghost":
            DPTensorFastGradientClipping(self.module, self.optimizer, per_sample_loss, "mean").backward()
        else:
            mean_backward(per_sample_loss)


@dataclass(frozen=True)
class AdaptiveClipping:
    """Quantile-based adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with
    Adaptive Clipping"), as Opacus' `AdaClipDPOptimizer` runs it.

    After every step the clip bound C moves geometrically towards the `target_quantile` of the
    per-sample gradient norms: C ← C·exp(−η·(b̃ − γ)), where b̃ is the share of samples left
    unclipped, released with Gaussian noise of std `count_noise` (in samples). Its privacy cost is
    paid inside the step's budget: the gradient noise is raised to σ_g = (σ⁻² − (2σ_b)⁻²)^(−1/2), so
    the pair costs exactly one Gaussian mechanism of multiplier σ (their Theorem 1), which is what
    the accountant and the ledger record. Needs σ < 2σ_b.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise: float = 1.0
    min_bound: float = 1e-3
    max_bound: float = 1e3

    def check(self, noise_multiplier: float) -> None:
        if not 0 < self.target_quantile < 1:
            raise DPError(f"adaptive clipping target_quantile must be in (0, 1), got {self.target_quantile!r}")
        if not (self.learning_rate > 0 and self.count_noise > 0 and 0 < self.min_bound < self.max_bound):
            raise DPError(f"adaptive clipping needs learning_rate > 0, count_noise > 0 and 0 < min_bound < max_bound, "
                          f"got {self}")
        if noise_multiplier >= 2 * self.count_noise:
            raise DPError(f"adaptive clipping needs noise_multiplier {noise_multiplier:.4g} < 2 x count_noise "
                          f"({self.count_noise:.4g}); raise privacy.clip_count_noise")


@dataclass(frozen=True)
class DPStep:
    """`steps` DP-SGD steps with one noise multiplier σ and sampling rate q."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise DPError(f"noise_multiplier must be a finite number > 0, got {self.noise_multiplier!r}")
        if not (0 < self.sample_rate <= 1):
            raise DPError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise DPError(f"steps must be an integer >= 0, got {self.steps!r}")


def _check_accountant(accountant: str) -> type[IAccountant]:
    try:
        return _ACCOUNTANTS[accountant]
    except KeyError:
        raise DPError(f"accountant must be one of {sorted(_ACCOUNTANTS)}, got {accountant!r}") from None


def _check_delta(delta: float) -> None:
    if not (0 < delta < 1):
        raise DPError(f"delta must be in (0, 1), got {delta!r}")


def secret_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with 64 bits from the operating system's CSPRNG (`secrets`).

    The seed is drawn here, is never stored and never leaves the process, so nobody outside the
    silo (the coordinator included) can regenerate what the generator draws: finding it would
    take about 2^63 training runs. A fresh one is drawn for every round.
    """
    return torch.Generator(device=device).manual_seed(secrets.randbits(64))


class SiloPrivacyEngine(PrivacyEngine):
    """Opacus' `PrivacyEngine` in its secure mode, fed by generators only this silo knows.

    Secure mode (a) takes the Poisson sample and the Gaussian noise from the engine's own
    generator, never from torch's global one, which a coordinator-chosen seed may have set, and
    (b) draws noise robustly to floating-point attacks (Mironov 2012; Opacus' `_generate_noise`).
    Opacus' own secure mode needs `torchcsprng`, which has no current wheel, so the generators
    here are `secret_generator()`s instead: one on the CPU for sampling, one on the model's
    device for the noise.
    """

    def __init__(self, *, accountant: Accountant, device: torch.device | str = "cpu") -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the advice to turn secure mode on: it is on, below
            super().__init__(accountant=accountant, secure_mode=False)
        self.secure_mode = True
        self.secure_rng = secret_generator("cpu")  # Poisson sampling (DPDataLoader draws on the CPU)
        self._noise_rng = secret_generator(device)

    def _prepare_optimizer(self, **kwargs):  # type: ignore[no-untyped-def]
        # Opacus hands `secure_rng` to the optimizer; the noise must be drawn on the model's device.
        sampler_rng, self.secure_rng = self.secure_rng, self._noise_rng
        try:
            return super()._prepare_optimizer(**kwargs)
        finally:
            self.secure_rng = sampler_rng


def make_private(
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: torch.utils.data.DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: Accountant = "rdp",
    device: torch.device | str = "cpu",
    adaptive: AdaptiveClipping | None = None,
    grad_sample_mode: GradSampleMode = "hooks",
) -> PrivateTraining:
    """Wrap a model, optimizer and loader for DP-SGD with Poisson sampling (Opacus).

    Sampling and noise come from generators seeded inside this process from the OS CSPRNG
    (`SiloPrivacyEngine`): no seed that left the silo, nor torch's global seed, determines them.
    With `adaptive`, `max_grad_norm` is the starting clip bound and the optimizer's
    `max_grad_norm` holds the adapted one after training. `grad_sample_mode` picks how Opacus
    computes per-sample gradients (module hooks, torch.func vmap, or expanded weights); all give each sample's
    own gradient (tests/privacy/test_dp.py), they differ only in speed (benchmarks/dp_cost.py). "ghost" computes
    no per-sample gradients, only their norms; its clipped sum is tested equal to the sum of each sample's own
    clipped gradient. It cannot run adaptive clipping (Opacus' AdaClip optimizer reads per-sample gradients).
    """
    _check_accountant(accountant)
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise DPError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise DPError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm!r}")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise DPError(f"grad_sample_mode must be one of {list(GRAD_SAMPLE_MODES)}, got {grad_sample_mode!r}")
    clipping: dict[str, object] = {"clipping": "flat"}
    if adaptive is not None and grad_sample_mode == "ghost":
        raise DPError("adaptive clipping needs per-sample gradients, which ghost clipping does not compute; "
                      "use grad_sample_mode 'hooks' with adaptive clipping")
    if adaptive is not None:
        adaptive.check(noise_multiplier)
        clipping = {"clipping": "adaptive", "target_unclipped_quantile": adaptive.target_quantile,
                    "clipbound_learning_rate": adaptive.learning_rate, "unclipped_num_std": adaptive.count_noise,
                    "min_clipbound": adaptive.min_bound, "max_clipbound": adaptive.max_bound}
    engine = SiloPrivacyEngine(accountant=accountant, device=device)
    wrapped = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=grad_sample_mode,
        **clipping,
    )
    # ghost mode also hands back Opacus' loss wrapper; PrivateTraining.backward takes its place
    module, optimizer, data_loader = (wrapped[0], wrapped[1], wrapped[-1])
    return PrivateTraining(module=module, optimizer=optimizer, data_loader=data_loader, engine=engine,
                           grad_sample_mode=grad_sample_mode)


def noise_for_target(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: Accountant = "rdp"
) -> float:
    """The smallest noise multiplier σ whose `steps` steps at rate q spend ≤ target ε."""
    _check_accountant(accountant)
    _check_delta(delta)
    if not (target_epsilon > 0):
        raise DPError(f"target_epsilon must be > 0, got {target_epsilon!r}")
    DPStep(1.0, sample_rate, steps)  # validates sample_rate and steps
    if steps == 0:
        raise DPError("steps must be >= 1 to derive a noise multiplier")
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )
    except ValueError as e:
        raise DPError(
            f"no noise multiplier reaches ε={target_epsilon} at δ={delta} with q={sample_rate}, "
            f"{steps} steps: {e}; raise target_epsilon or lower steps/sample_rate"
        ) from None


def epsilon_spent(history: Sequence[DPStep], *, delta: float, accountant: Accountant = "rdp") -> float:
    """ε (at δ) of the composition of every step in `history` (rounds, studies, in any order)."""
    cls = _check_accountant(accountant)
    _check_delta(delta)
    entries = [(h.noise_multiplier, h.sample_rate, h.steps) for h in history if h.steps > 0]
    if not entries:
        return 0.0
    acc = cls()
    acc.history = entries  # Opacus' accountants compose their `history` of (σ, q, steps)
    eps = float(acc.get_epsilon(delta=delta))
    if not math.isfinite(eps):
        raise DPError(f"accountant {accountant!r} returned a non-finite ε ({eps}) for {len(entries)} entries")
    return eps


def would_exceed(
    history: Sequence[DPStep],
    prospective: DPStep,
    *,
    cap_epsilon: float,
    delta: float,
    accountant: Accountant = "rdp",
) -> tuple[bool, float]:
    """Whether running `prospective` after `history` would spend more than `cap_epsilon`.

    Returns (exceeds, ε after the prospective steps); a silo calls this BEFORE a round and
    refuses the round when `exceeds` is true.
    """
    if not (cap_epsilon > 0):
        raise DPError(f"cap_epsilon must be > 0, got {cap_epsilon!r}")
    eps = epsilon_spent([*history, prospective], delta=delta, accountant=accountant)
    exceeds = eps > cap_epsilon
    if exceeds:
        log.info("prospective %s would spend ε=%.4g > cap %.4g (δ=%g, %s)", prospective, eps, cap_epsilon, delta, accountant)
    return exceeds, eps
