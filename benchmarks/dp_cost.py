"""The cost of privacy: seconds per local epoch of DP-SGD against plain SGD, same model and data.

    python benchmarks/dp_cost.py [--patients 600] [--repeats 3] [--models demo cnn] [--modes ew functorch]
        [--channels-last] [--profile]

For each model (`demo`: the demo's DP-sized model, fixed image/signal statistics and linear
heads, fedcare.demo's spec; `cnn`: MONAI CNN image and signal encoders, otherwise the default ModelSpec)
and each Opacus per-sample-gradient mode (module hooks, per-layer torch.func vmap "functorch", expanded
weights, ghost clipping), one epoch over `patients` synthetic patients' tensors of the demo's shapes, one
thread, best of `repeats`, in CPU seconds of the process (`clock`); plain SGD on the same model and loader
is the reference. Poisson sampling and noise are Opacus' own (privacy.dp.make_private). Per-sample gradients of the whole model in one
torch.func `vmap(grad(loss))` cannot run here: the model's forward refuses NaN/Inf input with a
data-dependent check, which vmap cannot batch; Opacus' "functorch" mode runs vmap layer by layer.
`--channels-last` runs every mode with the model and images in channels-last memory format.

`--profile` splits each mode's epoch into forward, backward (with per-sample gradients in
hooks/functorch/ew, the norms and the second pass under ghost clipping), per-sample clipping and
accumulation (`clip_and_accumulate`), noise (`add_noise`) and the rest of the step, and lists the operators
with the most self CPU time (torch.profiler). Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.api.study import ModelSpec, StudySpec, TrainingSpec
from fedcare.demo import DemoOptions, demo_spec
from pipelines.models import build_model, per_sample_loss
from privacy.dp import GRAD_SAMPLE_MODES, make_private, mean_backward

MAX_GRAD_NORM, NOISE_MULTIPLIER = 1.0, 1.0
# CPU seconds of this process, not wall time: training runs on one thread here, and on a shared machine the
# wall clock also counts the other processes' turns on the cores (measured: 5 min 49 s wall for 1 min 16 s of CPU)
clock = time.process_time

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


def _timed(obj: object, name: str, phases: dict[str, float], phase: str) -> None:
    """Add the seconds `obj.name()` takes to `phases[phase]` (the instance's method, wrapped in place)."""
    method: Callable[..., object] = getattr(obj, name)

    def timed(*args: object, **kwargs: object) -> object:
        started = clock()
        try:
            return method(*args, **kwargs)
        finally:
            phases[phase] += clock() - started

    setattr(obj, name, timed)


def _epoch(model, optimizer, loader, backward, spec, phases, channels_last) -> None:  # type: ignore[no-untyped-def]
    """One epoch; seconds per phase added to `phases` (forward, backward, step: clip, noise inside it)."""
    for ehr, image, signal, mask, label in loader:
        optimizer.zero_grad(set_to_none=True)
        if label.numel() == 0:  # Poisson sampling can draw an empty batch
            continue
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        t0 = clock()
        losses, _ = per_sample_loss(model(ehr, image, signal, mask), label, mask,
                                    kl_weight=spec.model.kl_weight, consistency_weight=spec.model.consistency_weight)
        t1 = clock()
        backward(losses)
        t2 = clock()
        phases["forward"] += t1 - t0
        phases["backward"] += t2 - t1
        optimizer.step()
        phases["step"] += clock() - t2


def epoch_seconds(spec: StudySpec, *, patients: int, repeats: int, modes: tuple[str, ...] = GRAD_SAMPLE_MODES,
                  channels_last: bool = False, profile: bool = False) -> dict[str, dict]:
    """Best-of-`repeats` seconds per epoch: plain SGD, then DP-SGD in each mode; with `profile`, each mode's
    seconds per phase (per epoch, mean over repeats) and its top operators by self CPU time (one more epoch)."""
    data = synthetic_tensors(spec, patients)
    if channels_last:  # the images in memory once, as a silo's loader would keep them
        data = TensorDataset(*(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in data.tensors))
    seconds: dict[str, float] = {}
    phases_out: dict[str, dict[str, float]] = {}
    operators: dict[str, list[dict[str, object]]] = {}
    for mode in ("sgd", *modes):
        torch.manual_seed(0)
        model = build_model(**spec.model_arguments()).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = DataLoader(data, batch_size=spec.training.batch_size, shuffle=True)
        backward = mean_backward
        phases: dict[str, float] = defaultdict(float)
        if mode != "sgd":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                private = make_private(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=NOISE_MULTIPLIER,
                                       max_grad_norm=MAX_GRAD_NORM, grad_sample_mode=mode)  # type: ignore[arg-type]
            model, optimizer, loader, backward = private.module, private.optimizer, private.data_loader, private.backward
            _timed(optimizer, "clip_and_accumulate", phases, "clip")
            _timed(optimizer, "add_noise", phases, "noise")
        times = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus' full-backward-hook notice, once per batch
            for _ in range(repeats):
                started = clock()
                _epoch(model, optimizer, loader, backward, spec, phases, channels_last)
                times.append(clock() - started)
            seconds[mode] = round(min(times), 4)
            if profile:
                phases_out[mode] = _per_epoch(phases, repeats)
                operators[mode] = top_operators(partial(_epoch, model, optimizer, loader, backward, spec,
                                                        defaultdict(float), channels_last))
    out: dict[str, dict] = {"seconds_per_epoch": seconds}
    if profile:
        out["phases"], out["top_operators"] = phases_out, operators
    return out


def _per_epoch(phases: dict[str, float], repeats: int) -> dict[str, float]:
    """Seconds per epoch per phase; `update`: the optimizer step without Opacus' clipping and noise inside it."""
    out = dict(phases)
    out["update"] = out.pop("step", 0.0) - out.get("clip", 0.0) - out.get("noise", 0.0)
    return {k: round(v / repeats, 4) for k, v in out.items()}


def top_operators(epoch: Callable[[], None], *, top: int = 8) -> list[dict[str, object]]:
    """The operators with the most self CPU time in one epoch (torch.profiler), with their share of the epoch."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        epoch()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 1), "share": round(e.self_cpu_time_total / total, 3),
             "calls": e.count} for e in events[:top]]


def dp_cost(*, patients: int = 600, repeats: int = 3, models: tuple[str, ...] = tuple(MODELS),
            modes: tuple[str, ...] = GRAD_SAMPLE_MODES, channels_last: bool = False, profile: bool = False) -> dict[str, dict]:
    """Per model: seconds per epoch per mode, the fastest DP mode and its ratio to plain SGD, one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = {}
        for name in models:
            model, training = MODELS[name]
            spec = StudySpec(name=f"dp-cost-{name}", model=model, training=training)
            measured = epoch_seconds(spec, patients=patients, repeats=repeats, modes=modes, channels_last=channels_last,
                                     profile=profile)
            seconds = measured["seconds_per_epoch"]
            fastest = min(modes, key=lambda m: seconds[m])
            result[name] = {"parameters": sum(p.numel() for p in build_model(**spec.model_arguments()).parameters()),
                            "batch_size": training.batch_size, **measured, "fastest_mode": fastest,
                            "dp_sgd_over_sgd": round(seconds[fastest] / seconds["sgd"], 2),
                            "over_sgd": {m: round(seconds[m] / seconds["sgd"], 2) for m in modes}}
        return result
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--modes", nargs="+", default=list(GRAD_SAMPLE_MODES), choices=list(GRAD_SAMPLE_MODES))
    ap.add_argument("--channels-last", action="store_true", help="model and images in channels-last memory format")
    ap.add_argument("--profile", action="store_true", help="seconds per phase and the top operators of each mode")
    args = ap.parse_args()
    started = time.time()
    result = {"benchmark": "dp_cost", "patients": args.patients, "torch_threads": 1, "channels_last": args.channels_last,
              "models": dp_cost(patients=args.patients, repeats=args.repeats, models=tuple(args.models),
                                modes=tuple(args.modes), channels_last=args.channels_last, profile=args.profile),
              "wall_s": round(time.time() - started, 1), "platform": platform.platform()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
