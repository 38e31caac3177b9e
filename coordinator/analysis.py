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

Under `analysis.secure_sum = "masking"` each silo sends a pairwise-masked vector
(coordinator.api.masked_release, privacy.secure_sum; Bonawitz et al. 2017): the coordinator adds
them and sees only the totals, so no silo's column is shown. The masks cancel only when every
participant the silos masked with has released; otherwise no masked figure is opened, and the
pooled statistics say so (`unopened`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from coordinator.api.masked_release import (
    MASKED_ANALYSIS_ENCODING,
    MaskedRelease,
    SecureSum,
    release_cells,
)
from coordinator.api.protocol import ANALYSIS_ENCODING, CohortRelease, ProtocolError, StudyKind
from coordinator.api.study import StudySpec
from coordinator.errors import InvalidInput
from coordinator.store import RoundRow, SiloRow, UpdateRow
from privacy.errors import SecureSumError
from privacy.secure_sum import from_ring, open_sum


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
    secure_sum: SecureSum = SecureSum.NONE
    unopened: str | None = None  # why masked sums could not be opened (then every masked figure is empty)


def parse_release(spec: StudySpec, encoding: str, data: bytes | memoryview) -> CohortRelease | MaskedRelease:
    """A silo's upload checked against the study (columns, cells, quantiles; masked when the study says so);
    InvalidInput says what is wrong."""
    masked = spec.analysis.secure_sum is SecureSum.MASKING
    expected = MASKED_ANALYSIS_ENCODING if masked else ANALYSIS_ENCODING
    if encoding != expected:
        raise InvalidInput(f"this analysis study (secure_sum {spec.analysis.secure_sum.value!r}) takes released "
                           f"statistics as {expected!r}, not {encoding[:60]!r}")
    try:
        if masked:
            return MaskedRelease.from_json(bytes(data)).check_against(spec)
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
    for j, name in enumerate(spec.analysis_columns):
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


def pool_masked(spec: StudySpec, releases: Mapping[str, MaskedRelease]) -> PooledStatistics:
    """Totals of masked releases: opened only when the uploaders are exactly the partners every silo masked with."""
    silos = sorted(releases)
    cells = release_cells(spec)
    partner_sets = {tuple(sorted(r.partners)) for r in releases.values()}
    unopened = None
    if len(partner_sets) != 1:
        unopened = "the silos masked with different partner lists; the masks do not cancel"
    elif list(next(iter(partner_sets))) != silos:
        missing = sorted(set(next(iter(partner_sets))) - set(silos))
        unopened = (f"{', '.join(missing) or 'a partner'} masked with the others but released nothing, so the masks "
                    "do not cancel (no dropout recovery); run the study again")
    totals: dict[str, int | float] = {}
    if unopened is None:
        try:
            summed = open_sum([releases[s].elements() for s in silos])
        except SecureSumError as e:
            unopened = str(e)
        else:
            totals = {c.name: from_ring(v, real=c.real) for c, v in zip(cells, summed)}
    held = {c.name: sorted(s for s in silos if i in set(releases[s].held_back)) for i, c in enumerate(cells)}

    def count(name: str) -> PooledCount:
        return PooledCount(value=int(totals.get(name, 0)), suppressed_at=held[name])

    columns = []
    for name in spec.analysis_columns:
        n = int(totals.get(f"{name}:moment_n", 0))
        total, squares = totals.get(f"{name}:sum"), totals.get(f"{name}:sum_squares")
        mean = total / n if n and total is not None else None
        m2 = max(squares - total * total / n, 0.0) if mean is not None and squares is not None else None
        edges = spec.analysis.bins.get(name)
        columns.append(PooledColumn(
            name=name, present=count(f"{name}:present"), missing=count(f"{name}:missing"), n=n, mean=mean, m2=m2,
            sd=math.sqrt(m2 / (n - 1)) if m2 is not None and n > 1 else None,
            moments_from=[s for s in silos if s not in held[f"{name}:moment_n"]] if mean is not None else [],
            edges=list(edges) if edges is not None else None,
            histogram=[count(f"{name}:histogram:{i}") for i in range(len(edges) + 1)] if edges is not None else None))
    return PooledStatistics(
        silos=silos, patients=count("patients"), label_positive=count("label_positive"),
        label_negative=count("label_negative"), modalities={m: count(f"modality:{m}") for m in spec.modalities},
        columns=columns, quantile_levels=list(spec.analysis.quantiles), per_silo={}, withheld_per_silo=silos,
        suppressed={s: list(releases[s].disclosure.suppressed) for s in silos},
        dp={s: releases[s].disclosure.model_dump(mode="json", include={"mechanism", "epsilon", "delta", "queries"})
            for s in silos if releases[s].disclosure.mechanism.value != "none"},
        secure_sum=SecureSum.MASKING, unopened=unopened)


def pooled_statistics(spec: StudySpec, updates: Sequence[UpdateRow], blob: Callable[[str], bytes]) -> PooledStatistics:
    """The pooled figures of an analysis round from its stored uploads (`blob`: sha -> bytes)."""
    releases = {u.silo: parse_release(spec, u.encoding, blob(u.blob_sha)) for u in updates}
    if spec.analysis.secure_sum is SecureSum.MASKING:
        return pool_masked(spec, releases)  # type: ignore[arg-type]
    return pool(spec, releases)  # type: ignore[arg-type]


def mask_partner_keys(fed: Any, task: Any) -> dict[str, bytes]:
    """For an analysis round under masking: each participant's X25519 wrap key, the partners every silo
    masks with (Task.participant_keys); {} for any other task. (`fed`: coordinator.federation.Federation.)"""
    spec = fed.spec(task.study_id)
    if spec.kind is not StudyKind.ANALYSIS or spec.analysis.secure_sum is not SecureSum.MASKING:
        return {}
    rnd = fed.store.get(RoundRow, task.study_id, task.round)
    keys = {}
    for silo in json.loads(rnd.participants_json) if rnd is not None else []:
        row = fed.store.get(SiloRow, silo)
        keys[silo] = row.wrap_public_key if row is not None else b""
    return keys


def analysis_summary(fed: Any, study_id: str) -> dict[str, Any] | None:
    """`summary.json`'s "analysis": the pooled figures of a finished analysis study, else None.
    (`fed`: coordinator.federation.Federation, which imports this module.)"""
    spec, row = fed.spec(study_id), fed.study(study_id)
    if spec.kind is not StudyKind.ANALYSIS or row.state != "done":
        return None
    updates = fed.store.all(UpdateRow, study_id=study_id, round=row.current_round)
    return pooled_statistics(spec, updates, fed.blobs.get).model_dump(mode="json")
