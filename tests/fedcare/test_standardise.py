"""A training spec standardised from an analysis study's pooled moments (#19 item 5)."""

import numpy as np
import pytest

from coordinator.analysis import pool
from coordinator.api.study import StudySpec
from fedcare.standardise import StandardisationError, standardised_from
from pipelines.analytics import cohort_statistics
from pipelines.normalise import normalise_ehr
from silo_node.analysis import disclose
from silo_node.config import DisclosureConfig


def _summary(spec: StudySpec) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(0)
    cols = spec.cohort.ehr_columns
    ehr = rng.normal(100, 15, size=(150, len(cols)))
    summaries = {name: np.ones(150) for name in spec.analysis_columns[len(cols):]}  # image series, wearable hours
    stats = cohort_statistics(ehr_raw=ehr, mask=np.ones((150, 3)), label=np.zeros(150), columns=cols, bins={},
                              summaries=summaries)
    pooled = pool(spec, {"a": disclose(stats, DisclosureConfig(), quantiles=())})
    return {"study": "overview-1", "kind": "analysis", "state": "done", "analysis": pooled.model_dump(mode="json")}, ehr


def test_features_are_z_scored_with_the_pooled_mean_and_sd() -> None:
    analysis = StudySpec(name="overview", kind="analysis")
    summary, ehr = _summary(analysis)
    training = standardised_from(StudySpec(name="train"), summary)
    assert "overview-1" in training.description
    glucose = training.cohort.ehr_columns.index("glucose")
    z = normalise_ehr(ehr, training.cohort.features)[:, glucose]
    x = ehr[:, glucose]
    assert np.allclose(z, (x - x.mean()) / x.std(ddof=1))


def test_a_training_study_is_no_source_of_standardisation() -> None:
    with pytest.raises(StandardisationError, match="no finished analysis study"):
        standardised_from(StudySpec(name="train"), {"study": "t-1", "kind": "training", "state": "done"})
