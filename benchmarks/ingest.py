"""Ingestion throughput and memory for a synthetic hospital; prints one JSON object on its last line.

Usage: python benchmarks/ingest.py [--patients 5000] [--small 1000] [--workdir DIR]
       python benchmarks/ingest.py --bundle-mb 200   # one FHIR bundle of that size: streamed, peak RSS
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


def _write_bundle(path: Path, megabytes: int) -> int:
    """A collection Bundle of one patient's Observations, written entry by entry (never held whole)."""
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female",
               "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                               "value": "MRN-1"}]}
    n = 0
    with path.open("w") as f:
        f.write('{"resourceType": "Bundle", "type": "collection", "entry": [')
        f.write(json.dumps({"fullUrl": "urn:uuid:p1", "resource": patient}))
        while f.tell() < megabytes << 20:
            n += 1
            obs = {"resourceType": "Observation", "id": f"o{n}", "status": "final", "subject": {"reference": "urn:uuid:p1"},
                   "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                   "effectiveDateTime": "2023-10-01", "note": [{"text": "x" * 300}],
                   "valueQuantity": {"value": 90 + n % 17, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                     "code": "mg/dL"}}
            f.write("," + json.dumps({"fullUrl": f"urn:uuid:o{n}", "resource": obs}))
        f.write("]}")
    return n + 1


def _bundle(megabytes: int, workdir: Path) -> dict:
    from coordinator.api.study import CohortSpec
    from pipelines.ingest import ingest_silo

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"bundle-{megabytes}mb.json"
    resources = _write_bundle(path, megabytes)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    r = ingest_silo(fhir=[path], dicom=[], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY)
    return {"benchmark": "ingest_bundle", "bundle_mb": round(path.stat().st_size / 2**20, 1), "resources": resources,
            "records": r.report.modalities["ehr"].records, "ingest_s": round(time.perf_counter() - t0, 1),
            "rss_before_ingest_mb": round(rss_before / 1024, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=5000)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--bundle-mb", type=int, default=None, help="ingest one FHIR bundle of this size instead")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedcare-ingest-bench-"))
    if args.bundle_mb is not None:
        print(json.dumps(_bundle(args.bundle_mb, workdir)))
        return
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
