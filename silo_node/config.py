"""The node config hospital IT writes: `node.toml`, validated before anything runs.

    name = "st-mary"
    coordinator = "coordinator.example.org:50051"
    state_dir = "/var/lib/fedcare"

    [data]
    dataset = "st-mary-2026"           # the privacy budget is kept per dataset
    fhir = ["/data/fhir"]
    tabular = ["/data/warehouse"]      # CSV / Parquet extracts, generic or OMOP CDM
    dicom = ["/data/dicom"]
    wearables = ["/data/wearables"]

    [[data.tables]]                     # a table as it comes (pipelines.ehr.table_source;
    path = "/data/heart"                # examples/tabular-node.toml is a full one)
    extensions = [".data"]

    [data.limits]                       # what one input may make ingestion allocate (pipelines.limits)
    max_pixel_bytes = 1073741824        # a DICOM instance's declared pixels; bigger ones are never decoded

    [wearables]                         # device exports (pipelines/wearables/mapping.py, docs/wearables.md)
    channels = { "HF" = "heart_rate" }              # a native channel name -> the study channel it fills
    devices = [{ pattern = "garmin/*.fit", device = "garmin_fit" }]

    [privacy]
    epsilon_cap = 10.0                  # across all studies on this dataset
    delta = 1e-5

    [approval]
    mode = "manual"                     # or "auto" with the limits below
    allowed_modalities = ["ehr", "image", "signal"]
    max_epsilon = 8.0

    [disclosure]                        # analysis studies: what a released statistic may show
    min_cell_count = 10                 # smaller counts suppressed (with complementary cells)
    dp = "gaussian"                     # or "laplace", "none"; epsilon/delta per analysis, charged to the ledger
    epsilon = 1.0

    [tls]                               # omit only with insecure = true (local demos)
    ca_cert = "ca.pem"
    cert = "st-mary.pem"
    key = "st-mary.key"

    [attack]                            # TESTING/BENCHMARKING ONLY: makes this node malicious
    kind = "sign_flip"                  # see silo_node.attacks.ATTACKS
    params = { scale = 4.0 }
    benign_runs = 1                     # ALIE/IPM: honest local runs to estimate the benign spread
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coordinator.api.protocol import DisclosureMechanism
from coordinator.api.study import ALL_MODALITIES, Modality, SpecError, validate_toml_file
from pipelines.ehr.fhir_fields import FhirValidation
from pipelines.ehr.table_source import TableSource
from pipelines.limits import IngestLimits
from pipelines.parallel import Workers
from pipelines.wearables.mapping import WearableMapping
from silo_node.streams.settings import StreamsConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    dataset: str = Field(min_length=1)
    fhir: list[Path] = []
    dicom: list[Path] = []
    dicomweb: list[str] = []
    wearables: list[Path] = []
    tabular: list[Path] = []
    tables: list[TableSource] = []  # the hospital's own tables, described column by column ([[data.tables]])
    fhir_mrn_system: str | None = None  # identifier.system of the MRN for Patients with no identifier typed MR
    # what of each FHIR resource is validated: "used-fields" (the elements read) or "full" (fhir.resources)
    fhir_validation: FhirValidation = FhirValidation.USED_FIELDS
    split_file: Path | None = None  # CSV mrn,split: each patient's part for studies with cohort.split = "column"
    limits: IngestLimits = IngestLimits()  # what one input may make ingestion allocate ([data.limits])
    workers: Workers = Workers()  # who parses the inputs ([data.workers]: processes, default every core; ray_address)

    @model_validator(mode="after")
    def _some_data(self) -> "DataConfig":
        if not (self.fhir or self.dicom or self.dicomweb or self.wearables or self.tabular or self.tables):
            raise ValueError("name at least one data source (fhir, tabular, tables, dicom, dicomweb or wearables)")
        return self


class BudgetConfig(_Strict):
    epsilon_cap: float = Field(default=10.0, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)


class ApprovalConfig(_Strict):
    mode: Literal["manual", "auto"] = "manual"
    allowed_modalities: list[Modality] = list(ALL_MODALITIES)
    max_epsilon: float | None = Field(default=None, gt=0)
    require_dp: bool = True
    require_encryption: bool = False
    max_rounds: int | None = Field(default=None, ge=1)


class DisclosureConfig(_Strict):
    """What this hospital lets an analysis study release (privacy.disclosure): counts of 1 to
    min_cell_count - 1 patients are suppressed, with complementary suppression; with dp = "gaussian"
    (or "laplace", pure ε-DP) every released statistic is noised so that one analysis spends at most
    (epsilon, delta), charged to the privacy ledger on this dataset under the node's epsilon_cap."""

    min_cell_count: int = Field(default=10, ge=1)
    dp: DisclosureMechanism = DisclosureMechanism.NONE
    epsilon: float = Field(default=1.0, gt=0)  # per analysis study, with dp = "gaussian"
    delta: float = Field(default=1e-6, gt=0, lt=1)
    per_silo: bool = True  # the coordinator may show this silo's own column next to the pooled figures


class TLSConfig(_Strict):
    ca_cert: Path
    cert: Path
    key: Path


class AttackConfig(_Strict):
    """A malicious behaviour for robustness tests and benchmarks; never set it on a real node."""

    kind: str
    params: dict[str, float | int | None] = {}
    benign_runs: int = Field(default=1, ge=1, le=20)

    @model_validator(mode="after")
    def _buildable(self) -> "AttackConfig":
        from silo_node.attacks import AttackError, build_attack

        try:
            build_attack(self.kind, **self.params)
        except AttackError as e:
            raise ValueError(str(e)) from None
        return self

    def build(self):
        from silo_node.attacks import build_attack

        return build_attack(self.kind, **self.params)


class NodeConfig(_Strict):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    coordinator: str = Field(min_length=3)
    state_dir: Path
    insecure: bool = False
    data: DataConfig
    privacy: BudgetConfig = BudgetConfig()
    approval: ApprovalConfig = ApprovalConfig()
    disclosure: DisclosureConfig = DisclosureConfig()  # analysis studies: what may be released
    wearables: WearableMapping = WearableMapping()  # [wearables]: channel names and devices of wearable files
    streams: StreamsConfig | None = None  # [streams]: live wearable data (silo_node.streams, docs/streams.md)
    tls: TLSConfig | None = None
    poll_wait_s: float = Field(default=20.0, gt=0, le=60)
    max_retries: int = Field(default=8, ge=0)  # quick retries of a failed call before the coordinator counts as away
    # Give up (exit) when the coordinator stays away this long; None: wait and reconnect for as long as it takes.
    max_retry_s: float | None = Field(default=None, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    attack: AttackConfig | None = None  # testing/benchmarking only, logged loudly when set
    # Testing/benchmarking only (benchmarks/stragglers.py): sleep this long after each local run, a slower hospital.
    train_delay_s: float = Field(default=0.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _tls_or_insecure(self) -> "NodeConfig":
        if not self.insecure and self.tls is None:
            raise ValueError("set [tls] ca_cert/cert/key, or insecure = true for a local demo")
        return self

    @classmethod
    def load(cls, path: str | Path) -> "NodeConfig":
        config: NodeConfig = validate_toml_file(cls, path, what="node config")
        base = Path(path).resolve().parent
        return config.resolved(base)

    def resolved(self, base: Path) -> "NodeConfig":
        """Relative paths in the file are relative to the file, not to the working directory."""

        def r(p: Path) -> Path:
            return p if p.is_absolute() else (base / p)

        data = self.data.model_copy(update={k: [r(p) for p in getattr(self.data, k)] for k in ("fhir", "dicom", "wearables", "tabular")}
                                    | {"tables": [t.resolved(base) for t in self.data.tables]}
                                    | {"split_file": None if self.data.split_file is None else r(self.data.split_file)})
        tls = None if self.tls is None else TLSConfig(ca_cert=r(self.tls.ca_cert), cert=r(self.tls.cert), key=r(self.tls.key))
        streams = None if self.streams is None else self.streams.resolved(base)
        return self.model_copy(update={"state_dir": r(self.state_dir), "data": data, "tls": tls, "streams": streams})


__all__ = ["NodeConfig", "SpecError"]
