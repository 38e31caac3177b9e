"""A study's results as the researcher sees them: the `summary.json` contract of design.md.

Round 0 is the initial model; round r (1..R) holds the metrics of the model after round r's
aggregation (as evaluated by the silos on their held-out splits, sample-weighted), the
bytes that crossed the wire during round r, and each silo's ε after round r.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from coordinator.analysis import analysis_summary
from coordinator.api.protocol import UpdateMetadata
from coordinator.outcome import RoundOutcome
from coordinator.release import pooled_metrics
from coordinator.store import MetricsRow, RoundRow, SkipRow, TrafficRow, UpdateRow

if TYPE_CHECKING:
    from coordinator.federation import Federation


def summary_dict(fed: "Federation", study_id: str) -> dict[str, Any]:
    row = fed.study(study_id)
    spec = fed.spec(study_id)
    silos = fed.accepted_silos(study_id)
    traffic = fed.store.all(TrafficRow, study_id=study_id)
    last_version = row.current_round - 1  # the newest aggregated version (round r evaluates version r - 1)
    rounds = []
    joined_round: dict[str, int] = {}  # the first round each silo took part in (a late joiner's is > 1)
    for rnd_row in sorted(fed.store.all(RoundRow, study_id=study_id), key=lambda x: x.number):
        if rnd_row.number <= spec.training.rounds:
            for s in json.loads(rnd_row.participants_json):
                joined_round.setdefault(s, rnd_row.number)
    # bytes per (round, silo), per silo after the last round, per silo in all: one pass over the traffic rows,
    # not one per silo (a thousand silos made that a million row visits per round)
    up, down = _bytes_by(traffic, lambda t: (t.round, t.silo))
    after_up, after_down = _bytes_by([t for t in traffic if t.round > last_version], lambda t: t.silo)
    total_up, total_down = _bytes_by(traffic, lambda t: t.silo)
    for r in range(0, max(last_version, 0) + 1):
        metrics_rows = [m for m in fed.store.all(MetricsRow, study_id=study_id, model_version=r)]
        updates = {u.silo: UpdateMetadata.stored(u.metadata_json).privacy
                   for u in fed.store.all(UpdateRow, study_id=study_id, round=r)}
        rnd = fed.store.get(RoundRow, study_id, r)
        entry: dict[str, Any] = {
            "round": r,
            "metrics": pooled_metrics(metrics_rows),
            "metrics_per_silo": {m.silo: json.loads(m.metrics_json) for m in metrics_rows},
            "bytes_up": {s: up[r, s] for s in silos},
            "bytes_down": {s: down[r, s] for s in silos},
            "epsilon": {s: updates[s].epsilon if s in updates else None for s in silos},
            "privacy": {s: updates[s].model_dump(mode="json", exclude_none=True) for s in silos if s in updates},
            "skipped": {k.silo: k.reason for k in fed.store.all(SkipRow, study_id=study_id, round=r)},
        }
        if rnd is not None and rnd.outcome_json:
            outcome = RoundOutcome.of(rnd.outcome_json)
            entry["aggregation"] = {"accepted": outcome.accepted, "refused": outcome.refused}
        rounds.append(entry)
    # The released version (coordinator/release.py): the best by the study's metric, or the last.
    finalizing = fed.store.get(RoundRow, study_id, row.current_round) if row.state == "done" else None
    release = RoundOutcome.of(finalizing.outcome_json).release if finalizing is not None else None
    released = release.version if release is not None else len(rounds) - 1
    final_metrics = rounds[released]["metrics"] if rounds and row.state == "done" and released < len(rounds) else None
    took_part = Counter(u.silo for u in fed.store.all(UpdateRow, study_id=study_id))
    return {
        "study": study_id,
        "name": spec.name,
        "state": row.state,
        "silos": silos,
        "joined_round": {s: joined_round.get(s) for s in silos},
        "privacy": {"dp": spec.privacy.dp, "delta": spec.privacy.delta, "accountant": spec.privacy.accountant,
                    "encryption": spec.privacy.encryption},
        "aggregation": spec.aggregation.rule,
        "rounds": rounds,
        "release": ({"round": release.version, "metric": release.metric, "value": release.value,
                     "reason": release.reason} if release is not None else None),
        "final": {
            "auroc": (final_metrics or {}).get("auroc"),
            "accuracy": (final_metrics or {}).get("accuracy"),
            "loss": (final_metrics or {}).get("loss"),
            "model_sha256": row.final_model_sha or (fed.versions.sha(study_id, last_version) if last_version >= 0 else None),
            "finalisation_bytes_up": {s: after_up[s] for s in silos},
            "finalisation_bytes_down": {s: after_down[s] for s in silos},
        },
        # per silo, the whole study: every byte that crossed the wire, rounds it sent an update in, its last ε
        "totals": {s: {"bytes_up": total_up[s],
                       "bytes_down": total_down[s],
                       "rounds": took_part[s],
                       "epsilon": next((r["epsilon"][s] for r in reversed(rounds) if r["epsilon"].get(s) is not None), None)}
                   for s in silos},
        "error": row.error,
        "kind": spec.kind.value,
        "analysis": analysis_summary(fed, study_id),  # an analysis study's pooled figures (coordinator/analysis.py)
    }


def _bytes_by(traffic: Iterable[TrafficRow], key: Callable[[TrafficRow], Hashable]) -> tuple[Counter, Counter]:
    """Bytes up and down summed by `key` of each traffic row (0 for a key with no row)."""
    up: Counter = Counter()
    down: Counter = Counter()
    for t in traffic:
        up[key(t)] += t.bytes_up
        down[key(t)] += t.bytes_down
    return up, down


def build_summary(fed: "Federation", study_id: str) -> str:
    return json.dumps(summary_dict(fed, study_id), sort_keys=True)
