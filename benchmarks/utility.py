"""Utility of federated training, with and without DP, against pooled and local-only training.

    python benchmarks/utility.py [--quick] [--seeds 3] [--datasets breast_cancer synthetic] [--data-dir DIR]
        [--epsilons none inf 8] [--patients 600] [--batch-size 128] [--adaptive-clipping] [--max-grad-norm 0.5]

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
  and, under DP, the demo's training settings (fedcare.demo.demo_spec) with a clip bound of 2.5
  (`SYNTHETIC_CLIP_BOUND`; docs/privacy-utility.md).

Methods, each without DP and with DP-SGD at ε ∈ {1, 3, 8} (δ = 1e-5, RDP accountant, record
level at each hospital, the noise spread over the whole study): `pooled` (one model on all
hospitals' training data, DP at the same ε), `local` (each hospital alone), `fedavg`,
`fedavgm` (server momentum 0.9) and `fedadam` (Reddi et al. 2021) with the server steps of
coordinator.api.server_step, and `personal` (FedAvg with personal layers). Every hospital
trains with the silo's own code (silo_node.trainer.LocalTrainer: Opacus DP-SGD, split into
train/validation/test by pipelines.dataset.split_silo, threshold chosen on validation), and the
released model is the round with the best federated validation AUROC (the hospitals' `val_auroc`
weighted by validation size), as the coordinator releases it. A row is the mean ± std over
seeds of the mean per-hospital test AUROC and accuracy; every hospital's split follows the seed, so
the gaps the goals judge are also given paired (the same seeds' differences, mean ± std).

ε = `inf` runs the DP-SGD mechanism with a vanishing noise multiplier (`CLIP_ONLY_NOISE`, 1e-6: the
ledger's DPStep refuses 0; per-sample clipping, Poisson sampling, the DP training settings): set beside `none` and a finite ε it splits the cost of
privacy into what clipping and the DP settings cost and what the noise costs. The DP knobs
(`--batch-size`, `--local-epochs`, `--learning-rate`, `--momentum`, `--optimizer`, `--max-grad-norm`,
`--adaptive-clipping`) change
the training and privacy sections under DP, exactly as a study spec would; each DP row reports the
noise multiplier σ, the expected batch q·n and σ/(q·n), the noise's standard deviation on each
coordinate of the mean clipped gradient in units of the clip bound (Abadi et al. 2016), the figure
that falls as a hospital's patients grow at fixed ε and sampling rate. `--embed-dim` and `--ehr-hidden`
size the model, with and without DP alike.

`dp_cost`: seconds per local epoch of DP-SGD against plain SGD (benchmarks/dp_cost.py), on the
demo's model and on the CNN model, one thread, best of 3 (CPU seconds), for each Opacus per-sample-gradient mode.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dp_cost import (  # benchmarks/ is the script's folder (a site package is named benchmarks)
    DEMO,
    dp_cost,
)

from coordinator.aggregation import FedAvg
from coordinator.api.server_step import (
    FedAdam,
    ServerMomentum,
    ServerOptimizer,
    ServerSGD,
)
from coordinator.api.study import (
    CohortSpec,
    FeatureSpec,
    ModelSpec,
    PrivacySpec,
    StudySpec,
    TrainingSpec,
)
from pipelines.dataset import MultimodalDataset, split_silo
from pipelines.models import build_model, get_shared_weights
from pipelines.normalise import CLIP
from privacy.dp import noise_for_target
from silo_node.trainer import LocalTrainer

log = logging.getLogger("benchmarks.utility")
METHODS = ("pooled", "local", "fedavg", "fedavgm", "fedadam", "personal")
EPSILONS = (None, 1.0, 3.0, 8.0)
DELTA = 1e-5
PARTITION_SEED = 20240611  # the hospitals' patients; fixed across runs and seeds

# The synthetic federation's DP clip bound C, by measurement at 600 and 1200 patients per hospital (docs/privacy-utility.md):
# at the demo's C = 1 clipping shrinks SGD's steps (600 patients: 0.880 AUROC unclipped, 0.824 clipped without noise,
# 0.821 at ε = 8), at C = 5 the noise, which grows with C, costs 0.03; C = 2.5 met the ε = 8 goal at 1200 patients.
SYNTHETIC_CLIP_BOUND = 2.5

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
    dp_privacy: dict[str, object] = field(default_factory=dict)  # privacy section fields set under DP


Epsilon = float | None  # None: no DP; math.inf: DP-SGD with noise multiplier CLIP_ONLY_NOISE (clipping only)
CLIP_ONLY_NOISE = 1e-6  # σ of the ε = inf rows: no noise to speak of (σ·C/(q·n) ~ 1e-8), > 0 as the ledger's DPStep needs


def parse_epsilon(token: str) -> Epsilon:
    return None if token == "none" else math.inf if token == "inf" else float(token)


def epsilon_label(epsilon: Epsilon) -> float | str | None:
    """The row's ε in JSON ('inf' is not a JSON number)."""
    return "inf" if epsilon is not None and math.isinf(epsilon) else epsilon


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
    return Setting("synthetic", hospitals, spec, dp_training, ("head",), {"max_grad_norm": SYNTHETIC_CLIP_BOUND})


# --- training -------------------------------------------------------------------------------------
def study(setting: Setting, *, epsilon: Epsilon, seed: int, personal: bool = False) -> StudySpec:
    s = setting.spec
    training = (setting.dp_training if epsilon is not None else s.training).model_copy(update={"seed": seed})
    dp = {"dp": False, "target_epsilon": None} if epsilon is None else {
        **setting.dp_privacy, "dp": True, **({"target_epsilon": None, "noise_multiplier": CLIP_ONLY_NOISE} if math.isinf(epsilon)
                                            else {"target_epsilon": epsilon})}
    privacy = s.privacy.model_copy(update={**dp, "delta": DELTA})
    model = s.model.model_copy(update={"personal_layers": setting.personal_layers if personal else ()})
    return s.model_copy(update={"training": training, "privacy": privacy, "model": model})


def noise(spec: StudySpec, trainer: LocalTrainer) -> float | None:
    """σ spreading the study's ε over all its rounds at this hospital (as silo_node.node does)."""
    p = spec.privacy
    if not p.dp:
        return None
    if p.noise_multiplier is not None:
        return p.noise_multiplier
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


def noise_figures(trainers: list[LocalTrainer], sigmas: list[float | None]) -> dict[str, float]:
    """Mean over hospitals of σ, the expected batch q·n and σ/(q·n): the std of the noise on each coordinate
    of the mean clipped gradient, in units of the clip bound (the noise DP-SGD adds to one step's update)."""
    if sigmas[0] is None:
        return {}
    batches = [t.sample_rate() * t.n_train for t in trainers]
    return {"sigma": float(np.mean(sigmas)), "expected_batch": float(np.mean(batches)),
            "noise_over_clip": float(np.mean([s / b for s, b in zip(sigmas, batches)]))}  # type: ignore[operator]


def run(setting: Setting, method: str, *, epsilon: Epsilon, seed: int) -> dict[str, float]:
    spec = study(setting, epsilon=epsilon, seed=seed, personal=method == "personal")
    c = spec.cohort
    splits = [split_silo(h.data, test_fraction=c.test_fraction, validation_fraction=c.validation_fraction, seed=seed,
                         stratify=c.stratify_split) for h in setting.hospitals]
    hospitals = [LocalTrainer(spec, s.train, s.test, validation=s.validation) for s in splits]
    start = get_shared_weights(hospitals[0].model, hospitals[0].personal)
    best: tuple[float, list[dict[str, float]]] = (-1.0, [])
    rounds = spec.training.rounds
    sigmas = [noise(spec, t) for t in hospitals]
    figures = noise_figures(hospitals, sigmas)
    if method == "pooled":
        pooled = LocalTrainer(spec, ConcatDataset([s.train for s in splits]), ConcatDataset([s.test for s in splits]))
        sigma, weights = noise(spec, pooled), start
        figures = noise_figures([pooled], [sigma])
        for r in range(rounds):
            result = pooled.train_round(weights, noise_multiplier=sigma, round_seed=seed * 100_003 + r)
            weights = [w + d for w, d in zip(weights, result.delta)]
            best = max(best, _validated(hospitals, [weights] * len(hospitals)), key=lambda b: b[0])
    elif method == "local":
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
            "baseline_accuracy": float(np.mean([m["baseline_accuracy"] for m in per_hospital])), **figures}


def goals(rows: list[dict]) -> dict[str, dict[str, object]]:
    """The issue's goals per data set, where the rows to judge them are present (AUROC means over seeds).

    A DP gap is also given paired, from the per-seed AUROCs (the same seed trains on the same split with and
    without DP): its std is the spread of the seeds' own differences, free of the split-to-split spread."""
    out: dict[str, dict[str, object]] = {}
    for name in sorted({r["dataset"] for r in rows}):
        def row(method: str, epsilon: float | str | None, name: str = name) -> dict | None:
            hit = [r for r in rows if r["dataset"] == name and r["method"] == method and r["epsilon"] == epsilon]
            return hit[0] if hit else None

        def mean(method: str, epsilon: float | str | None, metric: str = "auroc") -> float | None:
            r = row(method, epsilon)
            return r[metric]["mean"] if r else None

        def gap(method: str, reference: float | str | None, epsilon: float | str, tolerance: float) -> dict[str, object]:
            a, b = row(method, reference), row(method, epsilon)
            assert a is not None and b is not None
            paired = np.subtract(a["auroc_per_seed"], b["auroc_per_seed"])
            g = round(a["auroc"]["mean"] - b["auroc"]["mean"], 4)
            return {"gap": g, "paired_std": round(float(np.std(paired)), 4), "met": g <= tolerance}

        checks: dict[str, object] = {}
        fed, pooled = mean("fedavg", None), mean("pooled", None)
        if fed is not None and pooled is not None:
            checks["fedavg_within_0.01_of_pooled"] = {"gap": round(pooled - fed, 4), "met": pooled - fed <= 0.01}
        for epsilon, tolerance in ((1.0, 0.03), (8.0, 0.01)):
            if fed is not None and row("fedavg", epsilon) is not None:
                checks[f"fedavg_eps{epsilon:g}_within_{tolerance}_of_no_dp"] = gap("fedavg", None, epsilon, tolerance)
                if row("fedavg", "inf") is not None:  # the part of the gap the noise makes, the rest clipping/settings
                    checks[f"fedavg_eps{epsilon:g}_noise_gap_vs_eps_inf"] = gap("fedavg", "inf", epsilon, tolerance)
        personal = mean("personal", None, "accuracy")
        others = [mean("pooled", None, "accuracy"), mean("local", None, "accuracy")]
        if personal is not None and None not in others:
            checks["personal_accuracy_beats_pooled_and_local"] = {
                "personal": personal, "pooled": others[0], "local": others[1], "met": personal > max(others)}  # type: ignore[type-var]
        out[name] = checks
    return out


def summarise(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)}


def dp_knobs(args: argparse.Namespace) -> tuple[dict[str, object], dict[str, object]]:
    """(training, privacy) fields the command line sets under DP; each is a study-spec field."""
    training = {k: v for k, v in (("batch_size", args.batch_size), ("local_epochs", args.local_epochs),
                                  ("learning_rate", args.learning_rate), ("momentum", args.momentum),
                                  ("optimizer", args.optimizer)) if v is not None}
    privacy: dict[str, object] = {"max_grad_norm": args.max_grad_norm} if args.max_grad_norm is not None else {}
    if args.adaptive_clipping:
        privacy["clipping"] = "adaptive"
    return training, privacy


def with_knobs(setting: Setting, training: dict[str, object], privacy: dict[str, object],
               model: dict[str, object], *, no_dp_training: str = "own") -> Setting:
    """`setting` with the DP knobs under DP and the model knobs (with and without DP: the same model);
    `no_dp_training` "dp": the rows without DP train with the DP rows' training section too."""
    dp_training = setting.dp_training.model_copy(update=training)
    TrainingSpec.model_validate(dp_training.model_dump())  # refused here, naming the field, not mid-run
    PrivacySpec.model_validate({**setting.spec.privacy.model_dump(), **privacy})
    spec = setting.spec.model_copy(update={"model": ModelSpec.model_validate({**setting.spec.model.model_dump(), **model})})
    if no_dp_training == "dp":
        spec = spec.model_copy(update={"training": dp_training})
    return Setting(setting.name, setting.hospitals, spec, dp_training, setting.personal_layers,
                   {**setting.dp_privacy, **privacy})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, ε ∈ {none, 1, 8}, fewer rounds, a small synthetic federation")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--datasets", nargs="+", default=["breast_cancer", "synthetic"], choices=["breast_cancer", "synthetic"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--epsilons", nargs="+", default=None,
                    help="'none' (no DP), 'inf' (DP-SGD with a vanishing noise multiplier: clipping only) and/or numbers")
    ap.add_argument("--patients", type=int, default=None, help="synthetic patients per hospital")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep the synthetic federation here (reused)")
    ap.add_argument("--no-dp-cost", action="store_true", help="skip the DP-SGD vs SGD timing (benchmarks/dp_cost.py)")
    knobs = ap.add_argument_group("DP knobs (training.* and privacy.* of the study under DP; default: the data set's own)")
    knobs.add_argument("--batch-size", type=int, default=None, help="training.batch_size: sampling rate 1/ceil(n/batch)")
    knobs.add_argument("--local-epochs", type=int, default=None, help="training.local_epochs")
    knobs.add_argument("--learning-rate", type=float, default=None, help="training.learning_rate")
    knobs.add_argument("--momentum", type=float, default=None, help="training.momentum (SGD)")
    knobs.add_argument("--optimizer", choices=["sgd", "adam"], default=None, help="training.optimizer")
    knobs.add_argument("--max-grad-norm", type=float, default=None, help="privacy.max_grad_norm: the clip bound (its start if adaptive)")
    knobs.add_argument("--adaptive-clipping", action="store_true", help='privacy.clipping = "adaptive" (Andrew et al. 2021)')
    ap.add_argument("--no-dp-training", choices=["own", "dp"], default="own",
                    help="the rows without DP train with their own training section (default) or the DP rows' one: "
                         "with 'dp', none / inf / ε split the cost of privacy into settings, clipping and noise")
    sizes = ap.add_argument_group("model knobs (model.*, with and without DP; default: the data set's own)")
    sizes.add_argument("--embed-dim", type=int, default=None, help="model.embed_dim")
    sizes.add_argument("--ehr-hidden", type=int, default=None, help="model.ehr_hidden")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    seeds = range(1 if args.quick else args.seeds)
    epsilons = ([parse_epsilon(e) for e in args.epsilons] if args.epsilons
                else [None, 1.0, 8.0] if args.quick else list(EPSILONS))
    rounds = args.rounds or (6 if args.quick else 10)
    patients = args.patients or (120 if args.quick else 200)
    training_knobs, privacy_knobs = dp_knobs(args)
    model_knobs = {k: v for k, v in (("embed_dim", args.embed_dim), ("ehr_hidden", args.ehr_hidden)) if v is not None}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or Path(tmp)
        settings = []
        for name in args.datasets:
            if name == "breast_cancer":
                setting = breast_cancer_setting(rounds)
            else:
                (root / f"synthetic-{patients}").mkdir(parents=True, exist_ok=True)
                setting = synthetic_setting(root / f"synthetic-{patients}", rounds=rounds, patients=patients)
            settings.append(with_knobs(setting, training_knobs, privacy_knobs, model_knobs, no_dp_training=args.no_dp_training))
        rows = []
        for setting in settings:
            for epsilon in epsilons:
                for method in args.methods:
                    t0 = time.time()
                    runs = [run(setting, method, epsilon=epsilon, seed=s) for s in seeds]
                    row = {"dataset": setting.name, "method": method, "epsilon": epsilon_label(epsilon),
                           "auroc": summarise([r["auroc"] for r in runs]),
                           "auroc_per_seed": [round(r["auroc"], 4) for r in runs],
                           "accuracy": summarise([r["accuracy"] for r in runs]),
                           "baseline_accuracy": round(float(np.mean([r["baseline_accuracy"] for r in runs])), 4),
                           **{k: round(float(np.mean([r[k] for r in runs])), 4) for k in ("sigma", "expected_batch", "noise_over_clip")
                              if k in runs[0]},
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
        "patients_per_hospital": patients if "synthetic" in args.datasets else None,
        "no_dp_training": args.no_dp_training,
        "dp_settings": {s.name: {"training": s.dp_training.model_dump(include={"optimizer", "batch_size", "local_epochs",
                                                                                "learning_rate", "momentum"}),
                                 "privacy": {"max_grad_norm": s.spec.privacy.max_grad_norm, "clipping": s.spec.privacy.clipping,
                                             **s.dp_privacy},
                             "parameters": sum(p.numel() for p in build_model(**s.spec.model_arguments()).parameters())}
                     for s in settings},
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
