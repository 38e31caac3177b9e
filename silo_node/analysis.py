"""The silo's part of an analysis study: statistics of its cohort, released under its own rules.

An analysis study's one round arrives as a TASK_TRAIN whose spec has `kind = "analysis"`. The node
checks the site's approval, ingests its data as for training, computes the exact statistics
(pipelines.analytics), then applies the disclosure control that node.toml's `[disclosure]` sets
(privacy.disclosure): DP noise first (its ε charged to the privacy ledger, refused above the
node's cap), then small-cell suppression with complementary cells on what would be released.
What was suppressed is listed in the release. The release is audited before it leaves, like
every outgoing message, and travels as a BLOB_UPDATE with the `cohort-statistics+json` encoding,
or, when the study asks for `secure_sum = "masking"`, as a pairwise-masked vector
(coordinator.api.masked_release, privacy.secure_sum; Bonawitz et al. 2017) masked with the round's
participants the coordinator names, so the coordinator learns only the totals.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from coordinator.api import federation_pb2 as pb
from coordinator.api.protocol import (
    ANALYSIS_ENCODING,
    CohortRelease,
    ColumnRelease,
    DisclosureClaim,
    DisclosureMechanism,
    PrivacyClaim,
    StudyKind,
    UpdateMetadata,
)
from compliance.keys import write_secret_file
from coordinator.api.masked_release import (
    MASKED_ANALYSIS_ENCODING,
    MaskedRelease,
    SecureSum,
    release_cells,
    release_values,
)
from coordinator.api.study import MODALITY_SUMMARIES, StudySpec
from pipelines.analytics import CohortStatistics, ColumnStatistics, dataset_statistics, quantiles_from_histogram
from privacy.disclosure import (
    DISCLOSURE_ACCOUNTANT,
    GaussianNoise,
    LaplaceNoise,
    ReleaseNoise,
    cells_to_suppress,
    noise_multiplier_for,
)
from privacy.dp import DPStep, epsilon_spent, would_exceed
from privacy.errors import SecureSumError
from privacy.secure_sum import mask, to_ring
from silo_node.config import DisclosureConfig

if TYPE_CHECKING:
    from silo_node.node import SiloNode

log = logging.getLogger(__name__)


def is_analysis(task: pb.Task) -> bool:
    return StudySpec.from_json(task.spec_json).kind is StudyKind.ANALYSIS


def queries_of(stats: CohortStatistics) -> int:
    """The statistics DP noises: patients, label positives, each modality, and per column the count
    present, the histogram and (with bins, which bound their sensitivity) the sum and sum of squares."""
    per_column = sum(1 + (3 if c.histogram is not None else 0) for c in stats.columns)
    return 2 + len(stats.modalities) + per_column


def disclose(stats: CohortStatistics, rules: DisclosureConfig, *, quantiles: tuple[float, ...],
             noise: ReleaseNoise | None = None) -> CohortRelease:
    """What the silo releases: `stats` after DP noise (when `noise` is given) and suppression."""
    k = rules.min_cell_count
    suppressed: list[str] = []
    count = noise.count if noise is not None else (lambda c: c)
    patients = count(stats.patients)
    positive = count(stats.label_positive)
    negative = max(patients - positive, 0)
    if 0 < patients < k:  # too small a cohort: nothing but the fact that it is small
        return CohortRelease(modalities={m: None for m in stats.modalities},
                             columns=[ColumnRelease(name=c.name) for c in stats.columns],
                             disclosure=_claim(rules, [f"patients: fewer than {k}; nothing released"], noise))
    label = [positive, negative]
    if cells_to_suppress(label, k):
        label = [None, None]
        suppressed.append("label: positives and negatives")
    modalities: dict[str, int | None] = {}
    for m, n in stats.modalities.items():
        with_m = min(count(n), patients)
        hidden = bool(cells_to_suppress([with_m, patients - with_m], k))
        modalities[m] = None if hidden else with_m
        if hidden:
            suppressed.append(f"modality {m}: with and without")
    columns = [_column(c, k, patients, quantiles, noise, suppressed) for c in stats.columns]
    return CohortRelease(patients=patients, label_positive=label[0], label_negative=label[1], modalities=modalities,
                         columns=columns, disclosure=_claim(rules, suppressed, noise))


def _column(c: ColumnStatistics, k: int, patients: int, quantiles: tuple[float, ...], noise: ReleaseNoise | None,
            suppressed: list[str]) -> ColumnRelease:
    present = min(noise.count(c.present), patients) if noise is not None else c.present
    if cells_to_suppress([present, patients - present], k):
        suppressed.append(f"{c.name}: present and missing (and its histogram and moments)")
        return ColumnRelease(name=c.name)
    mean, m2, hist = c.mean, c.m2, list(c.histogram) if c.histogram is not None else None
    if noise is not None:
        if hist is not None:
            hist = noise.histogram(hist)
            bound = max(abs(c.edges[0]), abs(c.edges[-1]))
            total = noise.value(c.clamped_sum, sensitivity=bound)
            squares = noise.value(c.clamped_sum_squares, sensitivity=bound ** 2)
            n = max(present, 1)
            mean, m2 = total / n, max(squares - total * total / n, 0.0)
        else:  # no bins: nothing bounds a value's influence on the moments, so they are not released
            mean = m2 = None
            suppressed.append(f"{c.name}: mean and sd (under DP the study must give bins to bound them)")
    quants = None
    if hist is not None:
        hidden = cells_to_suppress(hist, k)
        for i in sorted(hidden):
            hist[i] = None
        if hidden:
            suppressed.append(f"{c.name}: histogram cells {sorted(hidden)}")
        else:
            quants = quantiles_from_histogram(hist, c.edges, quantiles)
    return ColumnRelease(name=c.name, present=present, missing=patients - present, mean=mean, m2=m2, histogram=hist,
                         quantiles=quants)


def _claim(rules: DisclosureConfig, suppressed: list[str], noise: ReleaseNoise | None) -> DisclosureClaim:
    if noise is None:
        return DisclosureClaim(min_cell_count=rules.min_cell_count, suppressed=suppressed, per_silo=rules.per_silo)
    delta = rules.delta if isinstance(noise, GaussianNoise) else 0.0  # Laplace: pure ε-DP
    return DisclosureClaim(min_cell_count=rules.min_cell_count, suppressed=suppressed, per_silo=rules.per_silo,
                           mechanism=DisclosureMechanism(noise.mechanism), delta=delta,
                           noise_multiplier=noise.unit_scale, queries=noise.queries,
                           epsilon=noise.epsilon(noise.queries, delta=rules.delta))


def build_noise(rules: DisclosureConfig, queries: int) -> ReleaseNoise | None:
    """The node's DP noise for a release of `queries` statistics that may spend (epsilon, delta), or None."""
    if rules.dp is DisclosureMechanism.GAUSSIAN:
        return GaussianNoise(noise_multiplier_for(epsilon=rules.epsilon, delta=rules.delta, queries=queries))
    if rules.dp is DisclosureMechanism.LAPLACE:
        return LaplaceNoise(rules.epsilon / queries)
    return None


def ledger_step(d: DisclosureClaim) -> DPStep:
    """The release as the privacy ledger composes it (privacy.disclosure: Laplace as its zCDP-equivalent step)."""
    if d.mechanism is DisclosureMechanism.LAPLACE:
        return LaplaceNoise(1.0 / d.noise_multiplier).step(d.queries)
    return GaussianNoise(d.noise_multiplier).step(d.queries)


class AnalysisRefused(Exception):
    """The release would exceed the node's privacy budget; the message is the reason sent."""


def run_analysis(node: "SiloNode", task: pb.Task) -> None:
    """The analysis round at this silo: compute, disclose, charge the ledger, audit, send."""
    spec = StudySpec.from_json(task.spec_json)
    decision = node.approvals.valid_decision(task.study_id, spec)
    if decision is None or not decision.approved:
        raise PermissionError(f"study {task.study_id} has no valid approval at this node")
    kept = _release_path(node, task.study_id)
    if kept.exists():  # released before (a restart or a retried upload): the same bytes, never fresh noise
        release = CohortRelease.from_json(kept.read_bytes())
        _send(node, task, release)
        return
    result = node._ingest(task.study_id, spec)
    if result.summaries is None:
        raise RuntimeError("ingestion gave no per-patient modality summaries; expected its steps to include "
                           "build_mask (pipelines.ingest.STEPS)")
    # the summaries' names (MODALITY_SUMMARIES) are the fields of pipelines.steps.ModalitySummaries
    summaries = {n: getattr(result.summaries, n) for n in spec.analysis_columns[len(spec.cohort.ehr_columns):]}
    stats = dataset_statistics(result.dataset, columns=spec.cohort.ehr_columns, bins=spec.analysis.bins,
                               summaries=summaries)
    # only the modalities the study names (and the site approved) are counted in the release
    stats = replace(stats, modalities={m: n for m, n in stats.modalities.items() if m in spec.modalities})
    rules = node.config.disclosure
    queries = queries_of(stats)
    noise = build_noise(rules, queries)
    if noise is not None:
        try:
            _check_budget(node, noise.step(queries))
        except AnalysisRefused as e:
            node.audit.append("budget_refused", study=task.study_id, round=task.round, reason=str(e)[:500])
            node._report(pb.MetricsReport(study_id=task.study_id, round=task.round, nonce=task.nonce,
                                         model_version=task.model_version, skipped=True, skip_reason=str(e)))
            log.warning("analysis %s refused: %s", task.study_id, e)
            return
    release = disclose(stats, rules, quantiles=spec.analysis.quantiles, noise=noise)
    d = release.disclosure
    if noise is not None:
        step = ledger_step(d)
        total = epsilon_spent([*_history(node), step], delta=rules.delta, accountant=DISCLOSURE_ACCOUNTANT)
        node.ledger.record(silo=node.config.name, dataset=node.config.data.dataset, study=task.study_id,
                           round=task.round, epsilon=d.epsilon, delta=d.delta, noise_multiplier=step.noise_multiplier,
                           sample_rate=step.sample_rate, steps=step.steps, accountant=DISCLOSURE_ACCOUNTANT)
        log.info("analysis %s: %s noise, ε %.3g at δ %g for %d statistics (dataset now at ε %.3g)",
                 task.study_id, d.mechanism.value, d.epsilon, d.delta, noise.queries, total)
    write_secret_file(kept, release.to_json().encode())
    _send(node, task, release)


def _release_path(node: "SiloNode", study_id: str) -> Path:
    return Path(node.config.state_dir) / "analysis" / f"{study_id}.json"


def _claim_of(release: CohortRelease) -> PrivacyClaim:
    d = release.disclosure
    if d.mechanism is DisclosureMechanism.NONE:
        return PrivacyClaim()
    step = ledger_step(d)
    return PrivacyClaim(enabled=True, epsilon=d.epsilon, delta=d.delta, noise_multiplier=step.noise_multiplier,
                        sample_rate=step.sample_rate, steps=step.steps, accountant=DISCLOSURE_ACCOUNTANT)


def masked_release(spec: StudySpec, release: CohortRelease, *, own_name: str, own_key: X25519PrivateKey,
                   partners: dict[str, bytes], context: bytes) -> MaskedRelease:
    """`release` as the study's cells, masked with `partners` (privacy.secure_sum); held-back cells are 0 and named."""
    cells = release_cells(spec)
    values = release_values(spec, release)
    held_back = [i for i, c in enumerate(cells) if values.get(c.name) is None]
    ring = [0 if values.get(c.name) is None else to_ring(values[c.name], real=c.real) for c in cells]
    masked = mask(ring, own_name=own_name, own_key=own_key, partners=partners, context=context)
    return MaskedRelease(masked=[format(v, "x") for v in masked], held_back=held_back, partners=sorted(partners),
                         disclosure=release.disclosure)


def mask_context(task: pb.Task) -> bytes:
    """What the pairwise masks are bound to: this study, round and round attempt (nonce)."""
    return f"{task.study_id}|{task.round}|{task.nonce}".encode()


def _send(node: "SiloNode", task: pb.Task, release: CohortRelease) -> None:
    """Audit, then send the release as the round's upload; the study is finished at this silo."""
    d = release.disclosure
    spec = StudySpec.from_json(task.spec_json)
    weight, encoding, data = float(max(release.patients or 0, 1)), ANALYSIS_ENCODING, release.to_json().encode()
    if spec.analysis.secure_sum is SecureSum.MASKING:
        try:
            masked = masked_release(spec, release, own_name=node.config.name, own_key=node.wrap_keys.private_key,
                                    partners=dict(task.participant_keys), context=mask_context(task))
        except SecureSumError as e:
            reason = f"masked release not possible: {e}"
            node.audit.append("round_skipped", study=task.study_id, round=task.round, reason=reason[:500])
            node._report(pb.MetricsReport(study_id=task.study_id, round=task.round, nonce=task.nonce,
                                         model_version=task.model_version, skipped=True, skip_reason=reason[:500]))
            log.warning("analysis %s: %s", task.study_id, reason)
            return
        # the weight would tell the coordinator this silo's patient count: under masking it is 1
        weight, encoding, data = 1.0, MASKED_ANALYSIS_ENCODING, masked.to_json().encode()
    node.audit.append("statistics_released", study=task.study_id, round=task.round, min_cell_count=d.min_cell_count,
                      suppressed=d.suppressed[:200], mechanism=d.mechanism.value, epsilon=d.epsilon,
                      secure_sum=spec.analysis.secure_sum.value)
    header = pb.BlobHeader(ref=pb.BlobRef(study_id=task.study_id, kind=pb.BLOB_UPDATE), round=task.round,
                           nonce=task.nonce, weight=weight, encoding=encoding,
                           metadata_json=UpdateMetadata(privacy=_claim_of(release)).to_json())
    node._send(header, data, kind="statistics", study=task.study_id, round_=task.round, epsilon=d.epsilon)
    node.finished.add(task.study_id)
    log.info("analysis %s: released statistics of %s patients (%d cells suppressed)", task.study_id,
             release.patients, len(d.suppressed))


def _check_budget(node: "SiloNode", prospective: DPStep) -> None:
    rules, cap = node.config.disclosure, node.config.privacy.epsilon_cap
    exceeds, after = would_exceed(_history(node), prospective, cap_epsilon=cap, delta=rules.delta,
                                  accountant=DISCLOSURE_ACCOUNTANT)
    if exceeds:
        raise AnalysisRefused(f"privacy budget: releasing these statistics would bring ε on dataset "
                              f"{node.config.data.dataset} to {after:.3f}, above the node's cap {cap}")


def _history(node: "SiloNode") -> list[DPStep]:
    """Every DP release and training round on the node's dataset, as the ledger holds them."""
    return [DPStep(r.noise_multiplier, r.sample_rate, r.steps) for r in node.ledger.history(node.config.data.dataset)]


def describe_analysis(spec: StudySpec) -> dict[str, object]:
    """What an analysis study computes here and what leaves the hospital, for the site's decision
    (`fedcare silo studies`); the node's own [disclosure] rules apply on top."""
    c, a = spec.cohort, spec.analysis
    return {
        "name": spec.name,
        "description": spec.description,
        "kind": "analysis: statistics of the cohort, no model is trained",
        "modalities": list(spec.modalities),
        "label": f"{c.label_system}|{c.label_code} within {c.label_window_days} days",
        "computed": ["patients, label positives and negatives, patients with each modality (ehr, image, signal)",
                     *(f"{n}: per patient with {m}, {meaning}"
                       for n, (m, meaning) in MODALITY_SUMMARIES.items() if m in spec.modalities),
                     *(f"{col}: count present and missing, mean and standard deviation"
                       + (f", histogram on edges {list(a.bins[col])}, quantiles {list(a.quantiles)} read from it"
                          if col in a.bins else "") for col in spec.analysis_columns)],
        "what_is_sent": ("once: the figures above, after this node's disclosure control (counts below its "
                         "min_cell_count suppressed with complementary cells, DP noise if [disclosure] dp is set, "
                         "its ε charged to the privacy ledger); never records or identifiers"
                         + ("; summed under pairwise masks with the other hospitals, so the coordinator sees only "
                            "totals (which cells this node held back stays visible)"
                            if a.secure_sum is SecureSum.MASKING else "; in the clear to the coordinator")),
        "spec_sha256": spec.sha256(),
    }
