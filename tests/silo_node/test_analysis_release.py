"""The silo's release of cohort statistics: suppression said, DP noise counted, wire format typed."""

import numpy as np

from coordinator.analysis import pool, pool_moments
from fedcare.analysis_report import cohort_rows
from coordinator.api.protocol import CohortRelease
from coordinator.api.study import AnalysisSpec, StudySpec
from pipelines.analytics import cohort_statistics
from privacy.disclosure import GaussianNoise
from silo_node.analysis import disclose, queries_of
from silo_node.config import DisclosureConfig

SPEC = StudySpec(name="overview", kind="analysis", analysis=AnalysisSpec(bins={
    "age": (40.0, 60.0, 80.0, 95.0), "image_series": (2.0, 3.0), "wearable_hours": (1.0, 24.0)}))


def _summaries(mask: np.ndarray, series: np.ndarray, hours: np.ndarray) -> dict[str, np.ndarray]:
    """Per patient: its image series and wearable hours, NaN where it has no image / no window."""
    return {"image_series": np.where(mask[:, 1] > 0, series, np.nan),
            "wearable_hours": np.where(mask[:, 2] > 0, hours, np.nan)}


def _stats(n: int, seed: int):
    rng = np.random.default_rng(seed)
    cols = SPEC.cohort.ehr_columns
    ehr = np.full((n, len(cols)), np.nan)
    ehr[:, 0] = rng.normal(62, 9, n)
    ehr[: n // 2, 2] = rng.normal(110, 20, n // 2)
    ehr[:3, 3] = 6.0  # hba1c: only 3 patients have it, a small cell
    mask = np.ones((n, 3))
    mask[:4, 1] = 0
    label = (rng.random(n) < 0.3).astype(float)
    summaries = _summaries(mask, rng.integers(1, 4, n).astype(float), rng.uniform(0.5, 30.0, n))
    return cohort_statistics(ehr_raw=ehr, mask=mask, label=label, columns=cols, bins=SPEC.analysis.bins,
                             summaries=summaries), ehr


def test_small_cells_are_suppressed_with_their_complement_and_said() -> None:
    stats, _ = _stats(120, 0)
    release = CohortRelease.from_json(disclose(stats, DisclosureConfig(), quantiles=(0.5,)).to_json())
    hba1c = release.columns[3]
    assert hba1c.present is None and hba1c.missing is None and hba1c.mean is None  # 3 present: both cells hidden
    assert release.modalities["image"] is None  # 4 patients without an image
    assert any("hba1c" in s for s in release.disclosure.suppressed)
    age = release.columns[0]
    assert age.present == 120 and sum(c for c in age.histogram if c is not None) <= 120
    assert [c is None for c in age.histogram].count(True) != 1


def test_dp_noise_counts_every_released_statistic() -> None:
    stats, _ = _stats(300, 1)
    noise = GaussianNoise(0.5, rng=np.random.default_rng(0))
    release = disclose(stats, DisclosureConfig(dp="gaussian"), quantiles=(0.5,), noise=noise)
    assert release.disclosure.mechanism == "gaussian" and release.disclosure.epsilon > 0
    assert noise.queries <= queries_of(stats)  # suppressed columns are not noised beyond their count
    assert release.columns[0].mean != stats.columns[0].mean


def test_pooled_moments_equal_the_moments_of_the_union() -> None:
    rng = np.random.default_rng(2)
    parts = [rng.normal(m, s, n) for m, s, n in ((0, 1, 50), (3, 2, 80), (-1, 0.5, 20))]
    n, mean, m2 = pool_moments([(p.size, p.mean(), float(((p - p.mean()) ** 2).sum())) for p in parts])
    union = np.concatenate(parts)
    assert n == union.size and np.isclose(mean, union.mean()) and np.isclose(m2 / (n - 1), union.var(ddof=1))


def test_pooled_cells_leave_out_a_suppressing_silo_and_name_it() -> None:
    a, _ = _stats(120, 3)
    b, _ = _stats(200, 4)
    ra = disclose(a, DisclosureConfig(), quantiles=(0.5,))
    rb = disclose(b, DisclosureConfig(min_cell_count=1), quantiles=(0.5,))
    pooled = pool(SPEC, {"a": ra, "b": rb})
    assert pooled.modalities["image"].value == 196 and pooled.modalities["image"].suppressed_at == ["a"]
    assert pooled.patients.value == 320 and not pooled.patients.suppressed_at


def test_a_release_over_the_nodes_cap_is_refused_and_training_rounds_count(tmp_path) -> None:
    """The budget check composes the release with what the ledger already holds on the dataset."""
    from types import SimpleNamespace

    import pytest

    from compliance.ledger import PrivacyLedger
    from privacy.disclosure import noise_multiplier_for
    from silo_node.analysis import AnalysisRefused, _check_budget
    from silo_node.config import NodeConfig

    config = NodeConfig(name="h1", coordinator="localhost:1", state_dir=tmp_path, insecure=True,
                        data={"dataset": "h1-ehr", "fhir": [tmp_path]}, privacy={"epsilon_cap": 2.0},
                        disclosure={"dp": "gaussian", "epsilon": 1.0})
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    node = SimpleNamespace(config=config, ledger=ledger)
    z = noise_multiplier_for(epsilon=1.0, delta=1e-6, queries=40)
    _check_budget(node, GaussianNoise(z).step(40))  # an empty ledger: 1.0 of 2.0
    # a DP-SGD study already spent most of the cap on the same dataset
    ledger.record(silo="h1", dataset="h1-ehr", study="train-1", round=1, epsilon=1.8, delta=1e-5, noise_multiplier=0.9,
                  sample_rate=0.1, steps=200, accountant="rdp")
    with pytest.raises(AnalysisRefused, match="above the node's cap 2.0"):
        _check_budget(node, GaussianNoise(z).step(40))


def test_laplace_noise_spends_its_epsilon_over_the_statistics_it_noised() -> None:
    from silo_node.analysis import build_noise, ledger_step

    stats, _ = _stats(300, 5)
    rules = DisclosureConfig(dp="laplace", epsilon=2.0)
    noise = build_noise(rules, queries_of(stats))
    release = disclose(stats, rules, quantiles=(0.5,), noise=noise)
    d = release.disclosure
    assert d.mechanism == "laplace" and d.delta == 0.0
    assert 0 < d.epsilon <= 2.0 + 1e-12 and d.epsilon == noise.queries * noise.epsilon_per_query
    step = ledger_step(d)  # the ledger's Gaussian-equivalent (zCDP) step: multiplier 1/ε, one full batch
    assert (step.noise_multiplier, step.sample_rate, step.steps) == (1.0 / d.epsilon, 1.0, 1)
    assert release.columns[0].mean != stats.columns[0].mean


def test_auto_approval_of_an_analysis_checks_its_modalities_not_training_limits() -> None:
    from silo_node.approval import describe, policy_decision
    from silo_node.config import ApprovalConfig, BudgetConfig

    strict = ApprovalConfig(mode="auto", allowed_modalities=["ehr"], require_encryption=True, max_rounds=1)
    ehr_only = StudySpec(name="overview", kind="analysis", modalities=["ehr"])
    assert policy_decision(ehr_only, strict, BudgetConfig())[0]
    ok, reason = policy_decision(StudySpec(name="overview", kind="analysis"), strict, BudgetConfig())
    assert not ok and "modalities" in reason
    assert "disclosure control" in describe(ehr_only)["what_is_sent"]


def test_pooled_series_and_hours_are_the_histograms_and_moments_of_all_patients() -> None:
    """Two hospitals with known image series and wearable hours per patient: pooled, those of the union."""
    known = {"a": (np.array([1, 1, 2, 3, 1] * 4, float), np.array([0.5, 2.0, 30.0, 5.0, 12.0] * 4)),
             "b": (np.array([2, 2, 1, 4, 1, 2] * 5, float), np.array([1.0, 0.2, 48.0, 3.0, 3.0, 20.0] * 5))}
    releases = {}
    for name, (series, hours) in known.items():
        n, cols = series.size, SPEC.cohort.ehr_columns
        mask = np.ones((n, 3))
        stats = cohort_statistics(ehr_raw=np.full((n, len(cols)), 50.0), mask=mask, label=np.zeros(n), columns=cols,
                                  bins=SPEC.analysis.bins, summaries=_summaries(mask, series, hours))
        released = disclose(stats, DisclosureConfig(min_cell_count=1), quantiles=SPEC.analysis.quantiles)
        releases[name] = CohortRelease.from_json(released.to_json()).check_against(SPEC)
    pooled_all = pool(SPEC, releases)
    pooled = {c.name: c for c in pooled_all.columns}
    series = np.concatenate([s for s, _ in known.values()])
    hours = np.concatenate([h for _, h in known.values()])
    assert [c.value for c in pooled["image_series"].histogram] == [22, 19, 9]  # [-inf, 2), [2, 3), [3, inf)
    assert [c.value for c in pooled["wearable_hours"].histogram] == [int((hours < 1).sum()),
                                                                   int(((hours >= 1) & (hours < 24)).sum()),
                                                                   int((hours >= 24).sum())]
    assert np.isclose(pooled["image_series"].mean, series.mean()) and np.isclose(pooled["wearable_hours"].sd,
                                                                                   hours.std(ddof=1))
    rows = {figure: value for figure, value, _ in cohort_rows(pooled_all.model_dump(mode="json"))}
    assert rows["image_series present"].startswith("50; mean 1.8")  # the report's cohort table shows them
