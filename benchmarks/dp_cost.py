"""The cost of privacy: seconds per local epoch of DP-SGD against plain SGD, same model and data.

    python benchmarks/dp_cost.py [--patients 600] [--repeats 3] [--models demo cnn]

For each model (`demo`: the demo's DP-sized model, fixed image/signal statistics and linear
heads, fedcare.demo's spec; `cnn`: MONAI CNN image and signal encoders, otherwise the default ModelSpec)
and each Opacus per-sample-gradient mode (module hooks, torch.func vmap, expanded weights, ghost clipping), one
epoch over `patients` synthetic patients' tensors of the demo's shapes, one thread, best of
`repeats`; plain SGD on the same model and loader is the reference. Poisson sampling and noise
are Opacus' own (privacy.dp.make_private). Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.api.study import ModelSpec, StudySpec, TrainingSpec
from fedcare.demo import DemoOptions, demo_spec
from pipelines.models import build_model, per_sample_loss
from privacy.dp import GRAD_SAMPLE_MODES, make_private, mean_backward

DEMO = demo_spec(DemoOptions(out=Path(".")))
MODELS = {"demo": (DEMO.model, DEMO.training),
          "cnn": (ModelSpec(image_encoder="cnn", signal_encoder="cnn"), TrainingSpec())}


def synthetic_tensors(spec: StudySpec, patients: int, *, seed: int = 0) -> TensorDataset:
    """`patients` random samples in the layout a silo's dataset yields for `spec` (EHR values and
    missing flags, image, signal, modality mask, label): the shapes that set the cost, not data that learns."""
    c = spec.cohort
    g = torch.Generator().manual_seed(seed)
    n, f = patients, len(c.ehr_columns)
    return TensorDataset(
        torch.randn(n, 2 * f, generator=g), torch.randn(n, 1, c.image_size, c.image_size, generator=g),
        torch.randn(n, len(c.signal_channels), c.signal_length, generator=g), torch.ones(n, 3),
        (torch.rand(n, generator=g) < 0.4).float())


def epoch_seconds(spec: StudySpec, *, patients: int, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` seconds per epoch: plain SGD, then DP-SGD in each grad-sample mode."""
    data = synthetic_tensors(spec, patients)
    out: dict[str, float] = {}
    for mode in ("sgd", *GRAD_SAMPLE_MODES):
        torch.manual_seed(0)
        model = build_model(**spec.model_arguments()).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = DataLoader(data, batch_size=spec.training.batch_size, shuffle=True)
        backward = mean_backward
        if mode != "sgd":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                private = make_private(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0,
                                       max_grad_norm=1.0, grad_sample_mode=mode)  # type: ignore[arg-type]
            model, optimizer, loader, backward = private.module, private.optimizer, private.data_loader, private.backward
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            for ehr, image, signal, mask, label in loader:
                optimizer.zero_grad(set_to_none=True)
                if label.numel() == 0:  # Poisson sampling can draw an empty batch
                    continue
                losses, _ = per_sample_loss(model(ehr, image, signal, mask), label, mask,
                                            kl_weight=spec.model.kl_weight, consistency_weight=spec.model.consistency_weight)
                backward(losses)
                optimizer.step()
            times.append(time.perf_counter() - started)
        out[mode] = round(min(times), 4)
    return out


def dp_cost(*, patients: int = 600, repeats: int = 3, models: tuple[str, ...] = tuple(MODELS)) -> dict[str, dict]:
    """Per model: seconds per epoch per mode, the fastest DP mode and its ratio to plain SGD, one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = {}
        for name in models:
            model, training = MODELS[name]
            spec = StudySpec(name=f"dp-cost-{name}", model=model, training=training)
            seconds = epoch_seconds(spec, patients=patients, repeats=repeats)
            fastest = min(GRAD_SAMPLE_MODES, key=lambda m: seconds[m])
            result[name] = {"parameters": sum(p.numel() for p in build_model(**spec.model_arguments()).parameters()),
                            "batch_size": training.batch_size, "seconds_per_epoch": seconds, "fastest_mode": fastest,
                            "dp_sgd_over_sgd": round(seconds[fastest] / seconds["sgd"], 2),
                            "hooks_over_sgd": round(seconds["hooks"] / seconds["sgd"], 2)}
        return result
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    started = time.time()
    result = {"benchmark": "dp_cost", "patients": args.patients, "torch_threads": 1,
              "models": dp_cost(patients=args.patients, repeats=args.repeats, models=tuple(args.models)),
              "wall_s": round(time.time() - started, 1), "platform": platform.platform()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
