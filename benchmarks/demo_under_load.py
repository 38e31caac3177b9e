"""The demo under load: `fedcare demo` run N times while CPU-bound processes run beside it.

    python benchmarks/demo_under_load.py --runs 10 --hogs 2 [-- extra demo options]

Issue #15's "done when": the demo (defaults: DP + CKKS, 3 hospitals, 5 rounds) passes 10
times in a row while two other CPU-bound processes run beside it, as a new user on a busy
2-core machine would run it. Each hog is a Python process spinning on arithmetic for the
whole benchmark. A run passes when `fedcare demo` exits 0 and its summary.json says the
study is done with a final AUROC. Failed runs keep their results folder (logs/) for a look.
Prints one JSON object on its last line: the tally (runs, passed, failed, the longest run of
passes in a row) and each run's outcome ("pass", or what failed: the exit status, a timeout, a
summary without a final AUROC), exit status and seconds; each run is also appended to
runs.jsonl in the --out folder as it finishes. Run it on a snapshot of the code
(`git archive HEAD`), not a working tree others edit, with PYTHONPATH pointing at it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _spin() -> None:
    x = 0
    while True:  # CPU-bound until terminated
        x = (x * 1103515245 + 12345) % 2**31


PASS = "pass"
RUNS_FILE = "runs.jsonl"  # one line per finished run, in the --out folder


def _outcome(code: int | None, summary: dict) -> str:
    """"pass", or the first thing that failed in one demo run."""
    if code is None:
        return "timed out"
    if code != 0:
        return f"fedcare demo exited with status {code}"
    if summary.get("state") != "done":
        return f"summary.json says the study is {summary.get('state', 'missing')!r}, not done"
    if (summary.get("final") or {}).get("auroc") is None:
        return "summary.json has no final AUROC"
    return PASS


def tally(runs: list[dict]) -> dict:
    """Runs, passes, failures and the longest streak of passes in a row."""
    streak = longest = 0
    for r in runs:
        streak = streak + 1 if r["passed"] else 0
        longest = max(longest, streak)
    passed = sum(r["passed"] for r in runs)
    return {"runs": len(runs), "passed": passed, "failed": len(runs) - passed, "passed_in_a_row": longest}


def _one_demo(out: Path, extra: list[str], timeout_s: float) -> dict:
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "fedcare", "demo", "--out", str(out), *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        code, tail = proc.returncode, proc.stderr[-500:]
    except subprocess.TimeoutExpired:
        code, tail = None, f"timed out after {timeout_s:.0f} s"
    seconds = time.monotonic() - started
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    outcome = _outcome(code, summary)
    passed = outcome == PASS
    return {"outcome": outcome, "exit_status": code, "seconds": round(seconds, 1), "passed": passed,
            "final_auroc": (summary.get("final") or {}).get("auroc"), "joined_round": summary.get("joined_round"),
            **({} if passed else {"out": str(out), "stderr_tail": tail})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--hogs", type=int, default=2, help="CPU-bound processes beside the demo")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per demo run")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("demo_args", nargs="*", help="extra `fedcare demo` options, after --")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="demo-under-load-"))
    root.mkdir(parents=True, exist_ok=True)
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
    runs = []
    try:
        for i in range(args.runs):
            run = _one_demo(root / f"run-{i}", args.demo_args, args.timeout_s)
            runs.append(run)
            with (root / RUNS_FILE).open("a") as f:  # kept as it goes: a benchmark stopped early still has its runs
                f.write(json.dumps({"run": i, **run}) + "\n")
            print(f"run {i}: {run['outcome']} in {run['seconds']} s", file=sys.stderr, flush=True)
    finally:
        for h in hogs:
            h.terminate()
            h.join()
    print(json.dumps({"benchmark": "demo_under_load", **tally(runs), "hogs": args.hogs,
                      "cpus": multiprocessing.cpu_count(), "demo_args": args.demo_args, "results": runs}))


if __name__ == "__main__":
    main()
