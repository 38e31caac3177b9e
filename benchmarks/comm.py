"""Bytes on the wire vs accuracy: uncompressed FedAvg against each codec and the best
combination, in the clear and under CKKS, same study and seeds.

In-process federated simulation (2 shared CPU cores make a real-process run per variant too
slow): three synthetic hospitals ingested once through the real pipelines, one
`silo_node.trainer.LocalTrainer` per silo, the silo's real `encode_update` (error feedback
included) and `resolve_version`, and the coordinator's real `RoundAggregator` (store, blob
store, decode, aggregation, downlink encoding) and `model_blob`. Bytes are the blobs that
cross the wire (update up; model version, delta or seeded-init hash down, and the final
version fetched for evaluation); gRPC framing (~0.1 %) is not included.

    python benchmarks/comm.py [--rounds 8] [--seeds 3] [--variants none,topk,...]

Prints one JSON object on its last line: {"rounds", "silos", "seeds", "params", "variants": {name:
{"bytes_up", "bytes_down", "bytes", "auroc", "auroc_seeds", "reduction", "auroc_loss",
"auroc_loss_std", "baseline"}}}. `reduction` = 1 - bytes / bytes of the uncompressed run with
the same encryption; `auroc_loss` is the mean over seeds of (baseline - variant), paired by seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from coordinator.api import federation_pb2 as pb  # noqa: E402
from coordinator.api.protocol import SEEDED_INIT, TENSORS  # noqa: E402
from coordinator.api.study import CompressionSpec, PrivacySpec, StudySpec, TrainingSpec  # noqa: E402
from coordinator.api.tensors import encode_tensors  # noqa: E402
from coordinator.blobs import BlobStore  # noqa: E402
from coordinator.rounds import RoundAggregator  # noqa: E402
from coordinator.versions import ModelVersions  # noqa: E402
from coordinator.store import ModelVersionRow, RoundRow, Store, StudyRow, UpdateRow, open_engine  # noqa: E402
from pipelines.dataset import split_train_test  # noqa: E402
from pipelines.ingest import ingest_silo  # noqa: E402
from pipelines.synthetic import generate_federation  # noqa: E402
from privacy.he import StudyKeys  # noqa: E402
from silo_node.trainer import LocalTrainer  # noqa: E402
from silo_node.update import build_feedback, encode_update, resolve_version  # noqa: E402

VARIANTS: dict[str, tuple[str, dict]] = {  # name -> (encryption, CompressionSpec fields)
    "none": ("none", {}),
    "fp16": ("none", {"codec": "fp16"}),
    "q8": ("none", {"codec": "q8"}),
    "q4": ("none", {"codec": "q4"}),
    "topk": ("none", {"codec": "topk", "fraction": 0.1}),
    "randk": ("none", {"codec": "randk", "fraction": 0.1}),
    "best": ("none", {"codec": "q4", "zstd": True, "downlink": "q4"}),
    "topk05-q4down": ("none", {"codec": "topk", "fraction": 0.05, "zstd": True, "downlink": "q4"}),
    "topk02-q8down": ("none", {"codec": "topk", "fraction": 0.02, "zstd": True, "downlink": "q8"}),
    "topk10-q4down": ("none", {"codec": "topk", "fraction": 0.1, "zstd": True, "downlink": "q4"}),
    "ckks-none": ("ckks-exact", {}),
    "ckks-randk": ("ckks-exact", {"codec": "randk", "fraction": 0.25}),
    "ckks-randk10": ("ckks-exact", {"codec": "randk", "fraction": 0.1}),
    "ckks-packed": ("ckks-packed", {}),  # 12-bit fixed point, 4 values per slot (privacy/he/params.py)
    "ckks-best": ("ckks-packed", {"codec": "randk", "fraction": 0.5}),
}


def base_spec(rounds: int, encryption: str, compression: dict, seed: int = 0) -> StudySpec:
    return StudySpec(name="comm", training=TrainingSpec(rounds=rounds, local_epochs=2, batch_size=32, learning_rate=0.05,
                                                        min_silos=3, seed=seed),
                     privacy=PrivacySpec(dp=False, encryption=encryption),  # type: ignore[arg-type]
                     compression=CompressionSpec(**compression))


def load_silos(root: Path, spec: StudySpec, patients: int):
    hospitals = generate_federation(root / "data", n_hospitals=3, patients_per_hospital=patients, seed=1)
    out = []
    for h in hospitals:
        res = ingest_silo(fhir=[h.fhir_dir], dicom=[h.dicom_dir], wearables=[h.wearables_dir], cohort=spec.cohort,
                          pseudonym_key=b"k" * 32)
        out.append((h.name, *split_train_test(res.dataset, test_fraction=spec.cohort.test_fraction, seed=0)))
    return out


def run(spec: StudySpec, silos, root: Path) -> dict:
    torch.manual_seed(spec.training.seed)
    store = Store(open_engine(root / "coordinator.sqlite"))
    blobs = BlobStore(root / "blobs")
    versions = ModelVersions(store, blobs)
    closer = RoundAggregator(versions, audit=lambda *a, **k: None)
    trainers = {name: LocalTrainer(spec, train, test) for name, train, test in silos}
    names, v0 = next(iter(trainers.values())).initial_weights()
    secret = public = None
    if spec.protocol.encrypted:
        keys = StudyKeys.generate(spec.protocol.encryption.he_mode)
        secret, public = keys.secret_context(), keys.public_context()
    row = StudyRow(id="s", name="s", spec_json=spec.to_json(), spec_sha256=spec.sha256(), state="running",
                   created_at=0.0, current_round=1, public_context_sha=blobs.put(public) if public else None)
    store.add(row, ModelVersionRow(study_id="s", version=0, blob_sha=blobs.put(encode_tensors(names, v0)), encoding=TENSORS))
    feedback = {s: build_feedback(spec) for s in trainers}
    views: dict[str, tuple] = {s: None for s in trainers}  # each silo's copy of the last version
    up = down = 0

    def fetch(silo: str, version: int):
        nonlocal down
        header, data = versions.blob("s", spec, store.get(ModelVersionRow, "s", version))
        down += len(data)
        if header.encoding == SEEDED_INIT:
            n, w = trainers[silo].initial_weights()
            assert encode_tensors(n, w) and json.loads(header.metadata_json)["model_sha256"]
            views[silo] = (n, w)
        else:
            views[silo] = resolve_version(data, header.encoding, header.metadata_json, base=views[silo], secret_context=secret)
        return views[silo][1]

    for r in range(1, spec.training.rounds + 1):
        seed = 1000 + 100 * spec.training.seed + r
        rnd = RoundRow(study_id="s", number=r, state="open", nonce="n", seed=seed, participants_json="[]", opened_at=0.0,
                       deadline=1.0, outcome_json="{}")
        store.add(rnd)
        rows = []
        for silo, trainer in trainers.items():
            weights = fetch(silo, r - 1)
            result = trainer.train_round(weights, noise_multiplier=None, round_seed=seed)
            enc = encode_update(spec, names, result.delta, secret_context=secret, round_seed=seed, feedback=feedback[silo])
            up += len(enc.data)
            closer.add_update(row, rnd, spec, pb.BlobHeader(weight=result.weight, encoding=enc.encoding,
                                                                   metadata_json="{}"), enc.data)
            rows.append(UpdateRow(study_id="s", round=r, silo=silo, blob_sha=blobs.put(enc.data), size=len(enc.data),
                                  weight=result.weight, encoding=enc.encoding, metadata_json="{}", received_at=0.0))
        outcome = closer.close(row, rnd, spec, rows)
        rnd.state, rnd.outcome_json = "closed", outcome.to_json()
        store.add(rnd)
    aurocs, sizes = [], []
    for silo, trainer in trainers.items():
        m = trainer.evaluate(fetch(silo, spec.training.rounds))
        aurocs.append(m["auroc"])
        sizes.append(len(trainer.test_set))
    return {"bytes_up": up, "bytes_down": down, "bytes": up + down,
            "auroc": round(float(np.average(aurocs, weights=sizes)), 4),
            "params": int(sum(a.size for a in v0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per variant (model init, batches, round seeds)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    out: dict = {"rounds": args.rounds, "silos": 3, "seeds": args.seeds,
                 "mode": "in-process simulation, real encode/decode/aggregate", "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        silos = load_silos(Path(tmp), base_spec(args.rounds, "none", {}), args.patients)
        for name in args.variants.split(","):
            encryption, comp = VARIANTS[name]
            t0 = time.monotonic()
            per_seed = [run(base_spec(args.rounds, encryption, comp, seed), silos, Path(tmp) / f"{name}-{seed}")
                        for seed in range(args.seeds)]
            res = {k: int(np.mean([r[k] for r in per_seed])) for k in ("bytes_up", "bytes_down", "bytes")}
            res["auroc_seeds"] = [r["auroc"] for r in per_seed]
            res["auroc"] = round(float(np.mean(res["auroc_seeds"])), 4)
            res["seconds"] = round(time.monotonic() - t0, 1)
            out["params"] = per_seed[0]["params"]
            res["config"] = {"encryption": encryption, **comp}
            out["variants"][name] = res
            print(json.dumps({name: res}), file=sys.stderr, flush=True)
    for name, res in out["variants"].items():
        baseline = "ckks-none" if res["config"]["encryption"] != "none" else "none"
        if baseline in out["variants"]:
            ref = out["variants"][baseline]
            res["baseline"] = baseline
            res["reduction"] = round(1 - res["bytes"] / ref["bytes"], 4)
            # Paired by seed: same initial model, batches and round seeds as the baseline's run.
            losses = np.subtract(ref["auroc_seeds"], res["auroc_seeds"])
            res["auroc_loss"] = round(float(losses.mean()), 4)
            res["auroc_loss_std"] = round(float(losses.std(ddof=1)), 4) if len(losses) > 1 else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
