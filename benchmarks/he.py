"""CKKS aggregation cost per mode: bytes on the wire, encrypt / sum / decrypt time, error.

    python benchmarks/he.py [--params 1000000] [--silos 8] [--modes baseline,exact,packed]

K silos each encrypt an update of N float32 values uniform in [-1, 1] (clip 1); the
coordinator sums them with sample-count weights; one silo decrypts the weighted average.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privacy.he import EncryptedSum, StudyKeys, decrypt_average, encrypt_update  # noqa: E402
from privacy.he.params import MODES  # noqa: E402


def run_mode(mode: str, updates: list[np.ndarray], weights: list[float]) -> dict:
    n, k = len(updates[0]), len(updates)
    keys = StudyKeys.generate(mode)
    pub, sec = keys.public_context(), keys.secret_context()
    t0 = time.perf_counter()
    blobs = [encrypt_update(sec, x, mode=mode, clip=1.0) for x in updates]
    t1 = time.perf_counter()
    p = MODES[mode]
    # the coordinator knows the silos' claimed sample counts when the round opens
    unit = sum(weights) / 2 ** (p.weight_bits + p.headroom_bits - 1) if mode == "packed" else None
    agg = EncryptedSum(pub, n, mode, weight_unit=unit)
    for b, w in zip(blobs, weights):
        agg.add(b, w)
    result = agg.result()
    t2 = time.perf_counter()
    avg = decrypt_average(sec, result, n_values=n, total_weight=sum(weights))
    t3 = time.perf_counter()
    want = sum(w * x.astype(np.float64) for w, x in zip(weights, updates)) / sum(weights)
    return {
        "bytes_per_param": round(float(np.mean([len(b) for b in blobs])) / n, 3),
        "sum_bytes_per_param": round(len(result) / n, 3),
        "encrypt_us_per_param": round((t1 - t0) / (k * n) * 1e6, 4),
        "sum_us_per_param": round((t2 - t1) / (k * n) * 1e6, 4),
        "decrypt_us_per_param": round((t3 - t2) / n * 1e6, 4),
        "max_abs_error": float(np.abs(avg - want).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--silos", type=int, default=8)
    ap.add_argument("--modes", default="baseline,exact,packed")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    updates = [rng.uniform(-1, 1, a.params).astype(np.float32) for _ in range(a.silos)]
    weights = [float(w) for w in rng.integers(200, 2000, a.silos)]
    out: dict = {"params": a.params, "silos": a.silos, "machine": platform.processor() or platform.machine()}
    for mode in a.modes.split(","):
        out[mode] = run_mode(mode, updates, weights)
        print(f"{mode}: {out[mode]}", file=sys.stderr)
    if "baseline" in out and "packed" in out:
        b, p = out["baseline"], out["packed"]
        out["packed_enc_dec_speedup_vs_baseline"] = round(
            (b["encrypt_us_per_param"] + b["decrypt_us_per_param"])
            / (p["encrypt_us_per_param"] + p["decrypt_us_per_param"]),
            2,
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
