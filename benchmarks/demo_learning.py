"""Does `fedcare demo` learn, on every run? The demo with its defaults over several seeds.

    python benchmarks/demo_learning.py [--seeds 0 1 2 3 4] [--out DIR] [--parallel 1] [-- DEMO OPTIONS...]

Runs the real demo (`python -m fedcare demo --seed s`: synthetic hospitals in FHIR/DICOM/CSV,
coordinator and silos as processes over gRPC, DP-SGD at ε = 8 + CKKS) once per seed and reads
each results folder's summary.json. Per run: the released model's test AUROC and accuracy
(summary "final"), the majority-class baseline accuracy and the test loss of version 0 and of the
released version (summary "rounds"), and which round was released. The goal of #14 holds only if
EVERY run reaches AUROC >= 0.75, accuracy above the baseline and a test loss below version 0's:
`every_run_learns`. Under DP the noise is drawn from the silo's CSPRNG, so a seed fixes the data and
the model's start, not the run: the figures are mean ± std over runs. Prints one JSON object on its
last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

AUROC_GOAL = 0.75  # #14 item 6


def run_demo(seed: int, out: Path, extra: list[str]) -> dict:
    """One demo run; its released model's figures from summary.json."""
    folder = out / f"seed-{seed}"
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "fedcare", "demo", "--seed", str(seed), "--out", str(folder), *extra],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"seed": seed, "error": f"fedcare demo exited {done.returncode}: {tail[0]}"}
    summary = json.loads((folder / "summary.json").read_text())
    rounds = {r["round"]: r["metrics"] for r in summary["rounds"] if r.get("metrics")}
    released = summary["release"]["round"]
    final = summary["final"]
    row = {"seed": seed, "auroc": round(final["auroc"], 4), "accuracy": round(final["accuracy"], 4),
           "baseline_accuracy": round(rounds[released]["baseline_accuracy"], 4),
           "loss_version0": round(rounds[0]["loss"], 4), "loss_released": round(final["loss"], 4),
           "released_round": released, "val_auroc_released": round(summary["release"]["value"], 4),
           "auroc_by_round": [round(rounds[r]["auroc"], 4) for r in sorted(rounds)],
           "loss_by_round": [round(rounds[r]["loss"], 4) for r in sorted(rounds)],
           "seconds": round(time.time() - started, 1)}
    row["learns"] = bool(row["auroc"] >= AUROC_GOAL and row["accuracy"] > row["baseline_accuracy"]
                         and row["loss_released"] < row["loss_version0"])
    return row


def summarise(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4),
            "min": round(float(np.min(values)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", type=Path, default=None, help="keep the results folders here")
    ap.add_argument("--parallel", type=int, default=1, help="demos at once (each starts 1 + silos processes)")
    ap.add_argument("demo_options", nargs=argparse.REMAINDER, help="after --: options passed to every `fedcare demo`")
    args = ap.parse_args()
    extra = [a for a in args.demo_options if a != "--"]
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max(1, args.parallel)) as pool:
            runs = list(pool.map(lambda s: run_demo(s, out, extra), args.seeds))
    for r in runs:
        print(json.dumps(r), flush=True)
    ok = [r for r in runs if "error" not in r]
    result = {"benchmark": "demo_learning", "demo_options": extra, "seeds": args.seeds, "runs": runs,
              "auroc": summarise([r["auroc"] for r in ok]) if ok else None,
              "accuracy": summarise([r["accuracy"] for r in ok]) if ok else None,
              "baseline_accuracy": round(float(np.mean([r["baseline_accuracy"] for r in ok])), 4) if ok else None,
              "auroc_goal": AUROC_GOAL, "runs_learning": sum(r.get("learns", False) for r in runs),
              "every_run_learns": bool(ok) and len(ok) == len(runs) and all(r["learns"] for r in ok),
              "wall_s": round(time.time() - started, 1), "cpus": os.cpu_count(), "platform": platform.platform()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
