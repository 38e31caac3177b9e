"""Pooling an analysis study's released statistics across silos.

Counts and histogram cells add up exactly; the pooled mean and variance come from each silo's
count, mean and M2 (sum of squared deviations), combined as in Chan, Golub & LeVeque (1979):
M2 = sum_i M2_i + sum_i n_i (mean_i - mean)^2, variance = M2 / (n - 1). Pooled quantiles are read
from the pooled histogram by the researcher's report (fedcare.analysis_report, with the silos' own
rule, pipelines.analytics), where no cell of it is incomplete.

A cell a silo suppressed is left out of every pooled figure it belongs to, and the pooled figure
names the silos that held it back: the totals hold only released values, so no suppressed cell
can be recovered from them by subtraction. A silo's own column is shown only where its
disclosure claim allows (`per_silo`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from coordinator.api.protocol import ANALYSIS_ENCODING, CohortRelease, ProtocolError, StudyKind
from coordinator.api.study import StudySpec
from coordinator.errors import InvalidInput
from coordinator.store import UpdateRow


class PooledCount(BaseModel):
    """A pooled count: the sum of the released values, and who held theirs back (then it is a lower bound)."""

    model_config = ConfigDict(frozen=True)

    value: int
    suppressed_at: list[str] = []


class PooledColumn(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    present: PooledCount
    missing: PooledCount
    n: int  # patients whose values the moments pool
    mean: float | None
    sd: float | None  # sample standard deviation, sqrt(M2 / (n - 1))
    m2: float | None
    moments_from: list[str]  # the silos whose moments are pooled
    edges: list[float] | None
    histogram: list[PooledCount] | None


class PooledStatistics(BaseModel):
    """What the researcher receives (`summary.json` "analysis", `fedcare study results`)."""

    model_config = ConfigDict(frozen=True)

    silos: list[str]
    patients: PooledCount
    label_positive: PooledCount
    label_negative: PooledCount
    modalities: dict[str, PooledCount]
    columns: list[PooledColumn]
    quantile_levels: list[float]
    per_silo: dict[str, dict[str, Any]]  # the silos' own releases, where they allow it
    withheld_per_silo: list[str]  # silos that did not allow their own column to be shown
    suppressed: dict[str, list[str]]  # per silo: what it held back, as it said
    dp: dict[str, dict[str, Any]]  # per silo that added noise: mechanism, ε, δ, statistics noised


def parse_release(spec: StudySpec, encoding: str, data: bytes | memoryview) -> CohortRelease:
    """A silo's upload checked against the study (columns, cells, quantiles); InvalidInput says what is wrong."""
    if encoding != ANALYSIS_ENCODING:
        raise InvalidInput(f"an analysis study takes released statistics ({ANALYSIS_ENCODING!r}), not {encoding[:60]!r}")
    try:
        return CohortRelease.from_json(bytes(data)).check_against(spec)
    except ProtocolError as e:
        raise InvalidInput(str(e)) from None


def _count(values: Mapping[str, int | None]) -> PooledCount:
    return PooledCount(value=sum(v for v in values.values() if v is not None),
                       suppressed_at=sorted(s for s, v in values.items() if v is None))


def pool_moments(parts: Sequence[tuple[int, float, float]]) -> tuple[int, float | None, float | None]:
    """(n, mean, M2) of the union of groups given as (n_i, mean_i, M2_i) (Chan et al. 1979)."""
    n = sum(p[0] for p in parts)
    if n == 0:
        return 0, None, None
    mean = math.fsum(p[0] * p[1] for p in parts) / n
    m2 = math.fsum(p[2] + p[0] * (p[1] - mean) ** 2 for p in parts)
    return n, mean, m2


def pool(spec: StudySpec, releases: Mapping[str, CohortRelease]) -> PooledStatistics:
    silos = sorted(releases)
    columns = []
    for j, name in enumerate(spec.cohort.ehr_columns):
        cols = {s: releases[s].columns[j] for s in silos}
        with_moments = [s for s in silos if cols[s].mean is not None and cols[s].m2 is not None and cols[s].present]
        n, mean, m2 = pool_moments([(cols[s].present, cols[s].mean, cols[s].m2) for s in with_moments])
        edges = spec.analysis.bins.get(name)
        hist = None
        if edges is not None:
            hist = [_count({s: (cols[s].histogram[i] if cols[s].histogram is not None else None) for s in silos})
                    for i in range(len(edges) + 1)]
        columns.append(PooledColumn(
            name=name, present=_count({s: c.present for s, c in cols.items()}),
            missing=_count({s: c.missing for s, c in cols.items()}), n=n, mean=mean, m2=m2,
            sd=math.sqrt(m2 / (n - 1)) if m2 is not None and n > 1 else None, moments_from=with_moments,
            edges=list(edges) if edges is not None else None, histogram=hist))
    shown = [s for s in silos if releases[s].disclosure.per_silo]
    return PooledStatistics(
        silos=silos,
        patients=_count({s: r.patients for s, r in releases.items()}),
        label_positive=_count({s: r.label_positive for s, r in releases.items()}),
        label_negative=_count({s: r.label_negative for s, r in releases.items()}),
        modalities={m: _count({s: r.modalities.get(m) for s, r in releases.items()}) for m in spec.modalities},
        columns=columns,
        quantile_levels=list(spec.analysis.quantiles),
        per_silo={s: releases[s].model_dump(mode="json", exclude={"disclosure"}) for s in shown},
        withheld_per_silo=[s for s in silos if s not in shown],
        suppressed={s: list(releases[s].disclosure.suppressed) for s in silos},
        dp={s: releases[s].disclosure.model_dump(mode="json", include={"mechanism", "epsilon", "delta", "queries"})
            for s in silos if releases[s].disclosure.mechanism.value != "none"},
    )


def pooled_statistics(spec: StudySpec, updates: Sequence[UpdateRow], blob: Callable[[str], bytes]) -> PooledStatistics:
    """The pooled figures of an analysis round from its stored uploads (`blob`: sha -> bytes)."""
    return pool(spec, {u.silo: parse_release(spec, u.encoding, blob(u.blob_sha)) for u in updates})


def analysis_summary(fed: Any, study_id: str) -> dict[str, Any] | None:
    """`summary.json`'s "analysis": the pooled figures of a finished analysis study, else None.
    (`fed`: coordinator.federation.Federation, which imports this module.)"""
    spec, row = fed.spec(study_id), fed.study(study_id)
    if spec.kind is not StudyKind.ANALYSIS or row.state != "done":
        return None
    updates = fed.store.all(UpdateRow, study_id=study_id, round=row.current_round)
    return pooled_statistics(spec, updates, fed.blobs.get).model_dump(mode="json")
