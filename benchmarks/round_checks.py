"""What a round's per-message checks cost at N silos: the rows read, or counted (docs/simulate.md, #20 item 2).

Usage: python benchmarks/round_checks.py [--silos 100,300,1000] [--repeat 30]
Every message and every pull settles the study, so a check that reads O(N) rows makes a round
O(N^2). On the coordinator's real store (SQLite, as `fedcare simulate` opens it), with N - 1 of N
silos answered and reported: "has every participant answered" read as the round's answers (two
columns of N rows) plus the participant list parsed three times (settle, check_round, _takes_part),
against `Studies.answer_count` plus `RoundRow.participant_set`; the same-model check read as every
report of the version (ORM rows), against the version's distinct model hashes. Best of --repeat, in
milliseconds. Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing it


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(min(times) * 1e3, 3)


def measure(n: int, repeat: int, folder: Path) -> dict:
    from compliance.durability import Durability
    from coordinator.store import (
        MetricsRow,
        RoundRow,
        SkipRow,
        Store,
        UpdateRow,
        open_engine,
    )
    from coordinator.studies import Studies

    store = Store(open_engine(folder / f"coordinator-{n}.sqlite", durability=Durability.PROCESS_CRASH))
    silos = [f"hospital-{i:04d}" for i in range(n)]
    store.add(*[UpdateRow(study_id="s", round=1, silo=s, blob_sha="b" * 64, size=1, weight=1.0, encoding="tensors",
                          metadata_json="{}", received_at=0.0) for s in silos[:-1]],
              *[MetricsRow(study_id="s", model_version=0, silo=s, metrics_json="{}", samples=1, model_sha="d" * 64)
                for s in silos[:-1]],
              RoundRow(study_id="s", number=1, state="open", nonce="n", seed=1, participants_json=json.dumps(silos),
                       opened_at=0.0, deadline=1e12))
    rnd, studies, where = store.get(RoundRow, "s", 1), Studies(store), {"study_id": "s", "round": 1}
    try:
        return {
            "silos": n,
            "answered_read_ms": best_ms(lambda: (store.column(UpdateRow.silo, **where) | store.column(SkipRow.silo, **where),
                                                 [json.loads(rnd.participants_json) for _ in range(3)]), repeat),
            "answered_counted_ms": best_ms(lambda: (studies.answer_count("s", 1),
                                                    [rnd.participant_set() for _ in range(3)]), repeat),
            "same_model_read_ms": best_ms(lambda: {m.silo: m.model_sha for m in store.all(MetricsRow, study_id="s",
                                                                                           model_version=0)}, repeat),
            "same_model_distinct_ms": best_ms(lambda: store.column(MetricsRow.model_sha, study_id="s", model_version=0),
                                              repeat),
        }
    finally:
        store.engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--silos", default="100,300,1000", help="comma-separated numbers of silos")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedcare-round-checks-") as folder:
        runs = [measure(n, args.repeat, Path(folder)) for n in map(int, args.silos.split(","))]
    print(json.dumps({"benchmark": "round_checks", "runs": runs}))


if __name__ == "__main__":
    main()
