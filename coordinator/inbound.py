"""What a silo sends, checked before anything is stored: identifiers and sizes.

Every field that the coordinator stores and writes to its audit log is checked here first,
so that a refused message leaves no state behind (#16 items 4 and 6):

* free text (a silo name, a proposal answer's reason, a round's skip reason) must not look
  like protected health information (:mod:`compliance.phi`, HIPAA Safe Harbor) and has a
  length limit, since every answer is kept in the store and the audit log for good;
* a metrics report carries at most ``MAX_METRICS`` finite values with short names, since
  every report is kept and served back in ``GetStudyStatus`` (8 MiB per message).

The refusal names the field and the limit; the service audits it like any refused message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from compliance.errors import PHIFieldError
from compliance.phi import check_no_phi
from coordinator.errors import InvalidInput

MAX_NAME_CHARS = 200  # a silo name
MAX_REASON_CHARS = 2000  # a proposal answer's or a skipped round's reason
MAX_METRICS = 64  # metric values in one report (AUROC, accuracy, loss, ... per silo and version)
MAX_METRIC_NAME_CHARS = 64


def check_text(field: str, value: str, *, limit: int = MAX_REASON_CHARS) -> None:
    """Refuse ``value`` (the message field ``field``) if it is too long or looks like PHI."""
    if len(value) > limit:
        raise InvalidInput(f"{field}: {len(value):,} characters, the limit is {limit:,}; send a shorter text")
    try:
        check_no_phi({field: value})
    except PHIFieldError as e:
        raise InvalidInput(str(e)) from None


def check_metrics(metrics: Mapping[str, float]) -> None:
    """At most MAX_METRICS finite values, each named in at most MAX_METRIC_NAME_CHARS characters."""
    if len(metrics) > MAX_METRICS:
        raise InvalidInput(f"metrics: {len(metrics):,} values, the limit is {MAX_METRICS}; report the study's "
                           "evaluation metrics only")
    for name, value in metrics.items():
        if len(name) > MAX_METRIC_NAME_CHARS:
            raise InvalidInput(f"metrics: a name of {len(name):,} characters, the limit is {MAX_METRIC_NAME_CHARS}")
        if not math.isfinite(value):
            raise InvalidInput(f"metrics: {name[:MAX_METRIC_NAME_CHARS]!r} is {value}, not a finite number")
    try:
        check_no_phi({"metrics": list(metrics)})
    except PHIFieldError as e:
        raise InvalidInput(str(e)) from None
