"""Utility of federated training, with and without DP, against pooled and local-only training.

    python benchmarks/utility.py [--quick] [--seeds 3] [--datasets breast_cancer synthetic] [--data-dir DIR]

Two federations, each split into hospitals of unequal size and label prevalence (non-IID,
fixed seed):

* `breast_cancer`: scikit-learn's bundled Wisconsin diagnostic breast-cancer table (569
  patients, 30 features, label: malignant), a real clinical table that ships inside a package
  and needs no download, in 4 hospitals (215/170/110/60 patients, 25/35/45/60 % malignant).
  Features are standardised with federated statistics (per-hospital counts, sums and sums of
  squares added up, as a secure sum would), not per-hospital guesses. Model: logistic
  regression (`model.architecture = "linear"`), personal layer: the intercept (`head.bias`).
* `synthetic`: the demo's multimodal federation (pipelines.synthetic, FHIR + DICOM + wearable
  files ingested by pipelines.ingest exactly as a silo node does), 4 hospitals, the demo's model
  and, under DP, the demo's training settings (fedcare.demo.demo_spec).

Methods, each without DP and with DP-SGD at ε ∈ {1, 3, 8} (δ = 1e-5, RDP accountant, record
level at each hospital, the noise spread over the whole study): `pooled` (one model on all
hospitals' training data, DP at the same ε), `local` (each hospital alone), `fedavg`,
`fedavgm` (server momentum 0.9) and `fedadam` (Reddi et al. 2021) with the server steps of
coordinator.api.server_step, and `personal` (FedAvg with personal layers). Every hospital
trains with the silo's own code (silo_node.trainer.LocalTrainer: Opacus DP-SGD, split into
train/validation/test by pipelines.dataset.split_silo, threshold chosen on validation), and the
released model is the round with the best federated validation AUROC (the hospitals' `val_auroc`
weighted by validation size), as the coordinator releases it. A row is the mean ± std over
seeds of the mean per-hospital test AUROC and accuracy.

`dp_cost`: seconds per local epoch of DP-SGD against plain SGD (benchmarks/dp_cost.py), on the
demo's model and on the CNN model, one thread, best of 3, for each Opacus per-sample-gradient mode.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.aggregation import FedAvg  # noqa: E402
from coordinator.api.server_step import FedAdam, ServerMomentum, ServerOptimizer, ServerSGD  # noqa: E402
from coordinator.api.study import (  # noqa: E402
    CohortSpec, FeatureSpec, ModelSpec, PrivacySpec, StudySpec, TrainingSpec,
)
from pipelines.dataset import MultimodalDataset, split_silo  # noqa: E402

try:  # where the normalisation's clip lives (pipelines is being split into modules)
    from pipelines.normalise import CLIP  # noqa: E402
except ImportError:
    from pipelines.dataset import CLIP  # type: ignore[attr-defined,no-redef]  # noqa: E402
from dp_cost import DEMO, dp_cost  # noqa: E402  (benchmarks/ is the script's folder; a site package is named benchmarks)
from pipelines.models import get_shared_weights  # noqa: E402
from privacy.dp import noise_for_target  # noqa: E402
from silo_node.trainer import LocalTrainer  # noqa: E402

log = logging.getLogger("benchmarks.utility")
METHODS = ("pooled", "local", "fedavg", "fedavgm", "fedadam", "personal")
EPSILONS = (None, 1.0, 3.0, 8.0)
DELTA = 1e-5
PARTITION_SEED = 20240611  # the hospitals' patients; fixed across runs and seeds

# (patients, malignant share) per hospital: unequal size and prevalence
BREAST_CANCER_HOSPITALS = ((215, 0.25), (170, 0.35), (110, 0.45), (60, 0.60))


@dataclass
class Hospital:
    name: str
    data: MultimodalDataset


@dataclass
class Setting:
    """A federation and the study that trains on it (with and without DP)."""

    name: str
    hospitals: list[Hospital]
    spec: StudySpec  # without DP
    dp_training: TrainingSpec  # the training section under DP
    personal_layers: tuple[str, ...]


# --- data ---------------------------------------------------------------------------------------
def breast_cancer_setting(rounds: int) -> Setting:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x, y = bunch.data.astype(np.float64), (bunch.target == 0).astype(np.float32)  # sklearn: 0 = malignant
    rng = np.random.default_rng(PARTITION_SEED)
    pos, neg = list(rng.permutation(np.flatnonzero(y == 1))), list(rng.permutation(np.flatnonzero(y == 0)))
    parts = []
    for n, share in BREAST_CANCER_HOSPITALS:
        k = round(n * share)
        parts.append(np.array([pos.pop() for _ in range(k)] + [neg.pop() for _ in range(n - k)]))
    # federated standardisation: each hospital shares (n, Σx, Σx²); their sums give the pooled moments
    n = sum(len(p) for p in parts)
    s1 = sum(x[p].sum(axis=0) for p in parts)
    s2 = sum((x[p] ** 2).sum(axis=0) for p in parts)
    mean, std = s1 / n, np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 1e-12))
    hospitals = []
    for h, idx in enumerate(parts):
        values = np.clip((x[idx] - mean) / std, -CLIP, CLIP)
        ehr = np.concatenate([values, np.zeros_like(values)], axis=1).astype(np.float32)
        m = len(idx)
        mask = torch.zeros(m, 3)
        mask[:, 0] = 1.0
        hospitals.append(Hospital(f"hospital-{h + 1}", MultimodalDataset(
            ehr=torch.from_numpy(ehr), image=torch.zeros(m, 1, 8, 8), signal=torch.zeros(m, 1, 8), mask=mask,
            label=torch.from_numpy(y[idx]), pseudonyms=[f"bc-{h}-{i}" for i in idx])))
    features = tuple(FeatureSpec(name=f.replace(" ", "_"), system="sklearn-breast-cancer", code=str(i))
                     for i, f in enumerate(bunch.feature_names))
    spec = StudySpec(
        name="utility-breast-cancer", modalities=("ehr",),
        cohort=CohortSpec(features=features, image_size=8, signal_channels=("none",), signal_length=8),
        model=ModelSpec(architecture="linear"),
        training=TrainingSpec(rounds=rounds, local_epochs=1, batch_size=16, learning_rate=0.1, momentum=0.9),
        privacy=PrivacySpec(dp=False, target_epsilon=None, encryption="none"),
    )
    dp_training = spec.training.model_copy(update={"batch_size": 64, "learning_rate": 0.5, "momentum": 0.5})
    return Setting("breast_cancer", hospitals, spec, dp_training, ("head.bias",))


def synthetic_setting(root: Path, *, rounds: int, patients: int) -> Setting:
    """The demo's synthetic federation, ingested once and cached in `root/hospitals.pt`."""
    from pipelines.ingest import ingest_silo
    from pipelines.synthetic import generate_federation

    spec = StudySpec(
        name="utility-synthetic",
        cohort=CohortSpec(image_size=16, signal_length=64),
        model=DEMO.model,  # the demo's DP-sized model: fixed image/signal statistics, linear heads (#14)
        # measured on the demo's federation: without DP, Adam moves this model further in 5-10 rounds than SGD
        training=TrainingSpec(rounds=rounds, local_epochs=1, batch_size=32, learning_rate=0.01, optimizer="adam"),
        privacy=PrivacySpec(dp=False, target_epsilon=None, encryption="none"),
    )
    cache = root / "hospitals.pt"
    if cache.exists():
        hospitals = [Hospital(*h) for h in torch.load(cache, weights_only=False)]
    else:
        files = generate_federation(root, n_hospitals=4, patients_per_hospital=patients, seed=PARTITION_SEED,
                                    image_size=spec.cohort.image_size, signal_length=spec.cohort.signal_length)
        hospitals = []
        for h in files:
            result = ingest_silo(fhir=[h.fhir_dir], dicom=[h.dicom_dir], wearables=[h.wearables_dir], cohort=spec.cohort,
                                 pseudonym_key=f"utility-pseudonym-key-{h.name}".encode())
            hospitals.append(Hospital(h.name, result.dataset))
        torch.save([(h.name, h.data) for h in hospitals], cache)
    # under DP, Adam's per-coordinate scaling lifts the noise of coordinates without signal: the demo's SGD
    d = DEMO.training
    dp_training = spec.training.model_copy(update={"optimizer": d.optimizer, "batch_size": d.batch_size, "momentum": d.momentum,
                                                   "local_epochs": d.local_epochs, "learning_rate": d.learning_rate})
    return Setting("synthetic", hospitals, spec, dp_training, ("head",))


# --- training -------------------------------------------------------------------------------------
def study(setting: Setting, *, epsilon: float | None, seed: int, personal: bool = False) -> StudySpec:
    s = setting.spec
    training = (setting.dp_training if epsilon is not None else s.training).model_copy(update={"seed": seed})
    privacy = s.privacy.model_copy(update={"dp": epsilon is not None, "target_epsilon": epsilon, "delta": DELTA})
    model = s.model.model_copy(update={"personal_layers": setting.personal_layers if personal else ()})
    return s.model_copy(update={"training": training, "privacy": privacy, "model": model})


def noise(spec: StudySpec, trainer: LocalTrainer) -> float | None:
    """σ spreading the study's ε over all its rounds at this hospital (as silo_node.node does)."""
    p = spec.privacy
    if not p.dp:
        return None
    return noise_for_target(target_epsilon=p.target_epsilon, delta=p.delta, sample_rate=trainer.sample_rate(),
                            steps=trainer.steps_per_round() * spec.training.rounds, accountant=p.accountant)


def server_optimizer(method: str) -> ServerOptimizer:
    if method == "fedavgm":
        return ServerMomentum(lr=1.0, momentum=0.9)
    if method == "fedadam":
        return FedAdam(lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3)
    return ServerSGD(lr=1.0)


def _validated(trainers: list[LocalTrainer], weights: list[list[np.ndarray]]) -> tuple[float, list[dict[str, float]]]:
    """(federated validation AUROC, per-hospital metrics) of per-hospital weights."""
    metrics = [t.evaluate(w) for t, w in zip(trainers, weights)]
    sizes = [len(t.validation_set) for t in trainers]
    return float(np.average([m.get("val_auroc", 0.5) for m in metrics], weights=sizes)), metrics


def run(setting: Setting, method: str, *, epsilon: float | None, seed: int) -> dict[str, float]:
    spec = study(setting, epsilon=epsilon, seed=seed, personal=method == "personal")
    c = spec.cohort
    splits = [split_silo(h.data, test_fraction=c.test_fraction, validation_fraction=c.validation_fraction, seed=seed,
                         stratify=c.stratify_split) for h in setting.hospitals]
    hospitals = [LocalTrainer(spec, s.train, s.test, validation=s.validation) for s in splits]
    start = get_shared_weights(hospitals[0].model, hospitals[0].personal)
    best: tuple[float, list[dict[str, float]]] = (-1.0, [])
    rounds = spec.training.rounds
    if method == "pooled":
        pooled = LocalTrainer(spec, ConcatDataset([s.train for s in splits]), ConcatDataset([s.test for s in splits]))
        sigma, weights = noise(spec, pooled), start
        for r in range(rounds):
            result = pooled.train_round(weights, noise_multiplier=sigma, round_seed=seed * 100_003 + r)
            weights = [w + d for w, d in zip(weights, result.delta)]
            best = max(best, _validated(hospitals, [weights] * len(hospitals)), key=lambda b: b[0])
    elif method == "local":
        sigmas = [noise(spec, t) for t in hospitals]
        own = [start] * len(hospitals)
        bests = [(-1.0, {})] * len(hospitals)
        for r in range(rounds):
            own = [[w + d for w, d in zip(ws, t.train_round(ws, noise_multiplier=s, round_seed=seed * 100_003 + 1000 * r + i).delta)]
                   for i, (t, ws, s) in enumerate(zip(hospitals, own, sigmas))]
            for i, (t, ws) in enumerate(zip(hospitals, own)):
                m = t.evaluate(ws)  # each hospital keeps its own best round
                if m.get("val_auroc", 0.5) > bests[i][0]:
                    bests[i] = (m.get("val_auroc", 0.5), m)
        best = (0.0, [b[1] for b in bests])
    else:
        sigmas = [noise(spec, t) for t in hospitals]
        server, rule, weights = server_optimizer(method), FedAvg(), start
        for r in range(rounds):
            results = [t.train_round(weights, noise_multiplier=s, round_seed=seed * 100_003 + 1000 * r + i)
                       for i, (t, s) in enumerate(zip(hospitals, sigmas))]
            average = rule.aggregate([x.delta for x in results], [x.weight for x in results]).update
            weights = [w.astype(np.float32) for w in server.step(weights, average)]
            best = max(best, _validated(hospitals, [weights] * len(hospitals)), key=lambda b: b[0])
    per_hospital = best[1]
    return {"auroc": float(np.mean([m["auroc"] for m in per_hospital])),
            "accuracy": float(np.mean([m["accuracy"] for m in per_hospital])),
            "baseline_accuracy": float(np.mean([m["baseline_accuracy"] for m in per_hospital]))}


def goals(rows: list[dict]) -> dict[str, dict[str, object]]:
    """The issue's goals per data set, where the rows to judge them are present (AUROC means over seeds)."""
    out: dict[str, dict[str, object]] = {}
    for name in sorted({r["dataset"] for r in rows}):
        def mean(method: str, epsilon: float | None, metric: str = "auroc") -> float | None:
            hit = [r[metric]["mean"] for r in rows if r["dataset"] == name and r["method"] == method and r["epsilon"] == epsilon]
            return hit[0] if hit else None

        checks: dict[str, object] = {}
        fed, pooled = mean("fedavg", None), mean("pooled", None)
        if fed is not None and pooled is not None:
            checks["fedavg_within_0.01_of_pooled"] = {"gap": round(pooled - fed, 4), "met": pooled - fed <= 0.01}
        for epsilon, tolerance in ((1.0, 0.03), (8.0, 0.01)):
            private = mean("fedavg", epsilon)
            if fed is not None and private is not None:
                checks[f"fedavg_eps{epsilon:g}_within_{tolerance}_of_no_dp"] = {
                    "gap": round(fed - private, 4), "met": fed - private <= tolerance}
        personal = mean("personal", None, "accuracy")
        others = [mean("pooled", None, "accuracy"), mean("local", None, "accuracy")]
        if personal is not None and None not in others:
            checks["personal_accuracy_beats_pooled_and_local"] = {
                "personal": personal, "pooled": others[0], "local": others[1], "met": personal > max(others)}  # type: ignore[type-var]
        out[name] = checks
    return out


def summarise(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, ε ∈ {none, 1, 8}, fewer rounds, a small synthetic federation")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--datasets", nargs="+", default=["breast_cancer", "synthetic"], choices=["breast_cancer", "synthetic"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--epsilons", nargs="+", default=None, help="'none' and/or numbers")
    ap.add_argument("--patients", type=int, default=None, help="synthetic patients per hospital")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep the synthetic federation here (reused)")
    ap.add_argument("--no-dp-cost", action="store_true", help="skip the DP-SGD vs SGD timing (benchmarks/dp_cost.py)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    seeds = range(1 if args.quick else args.seeds)
    epsilons = ([None if e == "none" else float(e) for e in args.epsilons] if args.epsilons
                else [None, 1.0, 8.0] if args.quick else list(EPSILONS))
    rounds = args.rounds or (6 if args.quick else 10)
    patients = args.patients or (120 if args.quick else 200)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or Path(tmp)
        settings = []
        for name in args.datasets:
            if name == "breast_cancer":
                settings.append(breast_cancer_setting(rounds))
            else:
                (root / f"synthetic-{patients}").mkdir(parents=True, exist_ok=True)
                settings.append(synthetic_setting(root / f"synthetic-{patients}", rounds=rounds, patients=patients))
        rows = []
        for setting in settings:
            for epsilon in epsilons:
                for method in args.methods:
                    t0 = time.time()
                    runs = [run(setting, method, epsilon=epsilon, seed=s) for s in seeds]
                    row = {"dataset": setting.name, "method": method, "epsilon": epsilon,
                           "auroc": summarise([r["auroc"] for r in runs]),
                           "accuracy": summarise([r["accuracy"] for r in runs]),
                           "baseline_accuracy": round(float(np.mean([r["baseline_accuracy"] for r in runs])), 4),
                           "seconds": round(time.time() - t0, 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    cost = dp_cost() if not args.no_dp_cost else None
    result = {
        "benchmark": "utility",
        "quick": args.quick,
        "seeds": len(seeds),
        "rounds": rounds,
        "delta": DELTA,
        "rows": rows,
        "goals": goals(rows),
        "dp_cost": cost,
        "wall_s": round(time.time() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
