"""`fedcare simulate` at scale: seconds per round and peak memory for N simulated hospitals.

Usage: python benchmarks/simulate.py [--silos 100,1000] [--rounds 3] [--patients 10] [--engine ray|local]
                                     [--cpus-per-silo 1] [--workdir DIR] [--flower-python PYTHON]
The demo's study (its model, in the clear: no DP, no encryption, 1 local epoch) on synthetic
hospitals of --patients each. Per size: the set-up (data ingested, enrolment) until round 1
opens, the seconds of each round as the benchmark sees it (round r opens -> round r + 1 opens, seen
after a turn of every host: quantised by the turns) and as the coordinator's store has it
(`coordinator_round_s`: each round's opening to its closing, the finalizing round last), the
load average (1 min) before and after, and peak memory: this
process's (the coordinator and, with --engine local, every hospital) and, with Ray, the peak
sum of the resident memory of the Ray hosts (read from /proc at each turn). Prints one JSON
object on its last line.

--flower-python: the same hospitals, model and local training in Flower's simulation engine
(benchmarks/flower_simulate.py, run with the Python of an environment where `flwr[simulation]` is
installed and a .pth file names this repository and fedcare's site-packages after its own).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing it


def ray_hosts_rss_mb() -> float:
    """The resident memory of the processes Ray runs the hosts in (Linux /proc), in MiB."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"SiloHost" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def coordinator_round_s(out: Path, study_id: str) -> list[float | None]:
    """Each round's opening to its closing (s), from the simulation's coordinator store: rounds 1..R, then finalizing."""
    from coordinator.server import STATE_DATABASE
    from coordinator.store import RoundRow, Store, open_engine

    store = Store(open_engine(out / "coordinator" / STATE_DATABASE))
    try:
        rounds = sorted(store.all(RoundRow, study_id=study_id), key=lambda r: r.number)
        return [round(r.closed_at - r.opened_at, 2) if r.closed_at is not None else None for r in rounds if r.number >= 1]
    finally:
        store.engine.dispose()


def run(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    from fedcare.demo import DemoOptions, demo_spec
    from fedcare.simulate import Engine, SimulationOptions, simulate
    from fedcare.simulate_data import synthetic_silos

    t0 = time.perf_counter()
    silos = synthetic_silos(workdir / f"data-{n}", silos=n, patients=args.patients, seed=0)
    generated = time.perf_counter() - t0
    spec = demo_spec(DemoOptions(out=workdir / "unused", rounds=args.rounds, silos=n, dp=False, encryption="none",
                                 local_epochs=1))
    opened: dict[int, float] = {}
    peak_hosts = 0.0

    def on_turn(state: str, rnd: int) -> None:
        nonlocal peak_hosts
        opened.setdefault(rnd, time.perf_counter())
        if args.engine == "ray":
            peak_hosts = max(peak_hosts, ray_hosts_rss_mb())

    (workdir / f"spec-{n}.json").write_text(spec.to_json())  # for the Flower run
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    summary = simulate(spec, silos, SimulationOptions(out=workdir / f"out-{n}", engine=Engine(args.engine),
                                                      cpus_per_silo=args.cpus_per_silo), on_turn=on_turn)
    total = time.perf_counter() - t0
    per_round = [round(opened[r + 1] - opened[r], 2) for r in range(1, args.rounds + 1) if r in opened and r + 1 in opened]
    return {"silos": n, "patients_per_silo": args.patients, "rounds": args.rounds, "state": summary["state"],
            "generate_s": round(generated, 1), "setup_s": round(opened.get(1, t0) - t0, 1),
            "round_s": per_round, "mean_round_s": round(sum(per_round) / len(per_round), 2) if per_round else None,
            "coordinator_round_s": coordinator_round_s(workdir / f"out-{n}", summary["study"]),
            "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "total_s": round(total, 1), "final_auroc": summary["final"]["auroc"],
            "peak_rss_driver_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_rss_ray_hosts_mb": round(peak_hosts, 1) if args.engine == "ray" else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--silos", default="100,1000", help="comma-separated numbers of simulated hospitals")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--engine", choices=("ray", "local"), default="ray")
    ap.add_argument("--cpus-per-silo", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--flower-python", type=Path, default=None, help="a Python with flwr[simulation]: compare")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedcare-simulate-bench-"))
    runs, flower = [], []
    for n in map(int, args.silos.split(",")):
        runs.append(run(n, args, workdir))
        if args.flower_python is not None:
            done = subprocess.run([str(args.flower_python), str(Path(__file__).with_name("flower_simulate.py")),
                                   "--data", str(workdir / f"data-{n}"), "--spec", str(workdir / f"spec-{n}.json"),
                                   "--keys", str(workdir / f"out-{n}" / "silos"),
                                   "--cpus-per-silo", str(args.cpus_per_silo)], capture_output=True, text=True, check=False)
            flower.append(json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0
                          else {"silos": n, "error": done.stderr.strip().splitlines()[-1:]})
    print(json.dumps({"benchmark": "simulate", "engine": args.engine, "cores": os.cpu_count(), "runs": runs,
                      "flower": flower or "not run (--flower-python)"}))


if __name__ == "__main__":
    main()
