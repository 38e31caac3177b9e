"""Multimodal model on non-IID synthetic hospitals: single modalities vs late fusion vs ours.

    python benchmarks/multimodal.py [--quick] [--silos 4] [--patients N] [--rounds N] [--variants ...] [--dp]

Federated training is simulated in one process with the silo's own training code: every silo
is a `silo_node.trainer.LocalTrainer` on the data `pipelines.ingest.ingest_silo` made from the
files `pipelines.synthetic.generate_federation` wrote; each round every silo trains from the
global weights and the coordinator's FedAvg rule averages the deltas (weighted by sample
count). Every variant uses the same seeds, the same cohorts and the same budget of rounds.
"central" trains the same model on the pooled training data for the same number of epochs in
total, keeping the round that scores best on a validation split of the pooled training data
(early stopping; the last round is reported too). AUROC is held out and pooled over all
silos' test splits.

Variants: each modality alone, concatenation late fusion, ours (gated mixture of experts),
ours trained centrally, and ours with 30 % / 60 % of patients missing one modality (the
generator's `missing_fraction`; its signal weights are fixed and untouched here). The main
variants use complete data (`missing_fraction=0`). Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import ConcatDataset, DataLoader, Dataset, random_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.aggregation import FedAvg  # noqa: E402
from coordinator.api.protocol import MODALITIES  # noqa: E402
from coordinator.api.study import StudySpec  # noqa: E402
from pipelines.dataset import MultimodalDataset, split_train_test  # noqa: E402
from pipelines.ingest import ingest_silo  # noqa: E402
from pipelines.models import get_shared_weights  # noqa: E402
from pipelines.synthetic import generate_federation  # noqa: E402
from silo_node.trainer import LocalTrainer  # noqa: E402

log = logging.getLogger("benchmarks.multimodal")
VARIANTS = ("single_ehr", "single_image", "single_signal", "concat", "ours", "missing_30", "missing_60", "central")


@dataclass
class Silo:
    name: str
    train: MultimodalDataset
    test: MultimodalDataset


def build_federation(root: Path, *, silos: int, patients: int, seed: int, missing_fraction: float,
                     spec: StudySpec) -> list[Silo]:
    """Generate the hospitals' files and ingest them exactly as a silo node does.

    The ingested silos are cached in `root/silos.pt`, so a kept `--data-dir` is generated once.
    """
    cache = root / "silos.pt"
    if cache.exists():
        return [Silo(*fields) for fields in torch.load(cache, weights_only=False)]
    hospitals = generate_federation(root, n_hospitals=silos, patients_per_hospital=patients, seed=seed,
                                    missing_fraction=missing_fraction, image_size=spec.cohort.image_size,
                                    signal_length=spec.cohort.signal_length)
    out = []
    for h in hospitals:
        key = f"benchmark-pseudonym-key-{h.name}".encode()
        result = ingest_silo(fhir=[h.fhir_dir], dicom=[h.dicom_dir], wearables=[h.wearables_dir],
                             cohort=spec.cohort, pseudonym_key=key)
        train, test = split_train_test(result.dataset, test_fraction=spec.cohort.test_fraction, seed=spec.training.seed)
        out.append(Silo(h.name, train, test))
    torch.save([(s.name, s.train, s.test) for s in out], cache)
    return out


def make_spec(base: StudySpec, *, modalities=MODALITIES, fusion: str = "moe") -> StudySpec:
    return base.model_copy(update={"modalities": tuple(modalities),
                                   "model": base.model.model_copy(update={"fusion": fusion})})


@torch.no_grad()
def pooled_auroc(trainer: LocalTrainer, weights: list[np.ndarray], tests: list[Dataset]) -> float:
    """AUROC of the global model over the concatenation of the given test sets."""
    trainer.evaluate(weights)  # loads the weights (and checks them) the way the silo does
    model = trainer.model.eval()
    scores, labels = [], []
    for batch in DataLoader(ConcatDataset(tests), batch_size=512):
        ehr, image, signal, mask, label = batch
        scores.append(torch.sigmoid(model(ehr, image, signal, mask).logits).numpy())
        labels.append(label.numpy())
    return float(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))


def noise_for(spec: StudySpec, trainer: LocalTrainer) -> float | None:
    if not spec.privacy.dp:
        return None
    if spec.privacy.noise_multiplier is not None:
        return spec.privacy.noise_multiplier
    from privacy.dp import noise_for_target  # only needed with --dp

    return noise_for_target(target_epsilon=spec.privacy.target_epsilon, delta=spec.privacy.delta,
                            sample_rate=trainer.sample_rate(),
                            steps=trainer.steps_per_round() * spec.training.rounds, accountant=spec.privacy.accountant)


def run_federated(spec: StudySpec, silos: list[Silo]) -> dict:
    """FedAvg over in-process LocalTrainers; returns pooled/per-silo AUROC and gate weights."""
    trainers = [LocalTrainer(spec, s.train, s.test) for s in silos]
    # every silo builds the model from the same seed: the global start is silo 0's initial weights
    weights = get_shared_weights(trainers[0].model, trainers[0].personal)
    noises = [noise_for(spec, t) for t in trainers]
    rule = FedAvg()
    history = []
    for r in range(spec.training.rounds):
        results = [t.train_round(weights, noise_multiplier=n, round_seed=spec.training.seed * 100_003 + 1000 * r + i)
                   for i, (t, n) in enumerate(zip(trainers, noises))]
        avg = rule.aggregate([x.delta for x in results], [x.weight for x in results]).update
        weights = [w + d for w, d in zip(weights, avg)]
        history.append(round(float(np.mean([x.train_loss for x in results])), 4))
    per_silo = {s.name: t.evaluate(weights) for s, t in zip(silos, trainers)}
    return {
        "auroc": pooled_auroc(trainers[0], weights, [s.test for s in silos]),
        "per_silo_auroc": {k: round(v["auroc"], 4) for k, v in per_silo.items()},
        "gates": {k: {m: round(v[f"gate_{m}"], 4) for m in MODALITIES if f"gate_{m}" in v} for k, v in per_silo.items()},
        "train_loss": history,
        "weights": weights,
        "trainer": trainers[0],
    }


def run_central(spec: StudySpec, silos: list[Silo], *, validation_fraction: float = 0.15) -> dict:
    """The same model and trainer on the pooled training data, rounds x local_epochs epochs in total.

    Central training sees every sample in each step budget that the federation spreads over
    its silos, so it can overfit where FedAvg's averaging does not: it keeps the round whose
    weights score best on a validation split of the pooled TRAINING data (early stopping), so
    "central" is a fair upper reference. The last round's weights are reported as well.
    """
    # One epoch per step of the loop, so early stopping can pick any epoch of the same budget.
    t = spec.training
    spec = spec.model_copy(update={"training": t.model_copy(update={"rounds": t.rounds * t.local_epochs, "local_epochs": 1})})
    pooled = ConcatDataset([s.train for s in silos])
    n_val = max(1, int(round(validation_fraction * len(pooled))))
    train, val = random_split(pooled, [len(pooled) - n_val, n_val], generator=torch.Generator().manual_seed(spec.training.seed))
    trainer = LocalTrainer(spec, train, val)
    weights = get_shared_weights(trainer.model, trainer.personal)
    noise = noise_for(spec, trainer)
    best, best_val, val_curve = weights, -1.0, []
    for r in range(spec.training.rounds):
        res = trainer.train_round(weights, noise_multiplier=noise, round_seed=spec.training.seed * 100_003 + 1000 * r)
        weights = [w + d for w, d in zip(weights, res.delta)]
        val_auroc = float(trainer.evaluate(weights)["auroc"])
        val_curve.append(round(val_auroc, 4))
        if val_auroc > best_val:
            best, best_val = weights, val_auroc
    tests = [s.test for s in silos]
    return {"auroc": pooled_auroc(trainer, best, tests), "auroc_last_round": round(pooled_auroc(trainer, weights, tests), 4),
            "validation_auroc_per_epoch": val_curve, "selected_epoch": val_curve.index(max(val_curve)) + 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller cohorts and fewer rounds (< 10 min on 2 cores)")
    ap.add_argument("--silos", type=int, default=4)
    ap.add_argument("--patients", type=int, default=None, help="patients per hospital")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--local-epochs", type=int, default=None)
    ap.add_argument("--learning-rate", type=float, default=None)
    ap.add_argument("--kl-weight", type=float, default=1e-3)
    ap.add_argument("--consistency-weight", type=float, default=0.1)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dp", action="store_true", help="DP-SGD at every silo (off by default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", type=Path, default=None, help="keep the synthetic hospitals and ingested silos here and reuse them (default: a temp dir)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr, force=True)
    for noisy in ("pipelines", "silo_node", "coordinator", "pydicom"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    # Budget, equal for every variant: few rounds of several local epochs. Adam restarts at every
    # round (the silo builds a new optimizer), so with one epoch a round a silo takes only ~7 steps
    # before its state is thrown away, and the image encoder (whose signal is a lesion a few pixels
    # wide) never left chance level; 3 epochs a round fixes that. The KL weight is the study
    # default 1e-3: the 0.03 used before collapsed the weaker modalities' embeddings onto the prior.
    # These settings were chosen on the seed-1 federation; the reported figures use seed 0.
    patients = args.patients or (300 if args.quick else 1000)
    rounds = args.rounds or (5 if args.quick else 6)
    local_epochs = args.local_epochs or 3
    learning_rate = args.learning_rate or 3e-3
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.silos < 4:
        ap.error("the benchmark needs at least 4 silos (non-IID federation)")
    base = StudySpec(name="multimodal-benchmark")
    base = base.model_copy(update={
        "training": base.training.model_copy(update={"rounds": rounds, "local_epochs": local_epochs, "seed": args.seed,
                                                     "optimizer": "adam", "learning_rate": learning_rate,
                                                     "batch_size": 32}),
        "privacy": base.privacy.model_copy(update={"dp": args.dp, "encryption": "none"}),
        "model": base.model.model_copy(update={"kl_weight": args.kl_weight,
                                               "consistency_weight": args.consistency_weight}),
    })

    tmp = tempfile.TemporaryDirectory(prefix="fedcare-mm-") if args.data_dir is None else None
    root = Path(tmp.name) if tmp else args.data_dir
    seconds: dict[str, float] = {}
    federations: dict[str, list[Silo]] = {}
    needed = {"complete"} | {v for v in variants if v.startswith("missing_")}
    for tag, fraction in (("complete", 0.0), ("missing_30", 0.3), ("missing_60", 0.6)):
        if tag not in needed:
            continue
        t0 = time.perf_counter()
        federations[tag] = build_federation(root / f"{tag}-s{args.silos}-p{patients}-seed{args.seed}", silos=args.silos,
                                            patients=patients, seed=args.seed, missing_fraction=fraction, spec=base)
        seconds[f"data_{tag}"] = round(time.perf_counter() - t0, 1)
        log.info("%s: train/test %s", tag, {s.name: (len(s.train), len(s.test)) for s in federations[tag]})
    complete = federations["complete"]

    results: dict = {"single": {}}
    specs = {f"single_{m}": make_spec(base, modalities=(m,)) for m in MODALITIES}
    specs["concat"] = make_spec(base, fusion="concat")
    gates, per_silo, extra = {}, {}, {}
    for name in variants:
        t0 = time.perf_counter()
        if name == "central":
            out = run_central(make_spec(base), complete)
        else:
            out = run_federated(specs.get(name, make_spec(base)), federations.get(name, complete))
            per_silo[name] = out["per_silo_auroc"]
        seconds[name] = round(time.perf_counter() - t0, 1)
        auroc = round(out["auroc"], 4)
        if name.startswith("single_"):
            results["single"][name.removeprefix("single_")] = auroc
        else:
            results[name] = auroc
        if name in ("ours", "missing_60"):
            gates[name] = out["gates"]
        if name == "central":
            extra["central_detail"] = {k: out[k] for k in ("auroc_last_round", "validation_auroc_per_epoch", "selected_epoch")}
        if name.startswith("missing_"):  # the same trained model scored on the complete-data test patients
            extra[f"{name}_on_complete_test"] = round(
                pooled_auroc(out["trainer"], out["weights"], [s.test for s in complete]), 4)
        log.info("%s: pooled AUROC %.4f (%.0fs) train loss per round %s", name, auroc, seconds[name],
                 out.get("train_loss"))

    if set(variants) == set(VARIANTS):
        best_single = max(results["single"].values())
        results["targets"] = {
            "ours_ge_best_single_plus_0.05": results["ours"] >= best_single + 0.05,
            "ours_ge_concat": results["ours"] >= results["concat"],
            "ours_within_0.02_of_central": abs(results["ours"] - results["central"]) <= 0.02,
            "missing_60_within_0.05_of_ours": results["ours"] - results["missing_60"] <= 0.05,
        }
    seconds["total"] = round(time.perf_counter() - t_start, 1)
    m, t = base.model, base.training
    results.update({
        "gate_weights": gates.get("ours"),
        "gate_weights_missing_60": gates.get("missing_60"),
        "per_silo_auroc": per_silo,
        **extra,
        "settings": {
            "quick": args.quick, "silos": args.silos, "patients_per_silo": patients, "seed": args.seed,
            "train_test": {s.name: [len(s.train), len(s.test)] for s in complete},
            "rounds": t.rounds, "local_epochs": t.local_epochs, "central_epochs": t.rounds * t.local_epochs,
            "optimizer": t.optimizer, "learning_rate": t.learning_rate, "batch_size": t.batch_size,
            "embed_dim": m.embed_dim, "kl_weight": m.kl_weight, "consistency_weight": m.consistency_weight,
            "modality_dropout": m.modality_dropout, "dp": args.dp, "aggregation": "fedavg",
            "missing_fraction_main": 0.0, "threads": args.threads, "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "seconds": seconds,
    })
    if tmp:
        tmp.cleanup()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
