"""What pipelines need to know about a study's cohort, stated structurally.

`pipelines` may not import `coordinator.api`, so the cohort section of a study spec
(`coordinator.api.study.CohortSpec` and its `FeatureSpec`s) is accepted as any object with
these attributes (PEP 544 protocols). The properties are read-only so that frozen pydantic
models satisfy them.

Cohort design: a landmark (index) date splits each patient's history. EHR features are
aggregated over `window_days` up to and including the index date; images and wearable
recordings are the latest ones taken on or before the reference date (`index_date`); the label
is read after it (`pipelines.ehr.labels`). The index date may differ per patient
(`index_from`, `pipelines.ehr.timeline`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Protocol, runtime_checkable

#: Default landmark date; the synthetic federation is written around it.
INDEX_DATE = date(2024, 1, 1)

#: Features of this system are read from the Patient resource, not from Observations.
DEMOGRAPHIC_SYSTEM = "fedcare"

MODALITIES: tuple[str, str, str] = ("ehr", "image", "signal")


@runtime_checkable
class FeatureLike(Protocol):
    """One EHR feature (`coordinator.api.study.FeatureSpec`)."""

    @property
    def name(self) -> str: ...
    @property
    def system(self) -> str: ...
    @property
    def code(self) -> str: ...
    @property
    def unit(self) -> str | None: ...
    @property
    def aggregate(self) -> str: ...  # "last" | "mean" | "min" | "max" | "count"
    @property
    def window_days(self) -> int: ...
    @property
    def categories(self) -> Sequence[str]: ...  # empty: numeric; else one-hot in this order
    @property
    def reference(self) -> tuple[float, float] | None: ...  # (low, high) in `unit`
    @property
    def columns(self) -> Sequence[str]: ...  # value columns in the EHR tensor (one per category)


@runtime_checkable
class CohortLike(Protocol):
    """The cohort section of a study (`coordinator.api.study.CohortSpec`)."""

    @property
    def label_system(self) -> str: ...
    @property
    def label_code(self) -> str: ...
    @property
    def label_window_days(self) -> int: ...
    @property
    def label_source(self) -> str: ...  # "condition" | "observation" | "column"
    @property
    def label_column(self) -> str | None: ...
    @property
    def label_above(self) -> float | None: ...
    @property
    def label_values(self) -> Sequence[str]: ...
    @property
    def exclude_prevalent(self) -> bool: ...
    @property
    def index_from(self) -> str: ...  # "fixed" | "column" | "first_event" | "last_observation"
    @property
    def index_date(self) -> date | None: ...
    @property
    def index_column(self) -> str | None: ...
    @property
    def index_system(self) -> str | None: ...
    @property
    def index_code(self) -> str | None: ...
    @property
    def ehr_columns(self) -> Sequence[str]: ...
    @property
    def min_age(self) -> int: ...
    @property
    def features(self) -> Sequence[FeatureLike]: ...
    @property
    def image_size(self) -> int: ...
    @property
    def image_dims(self) -> int: ...  # 2: the chosen series' middle slice [1, S, S]; 3: the series as [1, D, S, S]
    @property
    def image_depth(self) -> int: ...  # D (3D only)
    @property
    def signal_channels(self) -> Sequence[str]: ...
    @property
    def signal_rate_hz(self) -> float: ...
    @property
    def signal_length(self) -> int: ...
