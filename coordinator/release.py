"""Which model version a study releases: the best by the federated validation metric, not the last.

Every round's version is kept. Round r's silos evaluate version r - 1 and report metrics; the
pooled metric of a version is the sample-weighted mean of its silos' values (as in the summary).
The study names the metric (`training.selection_metric`, default `val_auroc`: AUROC on each silo's
validation split, never its test split; `selection_goal` max or
min) and whether it releases the best or the last version; with `early_stopping_patience` = P
it stops training once the best version is P evaluated versions old (a plateau), as in
Prechelt 1998, "Early Stopping - But When?". A metric no silo reports falls back to the last
version, and the release says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

from coordinator.api.study import StudySpec
from coordinator.outcome import Release
from coordinator.store import MetricsRow, Store


def pool(reports: Iterable[tuple[Mapping[str, float], int]]) -> dict[str, float] | None:
    """Sample-weighted mean of every metric all the (metrics, samples) reports have (None without any).
    The coordinator pools its silos' reports so; a region pools its members' the same way."""
    parsed = [(m, max(int(n), 1)) for m, n in reports]
    if not parsed:
        return None
    total = sum(w for _, w in parsed)
    keys = set.intersection(*(set(m) for m, _ in parsed))
    return {k: sum(m[k] * w for m, w in parsed) / total for k in sorted(keys)}


def pooled_metrics(rows: Sequence[MetricsRow]) -> dict[str, float] | None:
    return pool((json.loads(r.metrics_json), r.samples) for r in rows)


def metric_by_version(store: Store, study_id: str, metric: str, versions: range) -> dict[int, float]:
    out = {}
    for v in versions:
        pooled = pooled_metrics(store.all(MetricsRow, study_id=study_id, model_version=v)) or {}
        value = pooled.get(metric)
        if value is not None and math.isfinite(value):
            out[v] = float(value)
    return out


def _best(values: dict[int, float], goal: str) -> int:
    """The best version; on a tie the earliest (fewer rounds of privacy spent on it)."""
    sign = 1.0 if goal == "max" else -1.0
    return max(sorted(values), key=lambda v: (sign * values[v], -v))


def choose_release(store: Store, study_id: str, spec: StudySpec, last_version: int) -> Release:
    """The version to release among 1..last_version (0 only if no round was aggregated)."""
    t = spec.training
    if t.release == "last" or last_version <= 0:
        return Release(version=max(last_version, 0), metric=t.selection_metric, reason="training.release = 'last'"
                       if t.release == "last" else "no round was aggregated")
    values = metric_by_version(store, study_id, t.selection_metric, range(1, last_version + 1))
    if not values:
        return Release(version=last_version, metric=t.selection_metric,
                       reason=f"no silo reported {t.selection_metric!r}; released the last version "
                              "(set training.selection_metric to a metric the silos report)")
    best = _best(values, t.selection_goal)
    return Release(version=best, metric=t.selection_metric, value=values[best],
                   reason=f"best pooled {t.selection_metric} ({t.selection_goal}) of versions "
                          f"{min(values)}-{max(values)}")


def plateau(store: Store, study_id: str, spec: StudySpec, evaluated_up_to: int) -> str | None:
    """Why training stops early (the best version is `patience` evaluated versions old), or None."""
    t = spec.training
    if t.early_stopping_patience is None or evaluated_up_to < 1:
        return None
    values = metric_by_version(store, study_id, t.selection_metric, range(1, evaluated_up_to + 1))
    if not values:
        return None
    best = _best(values, t.selection_goal)
    stale = sum(1 for v in values if v > best)
    if stale >= t.early_stopping_patience:
        return (f"early stopping: pooled {t.selection_metric} has not improved on version {best} "
                f"({values[best]:.4f}) for {stale} evaluated versions (patience {t.early_stopping_patience})")
    return None
