"""What became of one round, typed: stored in `RoundRow.outcome_json`, read by the round's
closing, the version headers, the summary and the release of the best version.

A round goes open -> (screening, under ckks-screen) -> closed (an asynchronous study's round is
its buffer: it closes with training.buffer_size updates); a round reopened after a missed
quorum carries `retries`, and the finalizing round carries `early_stop` and `release`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Downlink(BaseModel):
    """The compressed delta over the previous version that silos fetch instead of the full version."""

    model_config = ConfigDict(extra="forbid")
    encoding: str
    sha256: str
    size: int


class Release(BaseModel):
    """Which version the study releases and why (issue 14 item 4: the best, not the last)."""

    model_config = ConfigDict(extra="forbid")
    version: int
    metric: str
    value: float | None = None
    reason: str


class RoundOutcome(BaseModel):
    model_config = ConfigDict(extra="ignore")

    accepted: list[str] = Field(default_factory=list)
    refused: dict[str, str] = Field(default_factory=dict)
    scaled: dict[str, float] = Field(default_factory=dict)  # screened rules: silos whose update was scaled down
    total_weight: float | None = None  # CKKS: the sum of the accepted weights the silos divide by
    post_scale: float | None = None  # CKKS, screened rules: then multiply by this
    model_sha256: str | None = None
    downlink: Downlink | None = None
    state_sha: str | None = None  # the rule's and server optimiser's state after this round (blob)
    # training.mode = "async" (coordinator/buffer.py): each buffered update's staleness, versions
    # built since the one its silo trained on; stored as it arrives, so a restart resumes the buffer
    staleness: dict[str, int] = Field(default_factory=dict)
    # ... and the silos that skipped this buffer because their privacy budget allows no further
    # local run (MetricsReport.budget_spent): offered no more tasks in this study
    budget_spent: list[str] = Field(default_factory=list)
    # reopening and finishing
    retries: int = 0
    last_failure: str | None = None
    early_stop: str | None = None
    release: Release | None = None
    release_evaluated: bool = False  # CKKS: the key holder reported its metrics of the released version
    # ckks-screen: the encrypted scalars, whose updates they cover, their decryption
    screen_sha: str | None = None
    screen_silos: list[str] | None = None
    screen_values: list[float] | None = None

    @classmethod
    def of(cls, text: str | None) -> "RoundOutcome":
        return cls.model_validate_json(text) if text else cls()

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True, exclude_defaults=True)
