"""Masked summation of analysis releases (pairwise masks, Bonawitz et al. 2017): the coordinator's
totals equal the clear pooling, no silo's values are readable from its upload, a missing participant
leaves every masked figure unopened, and a wrong own key or a clear upload is refused."""

import math

import numpy as np
import pytest

from coordinator.analysis import parse_release, pool, pool_masked
from coordinator.api.masked_release import MASKED_ANALYSIS_ENCODING, MaskedRelease, release_cells, release_values
from coordinator.api.protocol import ANALYSIS_ENCODING
from coordinator.api.study import AnalysisSpec, StudySpec
from coordinator.errors import InvalidInput
from pipelines.analytics import cohort_statistics
from privacy.errors import SecureSumError
from privacy.he import SiloKeyPair
from silo_node.analysis import disclose, masked_release
from silo_node.config import DisclosureConfig

SPEC = StudySpec(name="overview", kind="analysis",
                 analysis=AnalysisSpec(bins={"age": (40.0, 50.0, 60.0, 70.0, 80.0), "image_series": (2.0, 3.0),
                                             "wearable_hours": (1.0, 24.0)}, secure_sum="masking"))
SILOS = ("st-anne", "st-mary", "st-paul")
CONTEXT = b"overview-1|1|nonce"


def _release(n: int, seed: int):
    """A silo's disclosed release: age and glucose at every patient (glucose at half), hba1c at 3 (a small
    cell, suppressed with its complement), 4 + seed patients without an image, ~30% positive; 1-3 image series
    and 0.5-30 wearable hours per patient."""
    rng = np.random.default_rng(seed)
    ages, glucose = rng.normal(62, 9, n), np.where(np.arange(n) < n // 2, rng.normal(110, 20, n), np.nan)
    hba1c = np.where(np.arange(n) < 3, 6.0, np.nan)
    rest = np.full((n, len(SPEC.cohort.ehr_columns) - 4), np.nan)
    has_image = (np.arange(n) >= 4 + seed).astype(float)
    stats = cohort_statistics(ehr_raw=np.column_stack([ages, np.full(n, np.nan), glucose, hba1c, rest]),
                              mask=np.column_stack([np.ones(n), has_image, np.ones(n)]),
                              label=(rng.random(n) < 0.3).astype(float), columns=SPEC.cohort.ehr_columns,
                              bins=SPEC.analysis.bins,
                              summaries={"image_series": np.where(has_image > 0, rng.integers(1, 4, n), np.nan),
                                         "wearable_hours": rng.uniform(0.5, 30.0, n)})
    return disclose(stats, DisclosureConfig(), quantiles=SPEC.analysis.quantiles)


@pytest.fixture(scope="module")
def federation():
    keys = {s: SiloKeyPair.generate() for s in SILOS}
    partners = {s: k.public_bytes() for s, k in keys.items()}
    clear = {s: _release(150 + 40 * i, i) for i, s in enumerate(SILOS)}
    masked = {s: MaskedRelease.from_json(masked_release(SPEC, clear[s], own_name=s, own_key=keys[s].private_key,
                                                        partners=partners, context=CONTEXT).to_json())
              for s in SILOS}
    return keys, partners, clear, masked


def test_masked_totals_equal_the_clear_pooling(federation) -> None:
    _, _, clear, masked = federation
    want = pool(SPEC, clear)
    got = pool_masked(SPEC, {s: parse_release(SPEC, MASKED_ANALYSIS_ENCODING, m.to_json().encode())
                             for s, m in masked.items()})
    assert got.unopened is None and got.per_silo == {} and got.withheld_per_silo == list(SILOS)
    assert got.patients == want.patients and got.label_positive == want.label_positive
    assert got.modalities == want.modalities
    suppressed_cells = 0
    for g, w in zip(got.columns, want.columns):
        assert (g.present, g.missing, g.histogram, g.n, g.moments_from) == (w.present, w.missing, w.histogram, w.n,
                                                                              w.moments_from), g.name
        suppressed_cells += sum(bool(c.suppressed_at) for c in [g.present, *(g.histogram or [])])
        if w.mean is not None:
            assert math.isclose(g.mean, w.mean, rel_tol=1e-9) and math.isclose(g.sd, w.sd, rel_tol=1e-7), g.name
    assert suppressed_cells > 0  # hba1c was held back at every silo and is left out of the totals, named
    summaries = {c.name: c for c in got.columns if c.name in ("image_series", "wearable_hours")}
    hours, series = summaries["wearable_hours"], summaries["image_series"]
    assert hours.n == 150 + 190 + 230 and hours.mean and 0 < sum(c.value for c in hours.histogram) <= hours.n  # masked
    assert series.present.suppressed_at == list(SILOS)  # 4-6 patients without an image: a small cell, as the modality


def test_a_silos_upload_does_not_show_its_values(federation) -> None:
    _, _, clear, masked = federation
    values = release_values(SPEC, clear["st-anne"])
    patients = release_cells(SPEC).index(next(c for c in release_cells(SPEC) if c.name == "patients"))
    assert values["patients"] == 150
    assert int(masked["st-anne"].masked[patients], 16) not in (150, 0)
    # each upload alone looks uniform over the ring: its top bits are set about half of the time
    top = [int(v, 16) >> 127 for v in masked["st-anne"].masked]
    assert 0.2 < sum(top) / len(top) < 0.8


def test_a_missing_participant_leaves_every_masked_figure_unopened(federation) -> None:
    _, _, _, masked = federation
    got = pool_masked(SPEC, {s: masked[s] for s in SILOS[:2]})
    assert "st-paul" in got.unopened and "run the study again" in got.unopened
    assert got.patients.value == 0 and all(c.mean is None for c in got.columns)


def test_a_wrong_own_key_or_a_single_partner_is_refused(federation) -> None:
    keys, partners, clear, _ = federation
    swapped = {**partners, "st-anne": partners["st-mary"]}
    with pytest.raises(SecureSumError, match="not this participant's own public key"):
        masked_release(SPEC, clear["st-anne"], own_name="st-anne", own_key=keys["st-anne"].private_key,
                       partners=swapped, context=CONTEXT)
    with pytest.raises(SecureSumError, match="at least two participants"):
        masked_release(SPEC, clear["st-anne"], own_name="st-anne", own_key=keys["st-anne"].private_key,
                       partners={"st-anne": partners["st-anne"]}, context=CONTEXT)


def test_a_clear_release_is_refused_when_the_study_asks_for_masking(federation) -> None:
    _, _, clear, _ = federation
    with pytest.raises(InvalidInput, match="masked"):
        parse_release(SPEC, ANALYSIS_ENCODING, clear["st-anne"].to_json().encode())


def test_the_report_says_the_sums_were_masked_or_not_opened(federation, tmp_path) -> None:
    from fedcare.analysis_report import cohort_rows, write_analysis

    _, _, _, masked = federation
    opened = pool_masked(SPEC, masked).model_dump(mode="json")
    page = write_analysis({"study": "overview-1", "name": "overview", "analysis": opened}, tmp_path)["html"].read_text()
    assert "pairwise masks" in page and "patients" in page
    unopened = pool_masked(SPEC, {s: masked[s] for s in SILOS[1:]}).model_dump(mode="json")
    assert cohort_rows(unopened) == [("masked sums", "not opened", unopened["unopened"])]


def test_the_site_is_told_the_figures_are_masked() -> None:
    from silo_node.analysis import describe_analysis

    assert "pairwise masks" in describe_analysis(SPEC)["what_is_sent"]
    assert "in the clear" in describe_analysis(SPEC.model_copy(update={"analysis": AnalysisSpec()}))["what_is_sent"]
