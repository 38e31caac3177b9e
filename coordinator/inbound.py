"""What a silo sends, checked before anything is stored: identifiers and sizes.

Every field that the coordinator stores and writes to its audit log is checked here first,
so that a refused message leaves no state behind (#16 items 4 and 6):

* free text (a silo name, a proposal answer's reason, a round's skip reason) must not look
  like protected health information (:mod:`compliance.phi`, HIPAA Safe Harbor) and has a
  length limit, since every answer is kept in the store and the audit log for good;
* a metrics report carries a bounded number of finite values with short names, since every
  report is kept and served back in ``GetStudyStatus`` (8 MiB per message).

The limits are :class:`InboundLimits`, part of the coordinator's and the regional aggregator's
configuration; each has a ceiling, so a configuration can lower or raise a limit but never
remove it. The refusal names the field and the limit; the service audits it like any refused
message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from compliance.errors import PHIFieldError
from compliance.phi import check_no_phi
from coordinator.api import federation_pb2 as pb
from coordinator.errors import InvalidInput


class InboundLimits(BaseModel):
    """Size limits on what an authenticated silo may have stored (the one place their defaults live).

    The ceilings keep the worst case small: 1,000 metrics of 200-character names from every silo
    for every version still fit ``GetStudyStatus`` for a study of tens of silos and versions, and a
    20,000-character reason is a page of text, not a way to fill the audit log.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name_chars: int = Field(default=200, ge=1, le=1_000, description="characters in a silo name")
    reason_chars: int = Field(default=2_000, ge=1, le=20_000,
                              description="characters in a proposal answer's or a skipped round's reason")
    metrics: int = Field(default=64, ge=1, le=1_000,
                         description="metric values in one report (AUROC, accuracy, loss, ... per silo and version)")
    metric_name_chars: int = Field(default=64, ge=1, le=200, description="characters in one metric's name")


def check_text(field: str, value: str, *, limit: int) -> None:
    """Refuse ``value`` (the message field ``field``) if it is longer than ``limit`` or looks like PHI."""
    if len(value) > limit:
        raise InvalidInput(f"{field}: {len(value):,} characters, the limit is {limit:,}; send a shorter text")
    try:
        check_no_phi({field: value})
    except PHIFieldError as e:
        raise InvalidInput(str(e)) from None


def check_metrics(metrics: Mapping[str, float], limits: InboundLimits) -> None:
    """At most ``limits.metrics`` finite values, each named in at most ``limits.metric_name_chars`` characters."""
    if len(metrics) > limits.metrics:
        raise InvalidInput(f"metrics: {len(metrics):,} values, the limit is {limits.metrics:,}; report the study's "
                           "evaluation metrics only")
    for name, value in metrics.items():
        if len(name) > limits.metric_name_chars:
            raise InvalidInput(f"metrics: a name of {len(name):,} characters, the limit is "
                               f"{limits.metric_name_chars:,}")
        if not math.isfinite(value):
            raise InvalidInput(f"metrics: {name[:limits.metric_name_chars]!r} is {value}, not a finite number")
    try:
        check_no_phi({"metrics": list(metrics)})
    except PHIFieldError as e:
        raise InvalidInput(str(e)) from None


def check_silo_name(silo: str, limits: InboundLimits) -> None:
    """A joining silo's name (from its certificate, or its word in insecure mode)."""
    check_text("silo", silo, limit=limits.name_chars)


def check_answer(answer: pb.ProposalAnswer, limits: InboundLimits) -> None:
    """A proposal answer's free-text reason."""
    check_text("reason", answer.reason, limit=limits.reason_chars)


def check_report(report: pb.MetricsReport, limits: InboundLimits) -> None:
    """A round's metrics report: its skip reason and its metric map."""
    check_text("skip_reason", report.skip_reason, limit=limits.reason_chars)
    check_metrics(report.metrics, limits)
