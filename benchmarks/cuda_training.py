"""A silo's local training on a GPU: the node's own trainer (silo_node.trainer.LocalTrainer) on CUDA
against the CPU, with and without DP-SGD (Opacus, the silo's secret noise generator on the GPU).

    python benchmarks/cuda_training.py [--patients 600 20000] [--models demo cnn] [--threads 16]

A hospital with a GPU sets `device = "auto"` (the default) or `"cuda"` in its node config; this
measures what that buys and checks that it computes the same thing:

- seconds per local round (one epoch, the study's batch size) on each device, DP and plain, per
  model (`demo`: the demo's DP-sized model; `cnn`: the default ModelSpec, MONAI CNN encoders),
  the GPU's peak memory, and samples per second;
- without DP, how far the same round (same weights, same round seed) lands on the two devices:
  max |CPU - CUDA| over the delta, relative to its largest entry. It is not float rounding alone:
  the reparameterisation and modality-dropout noise come from torch's CPU and CUDA generators,
  which draw different streams from one seed, so a round is reproducible per device, not across;
- under DP on CUDA, Opacus' per-sample gradients equal each sample's own gradient, computed by a
  separate backward pass (max abs difference), and the noise comes from the silo's CSPRNG-seeded
  generator on the GPU (privacy.dp.secret_generator), never torch's global one.

Prints one JSON object on its last line. Without a GPU only the CPU rows are measured and
`cuda_available` is false.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dp_cost import MODELS, synthetic_tensors

from coordinator.api.study import PrivacySpec, StudySpec
from pipelines.models import build_model
from privacy.dp import make_private
from silo_node.trainer import LocalTrainer

NOISE_MULTIPLIER = 1.0


def study(name: str, *, dp: bool) -> StudySpec:
    model, training = MODELS[name]
    return StudySpec(name=f"cuda-{name}", model=model, training=training.model_copy(update={"local_epochs": 1}),
                     privacy=PrivacySpec(dp=dp, noise_multiplier=NOISE_MULTIPLIER if dp else None,
                                         target_epsilon=None))


def timed_round(spec: StudySpec, data: torch.utils.data.Dataset, device: torch.device, *, repeats: int) -> dict:
    """Best-of-`repeats` seconds of one local round on `device`, after a warm-up round."""
    trainer = LocalTrainer(spec, data, data, device=device)
    _, weights = trainer.initial_weights()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = trainer.train_round(weights, noise_multiplier=NOISE_MULTIPLIER, round_seed=i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first round warms up kernels and allocators
            times.append(time.perf_counter() - started)
    finite = all(np.isfinite(d).all() for d in result.delta)
    # the node evaluates every version it gets (metrics, threshold, gate report): that path runs on `device` too
    metrics = trainer.evaluate([w + d for w, d in zip(weights, result.delta)])
    row = {"seconds_per_round": round(min(times), 4), "samples_per_s": round(len(data) / min(times), 1),
           "delta_finite": bool(finite), "train_loss": round(result.train_loss, 4),
           "evaluated_auroc": round(metrics["auroc"], 4)}
    if device.type == "cuda":
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def same_update_on_both_devices(spec: StudySpec, data: torch.utils.data.Dataset) -> float:
    """max |delta_cpu - delta_cuda| / max |delta_cpu| for one round without DP from the same weights and seed."""
    deltas = []
    for device in (torch.device("cpu"), torch.device("cuda")):
        trainer = LocalTrainer(spec, data, data, device=device)
        _, weights = trainer.initial_weights()
        deltas.append(trainer.train_round(weights, noise_multiplier=None, round_seed=7).delta)
    cpu, gpu = (np.concatenate([d.ravel() for d in ds]) for ds in deltas)
    return float(np.abs(cpu - gpu).max() / max(np.abs(cpu).max(), 1e-12))


def per_sample_gradients_match(spec: StudySpec, data: torch.utils.data.Dataset, device: torch.device,
                               samples: int = 8) -> dict[str, float]:
    """Max |Opacus' per-sample gradient - the sample's own gradient| over `samples` samples on `device`,
    with how many parameter tensors were compared and the largest gradient entry (so 0 means equal, not absent).

    The loss is the label's cross-entropy (a per-sample term); both forward passes draw the same
    reparameterisation and modality-dropout noise (same seed, same device), as in
    tests/models/test_encoder_variants.py on the CPU."""
    torch.manual_seed(0)
    model = build_model(**spec.model_arguments()).to(device).train()
    reference = build_model(**spec.model_arguments()).to(device).train()
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(data, batch_size=samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private = make_private(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=0.0,
                               max_grad_norm=1e6, device=device, grad_sample_mode="hooks")
    ehr, image, signal, mask, label = (x.to(device) for x in next(iter(loader)))  # the plain loader: one batch of `samples`
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.manual_seed(5)
    bce(private.module(ehr, image, signal, mask).logits, label).backward()
    per_sample = {n.removeprefix("_module."): p.grad_sample for n, p in private.module.named_parameters()
                  if getattr(p, "grad_sample", None) is not None}
    torch.manual_seed(5)
    logits = reference(ehr, image, signal, mask).logits
    named = [(n, p) for n, p in reference.named_parameters() if n in per_sample]
    worst = largest = 0.0
    for i in range(samples):
        own = torch.autograd.grad(bce(logits[i], label[i]), [p for _, p in named], retain_graph=True,
                                  allow_unused=True)
        for (name, _), g in zip(named, own):
            g = torch.zeros_like(per_sample[name][i]) if g is None else g
            worst = max(worst, float((per_sample[name][i] - g).abs().max()))
            largest = max(largest, float(g.abs().max()))
    return {"max_abs_error": worst, "largest_gradient": largest, "tensors": len(named), "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, nargs="+", default=[600])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for the CPU rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])
    started = time.time()
    rows: dict[str, dict] = {}
    checks: dict[str, dict] = {}
    for name in args.models:
        for dp in (False, True):
            spec = study(name, dp=dp)
            for n in args.patients:
                data = synthetic_tensors(spec, n)
                for device in devices:
                    key = f"{name}/{'dp' if dp else 'sgd'}/{n}/{device.type}"
                    rows[key] = timed_round(spec, data, device, repeats=args.repeats)
                    print(key, rows[key], flush=True)
        if cuda:
            spec = study(name, dp=False)
            data = synthetic_tensors(spec, 256)
            checks[name] = {"relative_update_difference_cpu_vs_cuda": same_update_on_both_devices(spec, data),
                            "per_sample_gradients_cuda":
                                per_sample_gradients_match(study(name, dp=True), data, torch.device("cuda"))}
            print(name, checks[name], flush=True)
    result = {"benchmark": "cuda_training", "cuda_available": cuda, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpu_threads": args.threads,
              "noise_multiplier": NOISE_MULTIPLIER, "rounds": rows, "checks": checks,
              "wall_s": round(time.time() - started, 1), "platform": platform.platform()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
