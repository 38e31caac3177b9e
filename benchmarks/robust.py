"""Robust aggregation against malicious hospitals, in the clear and under CKKS.

    python benchmarks/robust.py [--quick] [--patients 300] [--rounds 10] [--workers 1] [--data-dir DIR]

Ten synthetic hospitals (`pipelines.synthetic.generate_federation(n_hospitals=10)`), ingested
as a silo does; federated training is simulated in one process with the silo's own
`LocalTrainer`. The first k silos are malicious (k = 10/20/30 % of 10; `--quick`: 30 % only)
and run one attack from `silo_node.attacks` on their update or training samples. Every rule
comes from `coordinator.aggregation.build_rule`; norm bounding and multi-Krum also run
"encrypted": updates are CKKS-encrypted in `screen` mode, the coordinator computes encrypted
squared norms / pairwise distances (`privacy.he.screening`), an honest silo decrypts those
scalars only, `coordinator.aggregation.screened` decides, and the coordinator sums the
accepted, norm-scaled ciphertexts. AUROC is pooled over all ten silos' (clean) test splits.

Settings a reader needs: norm bound and centered-clipping tau = median honest update norm of a
clean first round; trimmed mean beta = 0.3; multi-Krum f = 3, m = 5; ALIE/IPM attackers
estimate the benign mean/std from the colluding malicious silos' own honest updates (one
silo: its own update, std assumed = |mean|). Backdoor entries also give `backdoor_success`:
share of test patients without heart failure (with an image) that the triggered image flips
to positive. Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import ConcatDataset, DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.aggregation import MultiKrum, NormBounding, build_rule  # noqa: E402
from coordinator.aggregation.base import flatten, unflatten  # noqa: E402
from coordinator.aggregation.screened import decide, encrypted_aggregate, scalars_needed  # noqa: E402
from coordinator.api.study import StudySpec  # noqa: E402
from pipelines.dataset import split_train_test  # noqa: E402
from pipelines.ingest import ingest_silo  # noqa: E402
from pipelines.models import get_shared_weights  # noqa: E402
from pipelines.synthetic import generate_federation  # noqa: E402
from privacy.he import StudyKeys, decrypt_average, encrypt_update  # noqa: E402
from privacy.he.screening import Screener, decrypt_scalar  # noqa: E402
from silo_node.attacks import Backdoor, build_attack  # noqa: E402
from silo_node.trainer import LocalTrainer  # noqa: E402

log = logging.getLogger("benchmarks.robust")
N_SILOS = 10
CLIP = 10.0  # L-inf clip of encrypted updates (far above honest values, ~0.05)
ATTACKS = {  # benchmark strengths; each is documented in silo_node/attacks.py
    "sign_flip": {"scale": 4.0},
    "scaling": {"factor": 10.0},
    "gaussian_noise": {"std": 0.5},
    "label_flip": {},
    "alie": {},  # z from n and the number of malicious silos
    "ipm": {"epsilon": 4.0},
    "backdoor": {"fraction": 0.5, "size": 4},
}
ENCRYPTABLE = ("norm_bounding", "krum")
_STATE: dict = {}  # silos and settings, shared with worker processes (fork)


def build_silos(root: Path, *, patients: int, seed: int, spec: StudySpec) -> list[tuple]:
    cache = root / "silos.pt"
    if cache.exists():
        return torch.load(cache, weights_only=False)
    hospitals = generate_federation(root, n_hospitals=N_SILOS, patients_per_hospital=patients, seed=seed,
                                    missing_fraction=0.0, image_size=spec.cohort.image_size,
                                    signal_length=spec.cohort.signal_length)
    out = []
    for h in hospitals:
        result = ingest_silo(fhir=[h.fhir_dir], dicom=[h.dicom_dir], wearables=[h.wearables_dir], cohort=spec.cohort,
                             pseudonym_key=f"robust-benchmark-key-{h.name}".encode())
        train, test = split_train_test(result.dataset, test_fraction=spec.cohort.test_fraction, seed=spec.training.seed)
        out.append((h.name, train, test))
    torch.save(out, cache)
    return out


@torch.no_grad()
def evaluate(trainer: LocalTrainer, weights, tests, backdoor: Backdoor | None) -> tuple[float, float | None]:
    trainer.evaluate(weights)  # loads the weights as the silo does
    model = trainer.model.eval()
    test = ConcatDataset(tests)
    scores, labels, flipped = [], [], []
    for ehr, image, signal, mask, label in DataLoader(test, batch_size=512):
        scores.append(torch.sigmoid(model(ehr, image, signal, mask).logits).numpy())
        labels.append(label.numpy())
        if backdoor is not None:
            keep = (label < 0.5) & (mask[:, 1] > 0)
            if keep.any():
                out = model(ehr[keep], backdoor.stamp(image[keep]), signal[keep], mask[keep]).logits
                flipped.append((torch.sigmoid(out) >= 0.5).numpy())
    auroc = float(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))
    success = float(np.concatenate(flipped).mean()) if flipped else None
    return auroc, success


def _aggregate_encrypted(rule, deltas, weights, keys) -> list[np.ndarray]:
    pub, sec = keys
    blobs = [encrypt_update(sec, flatten(d).astype(np.float32), mode="screen", clip=CLIP) for d in deltas]
    screener = Screener(pub)  # the coordinator: public context and ciphertexts only
    for b in blobs:
        screener.add(b)
    need = scalars_needed(rule, len(blobs))
    # an honest silo decrypts the scalars, and only them
    sq_norms = [decrypt_scalar(sec, screener.sq_norm(i)) for i in need["sq_norms"]] or None
    sq_dist = {(i, j): decrypt_scalar(sec, screener.sq_distance(i, j)) for i, j in need["sq_distances"]} or None
    decision = decide(rule, weights, sq_norms=sq_norms, sq_distances=sq_dist)
    n_values = sum(a.size for a in deltas[0])
    summed, total, post = encrypted_aggregate(pub, blobs, decision, n_values=n_values)
    avg = decrypt_average(sec, summed, n_values=n_values, total_weight=total) * post
    return unflatten(avg.astype(np.float64), deltas[0])


def run_one(job: dict) -> dict:
    """One federation: rule x attack x number of malicious silos x plain/encrypted."""
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    spec, silos, bound = _STATE["spec"], _STATE["silos"], _STATE["bound"]
    k, kind = job["malicious"], job["attack"]
    attack = None
    if kind != "none" and k > 0:
        params = dict(ATTACKS[kind])
        if kind == "alie":
            params = {"n_silos": N_SILOS, "n_malicious": k}
        attack = build_attack(kind, **params)
        if isinstance(attack, Backdoor):
            attack.seed = 0
    trainers = []
    for i, (_, train, test) in enumerate(silos):
        if attack is not None and i < k:
            train = attack.poison(train, rng=np.random.default_rng(i))
        trainers.append(LocalTrainer(spec, train, test))
    weights = get_shared_weights(trainers[0].model, trainers[0].personal)
    params = {"norm_bounding": {"bound": bound}, "centered_clipping": {"tau": bound, "iterations": 3},
              "trimmed_mean": {"beta": 0.3}, "krum": {"f": 3, "m": 5}}.get(job["rule"], {})
    rule = build_rule(job["rule"], params)
    keys = _STATE.get("keys")
    if job["encrypted"] and keys is None:
        sk = StudyKeys.generate("screen")
        keys = _STATE["keys"] = (sk.public_context(), sk.secret_context())
    for r in range(spec.training.rounds):
        results = [t.train_round(weights, noise_multiplier=None, round_seed=spec.training.seed * 100_003 + 1000 * r + i)
                   for i, t in enumerate(trainers)]
        deltas = [x.delta for x in results]
        if attack is not None and kind not in ("label_flip", "backdoor"):
            benign = deltas[:k] if k > 1 else None  # colluders' own honest updates
            rng = np.random.default_rng([r, 17])
            deltas = [attack.apply(d, benign=benign, rng=rng) if i < k else d for i, d in enumerate(deltas)]
        w = [x.weight for x in results]
        if job["encrypted"]:
            agg = _aggregate_encrypted(rule, deltas, w, keys)
        else:
            agg = rule.aggregate(deltas, w).update
        weights = [(a + d).astype(a.dtype) for a, d in zip(weights, agg)]
    auroc, success = evaluate(trainers[0], weights, [s[2] for s in silos], attack if isinstance(attack, Backdoor) else None)
    out = {"rule": job["rule"], "attack": kind, "malicious": k / N_SILOS, "encrypted": job["encrypted"],
           "auroc": round(auroc, 4)}
    if success is not None:
        out["backdoor_success"] = round(success, 4)
    log.info("%s (%.0fs)", out, time.perf_counter() - t0)
    return out


def calibrate_bound(spec: StudySpec, silos) -> float:
    """Median L2 norm of the honest updates of a clean first round."""
    torch.set_num_threads(1)
    trainers = [LocalTrainer(spec, s[1], s[2]) for s in silos]
    w0 = get_shared_weights(trainers[0].model, trainers[0].personal)
    norms = [float(np.linalg.norm(flatten(t.train_round(w0, noise_multiplier=None, round_seed=i).delta)))
             for i, t in enumerate(trainers)]
    return float(np.median(norms))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 %% malicious only, small cohorts, few rounds (< 10 min)")
    ap.add_argument("--patients", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--fractions", default=None, help="malicious fractions, e.g. 0.1,0.2,0.3")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr, force=True)
    for noisy in ("pipelines", "silo_node", "coordinator", "pydicom", "privacy"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    t_start = time.perf_counter()
    patients = args.patients or (120 if args.quick else 300)
    rounds = args.rounds or (6 if args.quick else 10)
    fractions = [float(x) for x in (args.fractions or ("0.3" if args.quick else "0.1,0.2,0.3")).split(",")]
    attacks = [a for a in args.attacks.split(",") if a]
    base = StudySpec(name="robust-benchmark")
    spec = base.model_copy(update={
        "training": base.training.model_copy(update={"rounds": rounds, "local_epochs": args.local_epochs,
                                                     "seed": args.seed, "optimizer": "adam", "learning_rate": 3e-3,
                                                     "batch_size": 32}),
        "privacy": base.privacy.model_copy(update={"dp": False, "encryption": "none"}),
    })
    tmp = tempfile.TemporaryDirectory(prefix="fedcare-robust-") if args.data_dir is None else None
    root = Path(tmp.name) if tmp else args.data_dir / f"p{patients}-seed{args.seed}"
    silos = build_silos(root, patients=patients, seed=args.seed, spec=spec)
    _STATE.update(spec=spec, silos=silos)
    _STATE["bound"] = calibrate_bound(spec, silos)
    log.info("data ready (%.0fs); norm bound / tau %.4f", time.perf_counter() - t_start, _STATE["bound"])

    rules = ["fedavg", "median", "trimmed_mean", "krum", "centered_clipping", "norm_bounding"]
    jobs = [{"rule": r, "attack": "none", "malicious": 0, "encrypted": False} for r in rules]
    jobs += [{"rule": r, "attack": "none", "malicious": 0, "encrypted": True} for r in ENCRYPTABLE]
    for a in attacks:
        for f in fractions:
            k = round(f * N_SILOS)
            jobs += [{"rule": r, "attack": a, "malicious": k, "encrypted": False} for r in rules]
            jobs += [{"rule": r, "attack": a, "malicious": k, "encrypted": True} for r in ENCRYPTABLE]
    if args.workers > 1:
        with mp.get_context("fork").Pool(args.workers) as pool:
            results = pool.map(run_one, jobs, chunksize=1)
    else:
        results = [run_one(j) for j in jobs]
    clean = next(x["auroc"] for x in results if x["rule"] == "fedavg" and x["attack"] == "none")

    targets = {}
    for a in attacks:
        at = [x for x in results if x["attack"] == a and x["malicious"] == max(fractions)]
        if not at:
            continue
        plain = {x["rule"]: x["auroc"] for x in at if not x["encrypted"]}
        enc = {x["rule"]: x["auroc"] for x in at if x["encrypted"]}
        best = max(plain, key=plain.get)
        targets[a] = {"best_rule": best, "best_within_0.02_of_clean": clean - plain[best] <= 0.02,
                      "fedavg_drop": round(clean - plain["fedavg"], 4),
                      "encrypted_within_0.01": all(abs(enc[r] - plain[r]) <= 0.01 for r in enc)}
    out = {
        "clean_fedavg": clean,
        "results": results,
        "targets_at_max_fraction": targets,
        "settings": {"quick": args.quick, "silos": N_SILOS, "patients_per_silo": patients, "rounds": rounds,
                     "local_epochs": args.local_epochs, "fractions": fractions, "attack_params": ATTACKS,
                     "norm_bound_and_tau": round(_STATE["bound"], 5), "krum": {"f": 3, "m": 5}, "trimmed_mean_beta": 0.3,
                     "encryption": "ckks screen mode, clip %g" % CLIP, "seed": args.seed,
                     "python": platform.python_version(), "torch": torch.__version__},
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if tmp:
        tmp.cleanup()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
