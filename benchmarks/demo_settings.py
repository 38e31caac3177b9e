"""The demo's study in one process, for choosing its settings: same hospitals, ingestion, split, trainer, FedAvg.

    python benchmarks/demo_settings.py --seeds 0 1 2 --set '{}' '{"momentum": 0.9}' \\
        '{"model": {"image_encoder": "cnn", "signal_encoder": "cnn"}}'

Each `--set` is a JSON object of overrides of fedcare.demo's study spec, by section (`training`,
`privacy`, `model`; a bare key is a `training` field). Per setting and seed: the hospitals of
`fedcare demo --seed s` (pipelines.synthetic, ingested by pipelines.ingest as a silo does), each
silo's train/validation/test split and feature scaling, DP-SGD at the spec's ε with the noise spread
over the study (as silo_node.node), FedAvg in the clear (CKKS adds exactly what FedAvg adds), the
released round chosen by pooled validation AUROC (as coordinator/release.py). Reports the released
round's sample-weighted test AUROC, accuracy, majority baseline and loss against version 0's. Much
faster than benchmarks/demo_learning.py (no processes, no CKKS), which checks the real demo.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.aggregation import FedAvg
from coordinator.api.study import StudySpec
from fedcare.demo import DemoOptions, demo_spec
from pipelines.dataset import split_silo
from pipelines.ingest import ingest_silo
from pipelines.models import get_shared_weights
from pipelines.normalise import fit_on_training
from pipelines.synthetic import generate_federation
from privacy.dp import noise_for_target
from silo_node.trainer import LocalTrainer

SECTIONS = ("training", "privacy", "model")


def study(seed: int, overrides: dict) -> StudySpec:
    spec = demo_spec(DemoOptions(out=Path("."), seed=seed))
    by_section: dict[str, dict] = {s: dict(overrides.get(s, {})) for s in SECTIONS}
    by_section["training"].update({k: v for k, v in overrides.items() if k not in SECTIONS})
    updated = {s: getattr(spec, s).model_validate({**getattr(spec, s).model_dump(), **by_section[s]}) for s in SECTIONS}
    return spec.model_copy(update=updated)


def hospitals(root: Path, seed: int, spec: StudySpec) -> list:
    files = generate_federation(root / f"seed-{seed}", n_hospitals=3, patients_per_hospital=DemoOptions.patients, seed=seed)
    return [ingest_silo(fhir=[h.fhir_dir], dicom=[h.dicom_dir], wearables=[h.wearables_dir], cohort=spec.cohort,
                        pseudonym_key=f"demo-settings-pseudonym-key-{h.name}".encode()).dataset for h in files]


def run(spec: StudySpec, datasets: list) -> dict:
    c, t, p = spec.cohort, spec.training, spec.privacy
    trainers = []
    for ds in datasets:
        train, validation, test = split_silo(ds, test_fraction=c.test_fraction, validation_fraction=c.validation_fraction,
                                             seed=t.seed, stratify=c.stratify_split)
        train, validation, test = fit_on_training(train, validation, test, features=c.features)
        trainers.append(LocalTrainer(spec, train, test, validation=validation))
    sigmas = [noise_for_target(target_epsilon=p.target_epsilon, delta=p.delta, sample_rate=tr.sample_rate(),
                               steps=tr.steps_per_round() * t.rounds, accountant=p.accountant) if p.dp else None
              for tr in trainers]
    weights = get_shared_weights(trainers[0].model, trainers[0].personal)

    def pooled(w: list[np.ndarray]) -> dict[str, float]:
        metrics = [tr.evaluate(w) for tr in trainers]
        test, val = [len(tr.test_set) for tr in trainers], [len(tr.validation_set) for tr in trainers]
        out = {k: float(np.average([m[k] for m in metrics], weights=test)) for k in ("auroc", "accuracy", "baseline_accuracy", "loss")}
        return {**out, "val_auroc": float(np.average([m["val_auroc"] for m in metrics], weights=val))}

    versions = [pooled(weights)]
    for r in range(t.rounds):
        results = [tr.train_round(weights, noise_multiplier=s, round_seed=t.seed * 1000 + r) for tr, s in zip(trainers, sigmas)]
        average = FedAvg().aggregate([x.delta for x in results], [x.weight for x in results]).update
        weights = [(w + d).astype(np.float32) for w, d in zip(weights, average)]
        versions.append(pooled(weights))
    best = max(range(1, len(versions)), key=lambda i: versions[i]["val_auroc"])
    released = versions[best]
    return {"released_round": best, **{k: round(v, 4) for k, v in released.items()},
            "loss_version0": round(versions[0]["loss"], 4),
            "learns": bool(released["auroc"] >= 0.75 and released["accuracy"] > released["baseline_accuracy"]
                           and released["loss"] < versions[0]["loss"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="settings", nargs="+", default=["{}"], help="JSON overrides of the demo's spec")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep the generated hospitals here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    started = time.time()
    rows: dict[str, list[dict]] = {s: [] for s in args.settings}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or Path(tmp)
        for seed in args.seeds:
            datasets = hospitals(root, seed, demo_spec(DemoOptions(out=Path("."), seed=seed)))
            for setting in args.settings:
                row = {"setting": setting, "seed": seed, **run(study(seed, json.loads(setting)), datasets)}
                rows[setting].append(row)
                print(json.dumps(row), flush=True)
    summary = [{"setting": s, "auroc_mean": round(float(np.mean([r["auroc"] for r in rs])), 4),
                "auroc_std": round(float(np.std([r["auroc"] for r in rs])), 4),
                "auroc_min": round(float(np.min([r["auroc"] for r in rs])), 4),
                "runs_learning": sum(r["learns"] for r in rs), "runs": len(rs)} for s, rs in rows.items()]
    print(json.dumps({"benchmark": "demo_settings", "seeds": args.seeds, "settings": summary,
                      "wall_s": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
