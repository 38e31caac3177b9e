"""Server-side optimisers applied to the aggregated pseudo-gradient (Reddi, Charles, Zaheer,
Garrett, Rush, Konecny, Kumar, McMahan 2021, "Adaptive Federated Optimization", ICLR).

Any aggregation rule yields delta = aggregate of (silo model - global model). The server
optimiser turns it into the next global model:

    ServerSGD:  x <- x + lr * delta                                 (lr = 1 is plain FedAvg)
    FedAvgM:    m <- beta m + delta;  x <- x + lr * m               (Hsu, Qi, Brown 2019, server momentum)
    FedAdam:    m <- b1 m + (1-b1) delta;  v <- b2 v + (1-b2) delta^2
    FedYogi:    m as Adam;  v <- v - (1-b2) delta^2 sign(v - delta^2)
    both:       x <- x + lr * m / (sqrt(v) + tau)

As in the paper there is no bias correction and v starts at tau^2. The optimiser's state
(m, v, step) persists between rounds and restarts: `state_dict` / `load_state_dict`
(coordinator.aggregation.state stores it at the coordinator).

It is part of the wire contract because under CKKS the coordinator never sees the aggregate:
every silo applies this same deterministic step (float64 arithmetic, in array order) to the
decrypted average and must reach the same model, which the coordinator checks by its hash. In the clear the coordinator steps; under CKKS every silo runs the same
deterministic step on the decrypted average, and the silos' model hashes are compared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from coordinator.api.protocol import ServerOptimizerName


Update = list[np.ndarray]


class ServerStepError(ValueError):
    """A server step that cannot run (bad parameter, shapes that differ from the state)."""



class ServerOptimizer(ABC):
    """`step(global_model, delta) -> new global model`; arrays keep the global model's dtypes."""

    def __init__(self, *, lr: float) -> None:
        if not (np.isfinite(lr) and lr > 0):
            raise ServerStepError(f"server learning rate must be finite and > 0, got {lr!r}")
        self.lr = float(lr)
        self.steps = 0

    def step(self, model: Sequence[np.ndarray], delta: Sequence[np.ndarray]) -> Update:
        if len(model) != len(delta):
            raise ServerStepError(f"global model has {len(model)} arrays, aggregated update {len(delta)}")
        for j, (x, d) in enumerate(zip(model, delta)):
            if np.shape(x) != np.shape(d):
                raise ServerStepError(f"array {j}: global model shape {np.shape(x)}, update shape {np.shape(d)}")
        direction = self._direction([np.asarray(d, dtype=np.float64) for d in delta])
        self.steps += 1
        return [(np.asarray(x, dtype=np.float64) + self.lr * s).astype(np.asarray(x).dtype) for x, s in zip(model, direction)]

    @abstractmethod
    def _direction(self, delta: list[np.ndarray]) -> list[np.ndarray]:
        """The step before the learning rate; updates the optimiser state."""

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])


class ServerSGD(ServerOptimizer):
    """x <- x + lr * delta. With lr = 1 this is the aggregation rule's result, unchanged."""

    def _direction(self, delta: list[np.ndarray]) -> list[np.ndarray]:
        return delta


class ServerMomentum(ServerOptimizer):
    """FedAvgM (Hsu, Qi, Brown 2019): m <- momentum * m + delta; x <- x + lr * m. Server momentum
    averages the silos' DP noise across rounds. With momentum = 0 it is ServerSGD."""

    def __init__(self, *, lr: float, momentum: float = 0.9) -> None:
        super().__init__(lr=lr)
        if not (0.0 <= momentum < 1.0):
            raise ServerStepError(f"FedAvgM: momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.m: list[np.ndarray] | None = None

    def _direction(self, delta: list[np.ndarray]) -> list[np.ndarray]:
        if self.m is None:
            self.m = [np.zeros_like(d) for d in delta]
        elif [m.shape for m in self.m] != [d.shape for d in delta]:
            raise ServerStepError("FedAvgM: the update's shapes differ from the optimiser state's")
        for m, d in zip(self.m, delta):
            m *= self.momentum
            m += d
        return [m.copy() for m in self.m]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "m": self.m}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.m = None if state.get("m") is None else [np.array(a, dtype=np.float64) for a in state["m"]]


class _Adaptive(ServerOptimizer):
    def __init__(self, *, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(lr=lr)
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            if not (0.0 <= value < 1.0):
                raise ServerStepError(f"{type(self).__name__}: {name} must be in [0, 1), got {value!r}")
        if not (np.isfinite(tau) and tau > 0):
            raise ServerStepError(f"{type(self).__name__}: tau (adaptivity) must be finite and > 0, got {tau!r}")
        self.beta1, self.beta2, self.tau = float(beta1), float(beta2), float(tau)
        self.m: list[np.ndarray] | None = None
        self.v: list[np.ndarray] | None = None

    def _direction(self, delta: list[np.ndarray]) -> list[np.ndarray]:
        if self.m is None or self.v is None:
            self.m = [np.zeros_like(d) for d in delta]
            self.v = [np.full_like(d, self.tau**2) for d in delta]
        elif [m.shape for m in self.m] != [d.shape for d in delta]:
            raise ServerStepError(f"{type(self).__name__}: the update's shapes differ from the optimiser state's")
        out = []
        for m, v, d in zip(self.m, self.v, delta):
            m *= self.beta1
            m += (1 - self.beta1) * d
            self._second_moment(v, d * d)
            out.append(m / (np.sqrt(v) + self.tau))
        return out

    @abstractmethod
    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> None:
        """Update v in place from the squared pseudo-gradient."""

    def state_dict(self) -> dict:
        return {"steps": self.steps, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.m = None if state["m"] is None else [np.array(a, dtype=np.float64) for a in state["m"]]
        self.v = None if state["v"] is None else [np.array(a, dtype=np.float64) for a in state["v"]]


class FedAdam(_Adaptive):
    """Adam on the server (Reddi et al. 2021, Algorithm 2)."""

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> None:
        v *= self.beta2
        v += (1 - self.beta2) * d2


class FedYogi(_Adaptive):
    """Yogi on the server (Reddi et al. 2021, Algorithm 2): v grows additively, never explodes."""

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> None:
        v -= (1 - self.beta2) * d2 * np.sign(v - d2)


def build_server_optimizer(name: str, lr: float, momentum: float = 0.9) -> ServerOptimizer:
    """`none` is x + lr * delta (plain FedAvg at lr = 1); `fedavgm` server momentum (Hsu et al. 2019);
    `fedadam` / `fedyogi` per Reddi et al. 2021, with beta1 = momentum."""
    optimisers = {
        ServerOptimizerName.NONE: lambda: ServerSGD(lr=lr),
        ServerOptimizerName.FEDAVGM: lambda: ServerMomentum(lr=lr, momentum=momentum),
        ServerOptimizerName.FEDADAM: lambda: FedAdam(lr=lr, beta1=momentum),
        ServerOptimizerName.FEDYOGI: lambda: FedYogi(lr=lr, beta1=momentum),
    }
    try:
        which = ServerOptimizerName(name)
    except ValueError:
        raise ServerStepError(f"unknown server optimizer {name!r}; known: {', '.join(optimisers)}") from None
    return optimisers[which]()
