"""Ingestion throughput and memory for a synthetic hospital; prints one JSON object on its last line.

Usage: python benchmarks/ingest.py [--patients 5000] [--small 1000] [--workdir DIR]
Each size is ingested in a fresh subprocess so peak RSS (ru_maxrss) is that run's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = b"fedcare-benchmark-pseudonym-key!"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing it


def _one(n: int, workdir: Path) -> dict:
    from coordinator.api.study import CohortSpec
    from pipelines.ingest import ingest_silo
    from pipelines.synthetic import generate_federation

    t0 = time.perf_counter()
    h = generate_federation(workdir / f"n{n}", n_hospitals=1, patients_per_hospital=n, seed=0)[0]
    generated = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    r = ingest_silo(fhir=[h.fhir_dir], dicom=[h.dicom_dir], wearables=[h.wearables_dir], cohort=CohortSpec(),
                    pseudonym_key=KEY)
    seconds = time.perf_counter() - t0
    rep = r.report
    records = sum(m.records for m in rep.modalities.values())
    return {"patients": n, "generate_s": round(generated, 1), "ingest_s": round(seconds, 1), "records": records,
            "records_per_s": round(records / seconds, 1),
            "images_per_s": round(rep.modalities["image"].records / seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_ingest_mb": round(rss_before / 1024, 1), "samples": rep.samples}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=5000)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedcare-ingest-bench-"))
    if args.one is not None:
        print(json.dumps(_one(args.one, workdir)))
        return
    runs = {}
    for n in (args.small, args.patients):
        done = subprocess.run([sys.executable, __file__, "--one", str(n), "--workdir", str(workdir)], check=True,
                              capture_output=True, text=True)
        runs[n] = json.loads(done.stdout.strip().splitlines()[-1])
    big, small = runs[args.patients], runs[args.small]
    print(json.dumps({"benchmark": "ingest", **big, f"peak_rss_mb_at_{args.small}": small["peak_rss_mb"],
                      f"records_per_s_at_{args.small}": small["records_per_s"]}))


if __name__ == "__main__":
    main()
