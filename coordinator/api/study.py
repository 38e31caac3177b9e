"""The study spec: what a researcher asks the federation to do.

A study spec is a TOML file validated by these pydantic models. It is part of the wire
contract (the coordinator stores it, every silo receives it verbatim and approves its hash),
so it lives here and imports nothing from the other rooms. Every other room reads the
section it needs: pipelines read `cohort`, pipelines.models read `model` (through
`model_arguments`), privacy reads `privacy`, the coordinator reads `training`,
`aggregation` and `compression`.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coordinator.api.masked_release import SecureSum
from coordinator.api.protocol import (
    MODALITIES,
    Codec,
    DownlinkCodec,
    Encryption,
    Rule,
    ServerOptimizerName,
    Staleness,
    StudyKind,
    ProtocolError,
    TrainingMode,
    StudyProtocol,
    check_study_name,
    compatibility_error,
)

Modality = Literal["ehr", "image", "signal"]
ALL_MODALITIES: tuple[Modality, ...] = MODALITIES  # type: ignore[assignment]
Aggregate = Literal["last", "mean", "min", "max", "count"]


class SpecError(ValueError):
    """A study spec that cannot be used; the message names the file, field and reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    """One EHR feature: which coded observation, aggregated how, in which unit."""

    name: str
    system: str = "http://loinc.org"
    code: str
    unit: str | None = None  # UCUM unit values are normalised to; None for unitless/count
    aggregate: Aggregate = "last"
    window_days: int = Field(default=365, gt=0)  # look-back from the index date
    # declared categories: one-hot by fedcare in this order, the same at every silo; a value outside them is
    # counted as unknown and left missing. Empty: a numeric feature
    categories: tuple[str, ...] = ()
    # reference interval (low, high) in `unit`: values map to (x - mid) / half-width at every silo. Without it
    # (and without a built-in clinical reference) a feature is z-scored with training rows' statistics only
    reference: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _categorical_or_numeric(self) -> "FeatureSpec":
        if self.categories and (len(set(self.categories)) != len(self.categories) or self.aggregate != "last"
                                or self.reference is not None or self.unit is not None):
            raise ValueError(f"feature {self.name!r} declares categories {list(self.categories)}; expected distinct "
                             "categories with aggregate 'last' and no unit or reference")
        if self.reference is not None and not self.reference[0] < self.reference[1]:
            raise ValueError(f"feature {self.name!r} has reference {list(self.reference)}; expected [low, high] with low < high")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """The feature's value columns in the EHR tensor: one, or one per declared category (one-hot)."""
        return tuple(f"{self.name}={c}" for c in self.categories) if self.categories else (self.name,)


DEFAULT_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(name="age", system="fedcare", code="age", unit="a"),
    FeatureSpec(name="sex_female", system="fedcare", code="sex-female", unit=None),
    FeatureSpec(name="glucose", code="2345-7", unit="mg/dL", aggregate="mean"),
    FeatureSpec(name="hba1c", code="4548-4", unit="%"),
    FeatureSpec(name="systolic_bp", code="8480-6", unit="mm[Hg]", aggregate="mean"),
    FeatureSpec(name="diastolic_bp", code="8462-4", unit="mm[Hg]", aggregate="mean"),
    FeatureSpec(name="bmi", code="39156-5", unit="kg/m2"),
    FeatureSpec(name="cholesterol", code="2093-3", unit="mg/dL"),
    FeatureSpec(name="creatinine", code="2160-0", unit="mg/dL"),
    FeatureSpec(name="nt_probnp", code="33762-6", unit="pg/mL"),
)


class CohortSpec(_Strict):
    """Who is in the study, what is predicted, and how each modality becomes a tensor."""

    label_system: str = "http://snomed.info/sct"
    label_code: str = "84114007"  # heart failure
    label_window_days: int = Field(default=365, gt=0)  # condition onset within N days after index
    # where the label is read (pipelines.ehr.labels): "condition": onset of label_system/label_code within the
    # window; "observation": a value of label_system/label_code within the window; "column": a table column
    label_source: Literal["condition", "observation", "column"] = "condition"
    label_column: str | None = None  # label_source = "column": the column, e.g. "num"
    label_above: float | None = None  # positive when the value is above this, e.g. num > 0
    label_values: tuple[str, ...] = ()  # positive when the cell is one of these codes
    # a patient whose label condition started on or before the index date is excluded as a prevalent case
    # (incident-outcome study); false keeps them, labelled positive
    exclude_prevalent: bool = True
    # the index (landmark) date per patient: "fixed" (index_date), "column" (a table column, index_column),
    # "first_event" (the first fact coded index_system/index_code), "last_observation" (the latest fact)
    index_from: Literal["fixed", "column", "first_event", "last_observation"] = "fixed"
    index_date: date | None = None  # None: 2024-01-01 (pipelines.cohort.INDEX_DATE); the reference for relative dates
    index_column: str | None = None
    index_system: str | None = None
    index_code: str | None = None
    min_age: int = Field(default=18, ge=0)
    features: tuple[FeatureSpec, ...] = DEFAULT_FEATURES
    image_size: int = Field(default=32, ge=8, le=512)
    image_dims: Literal[2, 3] = 2  # 2: one slice [1, S, S]; 3: a volume [1, D, S, S] from the series
    image_depth: int = Field(default=16, ge=4, le=512)  # D, slices per volume after resampling (3D only)
    signal_channels: tuple[str, ...] = ("heart_rate", "acc_x", "acc_y", "acc_z")
    signal_rate_hz: float = Field(default=1.0, gt=0)
    signal_length: int = Field(default=128, ge=8)  # samples per window after resampling
    test_fraction: float = Field(default=0.25, gt=0, lt=1)
    # each silo's validation part (threshold and best-round choice; pipelines.dataset.split_silo)
    validation_fraction: float = Field(default=0.2, ge=0, lt=1)
    stratify_split: bool = True  # exact label shares in each part (small, imbalanced silos)
    # "hash": by study seed and keyed pseudonym; "column": the part each silo's data names (a table's split_column
    # or the node's split_file, pipelines.splits), patients without one taking the hash split
    split: Literal["hash", "column"] = "hash"

    @model_validator(mode="after")
    def _unique_feature_names(self) -> "CohortSpec":
        names = [f.name for f in self.features]
        if len(names) != len(set(names)):
            raise ValueError(f"feature names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _label_and_index_complete(self) -> "CohortSpec":
        if self.label_source == "column" and (not self.label_column or (self.label_above is None) == (not self.label_values)):
            raise ValueError("label_source 'column' needs label_column and exactly one rule: label_above (e.g. 0 for "
                             "num > 0) or label_values (the codes that are positive)")
        if self.label_source == "observation" and self.label_above is None:
            raise ValueError("label_source 'observation' needs label_above: the value above which the label is positive")
        if self.index_from == "column" and not self.index_column:
            raise ValueError("index_from 'column' needs index_column: the table column holding each patient's index date")
        if self.index_from == "first_event" and not (self.index_system and self.index_code):
            raise ValueError("index_from 'first_event' needs index_system and index_code: the event that starts follow-up")
        return self

    @property
    def ehr_columns(self) -> tuple[str, ...]:
        """The value columns of the EHR tensor, in order (a categorical feature has one per category)."""
        return tuple(c for f in self.features for c in f.columns)

    @model_validator(mode="after")
    def _patients_left_to_train(self) -> "CohortSpec":
        if self.test_fraction + self.validation_fraction >= 1:
            raise ValueError(f"test_fraction + validation_fraction is {self.test_fraction + self.validation_fraction}; "
                             "keep it below 1 so each silo has patients to train on")
        return self


class ModelSpec(_Strict):
    """Architecture of the multimodal model (pipelines.models builds it from this)."""

    embed_dim: int = Field(default=16, ge=2, le=1024)
    ehr_hidden: int = Field(default=64, ge=4, le=8192)
    image_channels: tuple[int, ...] = (8, 16)
    signal_hidden: int = Field(default=32, ge=4, le=4096)
    # features (the default): fixed statistics and a linear head (pipelines.models.features), sized for DP-SGD,
    # which studies run by default (privacy.dp = true): measured on the demo's hospitals at ε = 8 with the default
    # training section, AUROC 0.76 against 0.55 for the CNN encoders (accuracy below the majority class), and
    # DP-SGD costs ~1.1x plain SGD on it against ~3.8x on the CNN (benchmarks/dp_cost.py). cnn: MONAI 2D/3D
    # convolutions; gru: Opacus DPGRU after a strided Conv1d: for studies with many patients per hospital
    signal_encoder: Literal["cnn", "gru", "features"] = "features"
    image_encoder: Literal["cnn", "features"] = "features"
    fusion: Literal["moe", "concat"] = "moe"
    kl_weight: float = Field(default=1e-3, ge=0)
    consistency_weight: float = Field(default=0.1, ge=0)
    modality_dropout: float = Field(default=0.15, ge=0, lt=1)
    personal_layers: tuple[str, ...] = ()  # parameter-name prefixes kept at the silo, e.g. ("head",)
    # "linear" / "mlp" (ehr_hidden units): a model sized to a tabular-only study (modalities = ["ehr"]),
    # which keeps its utility under DP at small ε where the multimodal model's noise grows with its size
    architecture: Literal["multimodal", "linear", "mlp"] = "multimodal"
    # Refused at submission above this many parameters (counted without allocating them): a spec
    # must not make the coordinator and every silo build a model of gigabytes.
    max_parameters: int = Field(default=20_000_000, ge=1, le=500_000_000)


class TrainingSpec(_Strict):
    rounds: int = Field(default=5, ge=1, le=10_000)
    local_epochs: int = Field(default=1, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(default=0.9, ge=0, lt=1)  # SGD momentum; post-processing under DP
    fedprox_mu: float = Field(default=0.0, ge=0)
    min_silos: int = Field(default=2, ge=1)  # quorum: a round closes only with this many updates
    # Start as soon as this many enrolled; until then wait (up to enrollment_timeout_s) even when
    # every silo seen so far has answered. None: start once every recently seen silo has answered.
    expected_silos: int | None = Field(default=None, ge=1)
    enrollment_timeout_s: float = Field(default=60.0, gt=0)
    round_timeout_s: float = Field(default=600.0, gt=0)
    seed: int = 0
    # Partial participation (coordinator/selection.py): silos asked per round; None = every silo.
    silos_per_round: int | None = Field(default=None, ge=1)
    max_rounds_unselected: int = Field(default=3, ge=1)  # fairness: a silo left out this long is forced in
    # The released model (coordinator/release.py): the version with the best pooled value of this
    # metric in the silos' reports ("best"), or the last one; None patience: no early stopping.
    # A validation metric (silo_node/evaluation.py reports val_*): choosing on the test split would
    # make the test figures of the released model optimistic.
    selection_metric: str = Field(default="val_auroc", min_length=1, max_length=64)
    selection_goal: Literal["max", "min"] = "max"
    release: Literal["best", "last"] = "best"
    early_stopping_patience: int | None = Field(default=None, ge=1)
    # A silo that accepts after the study started takes part from the next round (under CKKS once
    # the key holder has wrapped the study's secret for it); False: such an answer is refused.
    late_join: bool = True
    # "async": buffered asynchronous aggregation (FedBuff, coordinator/buffer.py): a version is built
    # from every buffer_size updates, each scaled by its staleness weight; `rounds` counts versions.
    mode: TrainingMode = TrainingMode.SYNC
    buffer_size: int = Field(default=3, ge=1)  # K: updates per version
    staleness: Staleness = Staleness.POLYNOMIAL
    staleness_exponent: float = Field(default=0.5, ge=0, le=10)  # a in (1 + s) ** -a
    max_staleness: int = Field(default=4, ge=0)  # an update trained on an older version is refused


class PrivacySpec(_Strict):
    dp: bool = True
    # None: derived from target_epsilon; > 0: σ = 0 is ε = ∞, which the silo's ledger (privacy.dp.DPStep) refuses
    noise_multiplier: float | None = Field(default=None, gt=0)
    target_epsilon: float | None = Field(default=8.0, gt=0)  # for the whole study at one silo
    delta: float = Field(default=1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)  # the clip bound; with adaptive clipping, its start
    # "adaptive": the clip bound follows a quantile of the per-sample gradient norms (Andrew et al.
    # 2021; privacy.dp.AdaptiveClipping), paid for inside the same noise multiplier
    clipping: Literal["flat", "adaptive"] = "flat"
    clip_target_quantile: float = Field(default=0.5, gt=0, lt=1)
    clip_learning_rate: float = Field(default=0.2, gt=0)
    clip_count_noise: float | None = Field(default=None, gt=0)  # None: max(batch/20, noise multiplier)
    accountant: Literal["rdp", "prv"] = "rdp"
    # ckks-screen: exact plus one multiplicative level, so the coordinator can screen encrypted
    # updates by norm / pairwise distance (norm_bounding, krum); see privacy.he.screening
    encryption: Encryption = Encryption.CKKS_EXACT
    update_clip: float = Field(default=10.0, gt=0)  # L-inf bound on update values (packed mode)

    @model_validator(mode="after")
    def _noise_or_target(self) -> "PrivacySpec":
        if self.dp and self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("with dp = true set noise_multiplier or target_epsilon")
        return self


class AggregationSpec(_Strict):
    """How a round's updates become the next model: a robust rule, then a server optimiser.

    The server optimiser steps on the aggregated delta (Reddi et al. 2021): in the clear at the
    coordinator; under CKKS every silo applies the same deterministic step after decrypting.
    `server_momentum` is FedAvgM's beta (Hsu et al. 2019) and FedAdam/FedYogi's beta1."""

    rule: Rule = Rule.FEDAVG
    params: dict[str, float] = Field(default_factory=dict)
    server_optimizer: ServerOptimizerName = ServerOptimizerName.NONE
    server_learning_rate: float = Field(default=1.0, gt=0)
    server_momentum: float = Field(default=0.9, ge=0, lt=1)


class CompressionSpec(_Strict):
    """Uplink codec of silo updates (coordinator/api/codecs) and downlink codec of the global model.

    top-k / random-k run with error feedback at the silo. Under CKKS only `randk` (coordinates
    shared by all silos of a round, so ciphertexts still add up) and `none` are allowed.
    `downlink` encodes version r as a delta over version r-1; version r is then defined as
    version r-1 + the decoded delta, so silos and coordinator hold bit-identical weights.
    """

    codec: Codec = Codec.NONE
    fraction: float = Field(default=0.1, gt=0, le=1)  # kept share for top-k / random-k
    zstd: bool = False
    downlink: DownlinkCodec = DownlinkCodec.NONE


#: Per-modality summaries an analysis study releases after the EHR value columns, as columns of their own (the
#: same statistics, bins from `analysis.bins`; missing where a patient lacks the modality), for the study's
#: modalities: name -> (modality, what it counts per patient).
MODALITY_SUMMARIES: dict[str, tuple[Modality, str]] = {
    "image_series": ("image", "DICOM series on or before the index date"),
    "wearable_hours": ("signal", "hours of wearable data: the spans (first to last sample before the cut-off) of "
                                 "the recordings that gave a window, summed"),
}


class AnalysisSpec(_Strict):
    """What an analysis study (`kind = "analysis"`) computes at each silo on its cohort: per EHR value
    column (and per-modality summary, `MODALITY_SUMMARIES`) the count present / missing, mean and
    standard deviation, and a histogram on the bins
    fixed here (edges, in the column's unit, the same at every silo, so cells add up exactly across
    silos); quantiles are read from the histogram. A column without bins gets no histogram.
    `secure_sum = "masking"`: the coordinator receives pairwise-masked vectors and sees only totals
    (coordinator.api.masked_release; no per-silo columns, and every participant must deliver)."""

    bins: dict[str, tuple[float, ...]] = Field(default_factory=dict)  # EHR value column or summary -> increasing edges
    quantiles: tuple[float, ...] = (0.25, 0.5, 0.75)
    secure_sum: SecureSum = SecureSum.NONE

    @model_validator(mode="after")
    def _edges_and_quantiles(self) -> "AnalysisSpec":
        for name, edges in self.bins.items():
            if not edges or len(edges) > 10_000 or any(not b > a for a, b in zip(edges, edges[1:])) \
                    or not all(math.isfinite(e) for e in edges):
                raise ValueError(f"analysis.bins.{name}: expected 1-10000 finite, strictly increasing edges, "
                                 f"got {list(edges)[:10]}")
        if any(not 0 < q < 1 for q in self.quantiles) or len(self.quantiles) > 100:
            raise ValueError(f"analysis.quantiles: expected at most 100 values strictly between 0 and 1, "
                             f"got {list(self.quantiles)}")
        return self


#: The `training` fields an analysis study uses (its enrolment and its one round); every other
#: training-only setting is refused in an analysis spec rather than silently ignored.
ANALYSIS_TRAINING_FIELDS = frozenset({"min_silos", "expected_silos", "enrollment_timeout_s", "round_timeout_s", "late_join"})
#: Sections an analysis study does not read at all (DP on released figures is each hospital's node.toml [disclosure]).
TRAINING_ONLY_SECTIONS = ("model", "privacy", "aggregation", "compression")


def training_setting_in_analysis(spec: "StudySpec") -> str | None:
    """The first training-only field an analysis spec sets away from its default, as `section.field`, else None.
    (Compared with the defaults, not with what a file named: the spec travels as full JSON.)"""
    for section in (*TRAINING_ONLY_SECTIONS, "training"):
        value = getattr(spec, section)
        default = type(value)()
        for field in type(value).model_fields:
            if section == "training" and field in ANALYSIS_TRAINING_FIELDS:
                continue
            if getattr(value, field) != getattr(default, field):
                return f"{section}.{field}"
    return None


def analysis_study(training: "StudySpec", *, name: str, description: str = "",
                   analysis: AnalysisSpec | None = None) -> "StudySpec":
    """An analysis study of `training`'s cohort and modalities, keeping only the training settings it uses."""
    kept = {f: getattr(training.training, f) for f in ANALYSIS_TRAINING_FIELDS}
    return StudySpec(name=name, description=description, kind=StudyKind.ANALYSIS, modalities=training.modalities,
                     cohort=training.cohort, training=TrainingSpec(**kept), analysis=analysis or AnalysisSpec())


class StudySpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    modalities: tuple[Modality, ...] = ALL_MODALITIES
    cohort: CohortSpec = CohortSpec()
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    privacy: PrivacySpec = PrivacySpec()
    aggregation: AggregationSpec = AggregationSpec()
    compression: CompressionSpec = CompressionSpec()
    # "analysis": one round of federated statistics (the `analysis` section) instead of training
    kind: StudyKind = StudyKind.TRAINING
    analysis: AnalysisSpec = AnalysisSpec()

    @model_validator(mode="after")
    def _bins_name_columns(self) -> "StudySpec":
        unknown = sorted(set(self.analysis.bins) - set(self.analysis_columns))
        if unknown:
            raise ValueError(f"analysis.bins.{unknown[0]}: no such EHR value column or summary of the study's "
                             f"modalities; expected one of {list(self.analysis_columns)}")
        if self.kind is StudyKind.ANALYSIS:
            field = training_setting_in_analysis(self)
            if field is not None:
                section, name = field.split(".")
                uses = (f"of [training] it uses only {', '.join(sorted(ANALYSIS_TRAINING_FIELDS))}"
                        if section == "training" else f"it does not read [{section}] at all")
                raise ValueError(f"{field}: an analysis study (kind = \"analysis\") computes statistics in one round "
                                 f"and would ignore {field} = {getattr(getattr(self, section), name)!r}; {uses}. "
                                 "Remove it, or set kind = \"training\"")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        try:
            return check_study_name(name)
        except ProtocolError as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _consistent(self) -> "StudySpec":
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be a non-empty list without repeats, got {list(self.modalities)}")
        t = self.training
        if t.expected_silos is not None and t.expected_silos < t.min_silos:
            raise ValueError("training.expected_silos must be >= training.min_silos")
        if t.silos_per_round is not None and t.silos_per_round < t.min_silos:
            raise ValueError("training.silos_per_round must be >= training.min_silos (the round quorum)")
        problem = compatibility_error(self)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def protocol(self) -> StudyProtocol:
        """The study's protocol facts (encodings, modes), derived from this spec."""
        return StudyProtocol(self)

    @model_validator(mode="after")
    def _architecture_fits_modalities(self) -> "StudySpec":
        if self.model.architecture != "multimodal" and tuple(self.modalities) != ("ehr",):
            raise ValueError(f"model.architecture {self.model.architecture!r} is for tabular-only studies; set "
                             f"modalities = [\"ehr\"] (got {list(self.modalities)}) or architecture = \"multimodal\"")
        return self

    def update_encoding(self) -> str:
        """The `encoding` header of a silo update in this study."""
        return self.protocol.update_encoding

    @property
    def analysis_columns(self) -> tuple[str, ...]:
        """What an analysis study releases statistics of: the EHR value columns, then the summaries
        (`MODALITY_SUMMARIES`) of the study's modalities."""
        return (*self.cohort.ehr_columns, *(n for n, (m, _) in MODALITY_SUMMARIES.items() if m in self.modalities))

    # -- serialisation -------------------------------------------------------------------
    def to_json(self) -> str:
        """Canonical JSON: sorted keys, so its hash identifies the study's content."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str | bytes) -> "StudySpec":
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise SpecError(f"study spec: {describe_validation_error(e)}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> "StudySpec":
        return validate_toml_file(cls, path, what="study spec")

    # -- what other rooms need -------------------------------------------------------------
    def model_arguments(self) -> dict[str, Any]:
        """Keyword arguments for `pipelines.models.build_model`."""
        m, c = self.model, self.cohort
        return {
            "modalities": tuple(self.modalities),
            "ehr_features": len(c.ehr_columns),
            "image_size": c.image_size,
            "image_dims": c.image_dims,
            "image_depth": c.image_depth,
            "signal_channels": len(c.signal_channels),
            "signal_length": c.signal_length,
            "embed_dim": m.embed_dim,
            "ehr_hidden": m.ehr_hidden,
            "image_channels": tuple(m.image_channels),
            "signal_hidden": m.signal_hidden,
            "signal_encoder": m.signal_encoder,
            "image_encoder": m.image_encoder,
            "fusion": m.fusion,
            "modality_dropout": m.modality_dropout,
            "architecture": m.architecture,
        }


def describe_validation_error(e: ValidationError) -> str:
    """One line per problem: `field.path: reason (got value)`."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        got = err.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}{got_s}")
    return "; ".join(parts)


def load_toml(path: str | Path, *, what: str) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{what} {path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{what} {path}: not valid TOML: {e}") from None


def validate_toml_file(cls: type[BaseModel], path: str | Path, *, what: str) -> Any:
    """Load a TOML file into `cls`, raising SpecError that names the file, field and reason."""
    data = load_toml(path, what=what)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{what} {path}: {describe_validation_error(e)}") from None
