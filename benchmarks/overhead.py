"""The platform's own cost per round: a real coordinator and N real silo processes, no training.

Each silo process answers the study's proposal, and in every round fetches the global model
and pushes back a small change (the received model plus 1e-3), so what is measured is
the coordinator, the wire and the streaming path, not learning. The model has about P
float32 parameters (an EHR-only study whose hidden width is chosen to reach P).

    python benchmarks/overhead.py                 # P = 10M and 10k, N = 3 and 10, R = 3
    python benchmarks/overhead.py --params 10000000 --silos 3 --rounds 3

Prints one JSON object on its last line: {"runs": [{"params", "silos", "rounds", "s_per_round",
"coordinator_peak_rss_mb", "bytes_per_round", "model_mb"}, ...]}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coordinator.api import federation_pb2 as pb  # noqa: E402
from coordinator.api.protocol import TENSORS  # noqa: E402
from coordinator.api.study import ModelSpec, PrivacySpec, StudySpec, TrainingSpec  # noqa: E402
from coordinator.api.tensors import decode_tensors, encode_tensors  # noqa: E402
from fedcare.demo import free_port  # noqa: E402
from fedcare.researcher import ResearcherClient  # noqa: E402


def spec_for(params: int, silos: int, rounds: int) -> StudySpec:
    # EHR-only model: params ≈ h² + (2F + 2D + 6) h, so solve for the hidden width h.
    features, embed = 10, 16
    b = 2 * features + 2 * embed + 6
    hidden = max(4, int((-b + math.sqrt(b * b + 4 * params)) / 2))
    return StudySpec(
        name=f"overhead-{params}",
        modalities=("ehr",),
        model=ModelSpec(ehr_hidden=hidden, embed_dim=embed),
        training=TrainingSpec(rounds=rounds, min_silos=silos, expected_silos=silos, round_timeout_s=600),
        privacy=PrivacySpec(dp=False, encryption="none"),
    )


def silo_worker(target: str, name: str) -> None:
    """A silo that does no training: it returns the received model plus a small change."""
    from silo_node.client import CoordinatorClient, open_channel

    client = CoordinatorClient(open_channel(target, credentials=None), silo=name)
    client.join(["ehr"], b"")
    models: dict[int, tuple[list[str], list[np.ndarray]]] = {}
    while True:
        task = client.pull_task(10.0)
        if task.kind == pb.TASK_PROPOSAL:
            spec = StudySpec.from_json(task.spec_json)
            client.answer(pb.ProposalAnswer(study_id=task.study_id, accept=True, spec_sha256=spec.sha256(),
                                            train_samples=100, test_samples=10))
        elif task.kind in (pb.TASK_TRAIN, pb.TASK_FINALIZE):
            header, data = client.fetch(task.study_id, pb.BLOB_MODEL, version=task.model_version)
            names, arrays = decode_tensors(data)
            if task.kind == pb.TASK_FINALIZE:
                client.report(pb.MetricsReport(study_id=task.study_id, round=task.round, nonce=task.nonce,
                                               model_version=task.model_version, metrics={"auroc": 0.5}, samples=10))
                return
            delta = [np.full(a.shape, 1e-3, dtype=np.float32) for a in arrays]
            up = pb.BlobHeader(ref=pb.BlobRef(study_id=task.study_id, kind=pb.BLOB_UPDATE), round=task.round,
                               nonce=task.nonce, weight=100.0, encoding=TENSORS, metadata_json="{}")
            client.push(up, encode_tensors(names, delta))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(params: int, silos: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "coordinator"
        target = f"127.0.0.1:{free_port()}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        log = open(Path(tmp) / "coordinator.log", "wb")  # noqa: SIM115
        coord = subprocess.Popen([sys.executable, "-m", "fedcare", "coordinator", "serve", "--state-dir", str(state),
                                  "--listen", target, "--insecure"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        workers: list[subprocess.Popen] = []
        try:
            channel = grpc.insecure_channel(target)
            grpc.channel_ready_future(channel).result(timeout=60)
            client = ResearcherClient(channel, target=target)
            spec = spec_for(params, silos, rounds)
            study_id = client.submit(spec)
            workers = [subprocess.Popen([sys.executable, __file__, "--worker", target, f"silo-{i}"], env=env, cwd=REPO)
                       for i in range(silos)]
            deadline = time.monotonic() + 1800
            while client.status(study_id)[0].state not in ("done", "failed"):
                if time.monotonic() > deadline:
                    raise TimeoutError("benchmark study did not finish")
                time.sleep(1.0)  # a researcher's poll; round spans come from the coordinator's own clock
            st, summary = client.status(study_id)
            if st.state != "done":
                raise RuntimeError(f"study failed: {st.error}")
            rss = peak_rss_mb(coord.pid)
            with sqlite3.connect(state / "coordinator.sqlite") as db:
                spans = db.execute("SELECT closed_at - opened_at FROM rounds WHERE study_id = ? AND number <= ? "
                                   "ORDER BY number", (study_id, rounds)).fetchall()
            per_round = [r for r in summary["rounds"] if r["round"] >= 1]
            total_bytes = sum(sum(r["bytes_up"].values()) + sum(r["bytes_down"].values()) for r in per_round)
            return {"params": params, "silos": silos, "rounds": rounds,
                    "s_per_round": round(float(np.mean([s for (s,) in spans])), 4),
                    "s_per_round_each": [round(s, 4) for (s,) in spans],
                    "coordinator_peak_rss_mb": round(rss, 1),
                    "bytes_per_round": int(total_bytes / max(len(per_round), 1))}
        finally:
            for w in workers:
                w.kill()
            coord.terminate()
            coord.wait(timeout=30)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        silo_worker(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, nargs="*", default=[10_000_000, 10_000])
    ap.add_argument("--silos", type=int, nargs="*", default=[3, 10])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs = []
    for p in args.params:
        for n in args.silos:
            result = run(p, n, args.rounds)
            result["model_mb"] = round(p * 4 / 1e6, 2)
            print(json.dumps(result), file=sys.stderr, flush=True)
            runs.append(result)
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
