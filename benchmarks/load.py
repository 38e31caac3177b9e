"""Load: many silo processes against one coordinator on loopback; how latency and memory grow.

    python benchmarks/load.py --silos 10 50 --rounds 3

For each silo count: a fresh coordinator process (`fedcare coordinator serve --insecure`),
that many *light* silo processes (this file with --as-silo: a CoordinatorClient that
approves the proposal, fetches each model version and pushes an all-zero delta, no data
and no training), one small plaintext study. Round latency is a round's open-to-close time
from the coordinator's store (so it measures the coordinator and the wire, not training);
peak RSS is the coordinator process's VmHWM. Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spec(silos: int, rounds: int):  # noqa: ANN202 - StudySpec
    from coordinator.api.study import CohortSpec, ModelSpec, PrivacySpec, StudySpec, TrainingSpec

    return StudySpec(
        name=f"load-{silos}",
        cohort=CohortSpec(image_size=8, signal_length=16),
        model=ModelSpec(embed_dim=4, ehr_hidden=8, image_channels=(4,), signal_hidden=8),
        training=TrainingSpec(rounds=rounds, min_silos=silos, expected_silos=silos, round_timeout_s=600,
                              enrollment_timeout_s=600),
        privacy=PrivacySpec(dp=False, encryption="none"),
    )


# --- one light silo ------------------------------------------------------------------------------
def run_silo(name: str, target: str) -> None:
    import numpy as np

    from coordinator.api import federation_pb2 as pb
    from coordinator.api.protocol import TENSORS
    from coordinator.api.study import StudySpec
    from coordinator.api.tensors import decode_tensors, encode_tensors
    from silo_node.client import CoordinatorClient, open_channel

    client = CoordinatorClient(open_channel(target, credentials=None), silo=name, max_retries=20)
    client.join(["ehr", "image", "signal"], b"")
    while True:
        task = client.pull_task(20.0)
        if task.kind == pb.TASK_PROPOSAL:
            sha = StudySpec.from_json(task.spec_json).sha256()
            client.answer(pb.ProposalAnswer(study_id=task.study_id, accept=True, spec_sha256=sha,
                                            train_samples=100, test_samples=25))
        elif task.kind == pb.TASK_TRAIN:
            _, data = client.fetch(task.study_id, pb.BLOB_MODEL, version=task.model_version)
            names, arrays = decode_tensors(data)
            delta = encode_tensors(names, [np.zeros_like(a) for a in arrays])
            header = pb.BlobHeader(ref=pb.BlobRef(study_id=task.study_id, kind=pb.BLOB_UPDATE), round=task.round,
                                   nonce=task.nonce, weight=100.0, encoding=TENSORS, metadata_json="{}")
            client.push(header, delta)
        elif task.kind == pb.TASK_FINALIZE:
            client.report(pb.MetricsReport(study_id=task.study_id, round=task.round, nonce=task.nonce,
                                           model_version=task.model_version, metrics={"auroc": 0.5}, samples=25))
            return


# --- one measurement -----------------------------------------------------------------------------
def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(silos: int, rounds: int, workdir: Path) -> dict:
    import grpc

    from fedcare.researcher import ResearcherClient

    target = f"127.0.0.1:{_free_port()}"
    state = workdir / f"coordinator-{silos}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    logs = open(workdir / f"load-{silos}.log", "ab")  # noqa: SIM115 - shared by the children
    coordinator = subprocess.Popen([sys.executable, "-m", "fedcare", "coordinator", "serve", "--state-dir", str(state),
                                    "--listen", target, "--insecure"], stdout=logs, stderr=subprocess.STDOUT, env=env,
                                   cwd=ROOT)
    procs: list[subprocess.Popen] = []
    try:
        channel = grpc.insecure_channel(target)
        grpc.channel_ready_future(channel).result(timeout=120)
        researcher = ResearcherClient(channel, target=target)
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, __file__, "--as-silo", f"silo-{i:03d}", "--target", target],
                                  stdout=logs, stderr=subprocess.STDOUT, env=env, cwd=ROOT) for i in range(silos)]
        study = researcher.submit(_spec(silos, rounds))
        while True:
            status, _ = researcher.status(study)
            if status.state in ("done", "failed"):
                break
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"a light silo died; see {workdir / f'load-{silos}.log'}")
            time.sleep(0.5)
        wall = time.monotonic() - started
        peak = _peak_rss_mib(coordinator.pid)
        if status.state != "done":
            raise RuntimeError(f"study {study} failed: {status.error}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        coordinator.terminate()
        coordinator.wait(timeout=60)
        for p in procs:
            p.wait(timeout=60)
    db = sqlite3.connect(f"file:{state / 'coordinator.sqlite'}?mode=ro", uri=True)
    rows = db.execute("SELECT number, opened_at, closed_at FROM rounds WHERE study_id=? AND number<=? "
                      "AND closed_at IS NOT NULL ORDER BY number", (study, rounds)).fetchall()
    db.close()
    latencies = [closed - opened for _, opened, closed in rows]
    return {"silos": silos, "rounds": len(latencies), "round_latency_s": {
                "p50": round(statistics.median(latencies), 3), "p95": round(_percentile(latencies, 0.95), 3),
                "each": [round(x, 3) for x in latencies]},
            "coordinator_peak_rss_mib": round(peak, 1), "study_wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--as-silo", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_silo:
        run_silo(args.as_silo, args.target)
        return
    with tempfile.TemporaryDirectory(prefix="fedcare-load-") as tmp:
        results = [measure(n, args.rounds, Path(tmp)) for n in args.silos]
    out: dict = {"benchmark": "load", "rounds": args.rounds, "results": results}
    if len(results) >= 2:
        a, b = results[0], results[-1]
        out["growth"] = {
            "silos": f"{a['silos']} -> {b['silos']}",
            "round_latency_p50_x": round(b["round_latency_s"]["p50"] / max(a["round_latency_s"]["p50"], 1e-9), 2),
            "coordinator_peak_rss_x": round(b["coordinator_peak_rss_mib"] / a["coordinator_peak_rss_mib"], 2),
        }
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
