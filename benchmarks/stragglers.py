"""Stragglers: synchronous rounds vs buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022).

    python benchmarks/stragglers.py [--rounds 6] [--buffer 3] [--unit-s 2] [--patients 200]

Issue #15's benchmark. Five synthetic hospitals as real processes over loopback gRPC; their
speeds differ by a sleep after each local run (node config `train_delay_s`): one silo 5× slower
than the fast ones, one 2×, three at 1× (`--unit-s` seconds of sleep per unit). The same
study runs twice with the same budget of local work (rounds × 5 local runs): synchronously for
`--rounds` rounds, then with `training.mode = "async"`, a buffer of `--buffer` updates and
rounds × 5 / buffer versions. Both release the last version, so the final AUROC is the last
version's pooled test AUROC over every silo that evaluated it.

For each run: wall-clock seconds from the first round's opening to each version, bytes up and
down up to it, and the first version whose pooled AUROC reaches the target (the synchronous
run's final AUROC less 0.01; a version's AUROC is pooled over the silos that evaluated it,
in an asynchronous run the ones that took their next task on it). Prints one JSON object on its
last line: both runs, the speed-up to the target and the final AUROC difference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc

from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec
from coordinator.server import STATE_DATABASE
from coordinator.store import RoundRow, Store, open_engine
from fedcare.demo import free_port, write_node_config
from fedcare.researcher import ResearcherClient
from pipelines.synthetic import generate_federation

SPEEDS = (5, 2, 1, 1, 1)  # local-run duration, in units: one silo 5× slower, one 2×


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fedcare", *args], stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, env=env)


def run_study(root: Path, hospitals: list, spec: StudySpec, unit_s: float, timeout_s: float) -> dict[str, Any]:
    root.mkdir(parents=True)
    target = f"127.0.0.1:{free_port()}"
    procs = [_spawn(["coordinator", "serve", "--state-dir", str(root / "coordinator"), "--listen", target, "--insecure"],
                    root / "coordinator.log")]
    try:
        channel = grpc.insecure_channel(target)
        grpc.channel_ready_future(channel).result(timeout=60)
        for h, speed in zip(hospitals, SPEEDS):
            # one node folder per hospital for both runs: the second run reads its ingestion cache
            cfg = root.parent / "silos" / h.name / "node.toml"
            write_node_config(cfg, name=h.name, coordinator=target, data=h, dataset=f"{h.name}-ehr",
                              train_delay_s=speed * unit_s)
            procs.append(_spawn(["silo", "run", "--config", str(cfg)], root / f"{h.name}.log"))
        client = ResearcherClient(channel, target=target)
        study_id = client.submit(spec)
        deadline = time.monotonic() + timeout_s
        while True:
            status, summary = client.status(study_id)
            if status.state in ("done", "failed"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{spec.training.mode} study did not finish within {timeout_s:.0f} s; logs in {root}")
            time.sleep(1.0)
        if status.state == "failed":
            raise SystemExit(f"{spec.training.mode} study failed: {status.error}; logs in {root}")
        store = Store(open_engine(f"sqlite:///{root / 'coordinator' / STATE_DATABASE}"))
        rows = {r.number: r for r in store.all(RoundRow, study_id=study_id)}
        store.engine.dispose()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    start = rows[1].opened_at
    versions, sent = [], 0
    for r in summary["rounds"]:
        sent += sum(r["bytes_up"].values()) + sum(r["bytes_down"].values())
        closed = rows[r["round"]].closed_at if r["round"] in rows else start
        versions.append({"version": r["round"], "seconds": round((closed or start) - start, 2), "bytes": sent,
                         "auroc": (r["metrics"] or {}).get("auroc"),
                         "evaluated_by": len(r["metrics_per_silo"])})
    return {"mode": spec.training.mode.value, "versions": versions, "final_auroc": summary["final"]["auroc"],
            "seconds": versions[-1]["seconds"], "bytes": sent}


def reached(run: dict[str, Any], target: float) -> dict[str, Any] | None:
    return next((v for v in run["versions"] if v["auroc"] is not None and v["auroc"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="synchronous rounds (the budget: rounds × 5 local runs)")
    parser.add_argument("--buffer", type=int, default=3, help="asynchronous buffer size K")
    parser.add_argument("--unit-s", type=float, default=2.0, help="sleep per speed unit after each local run")
    parser.add_argument("--patients", type=int, default=200, help="synthetic patients per hospital")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per study")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="stragglers-"))
    hospitals = generate_federation(root / "data", n_hospitals=len(SPEEDS), patients_per_hospital=args.patients, seed=1)
    common = {"local_epochs": args.epochs, "min_silos": 2, "expected_silos": len(SPEEDS), "round_timeout_s": 600,
              "enrollment_timeout_s": 600, "release": "last"}
    privacy = PrivacySpec(dp=False, encryption="none")
    versions = math.ceil(args.rounds * len(SPEEDS) / args.buffer)  # the same number of local runs
    sync = run_study(root / "sync", hospitals, StudySpec(name="stragglers sync", privacy=privacy,
                                                         training=TrainingSpec(rounds=args.rounds, **common)),
                     args.unit_s, args.timeout_s)
    asyn = run_study(root / "async", hospitals,
                     StudySpec(name="stragglers async", privacy=privacy,
                               training=TrainingSpec(rounds=versions, mode="async", buffer_size=args.buffer,
                                                     max_staleness=versions, **common)),
                     args.unit_s, args.timeout_s)
    target = (sync["final_auroc"] or 0.0) - 0.01
    at = {run["mode"]: reached(run, target) for run in (sync, asyn)}
    result = {
        "benchmark": "stragglers", "speeds": list(SPEEDS), "unit_s": args.unit_s, "patients": args.patients,
        "local_runs": args.rounds * len(SPEEDS), "buffer": args.buffer, "target_auroc": round(target, 4),
        "runs": {run["mode"]: run for run in (sync, asyn)},
        "to_target": {m: ({"seconds": v["seconds"], "bytes": v["bytes"], "version": v["version"]} if v else None)
                      for m, v in at.items()},
        "speedup_to_target": (round(at["sync"]["seconds"] / at["async"]["seconds"], 2)
                              if at["sync"] and at["async"] and at["async"]["seconds"] > 0 else None),
        "final_auroc_difference": (round(asyn["final_auroc"] - sync["final_auroc"], 4)
                                   if asyn["final_auroc"] is not None and sync["final_auroc"] is not None else None),
        "out": str(root),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
