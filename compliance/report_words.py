"""The compliance report's plain words: what each kind of message is, log fields as a reader
reads them (no Python dicts, rounded numbers, short hashes), and the summary paragraph.

A compliance officer reads the report, not an engineer; every sentence here is written for them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compliance.report_data import ReportData

#: What each kind of message a node records (audit field `kind`) carries, in plain words.
MESSAGE_KINDS: dict[str, str] = {
    "update": "the hospital's change to the shared model after training on its own patients; never records. "
              "DP-noised (each patient's influence clipped and hidden under random noise) and, when the study "
              "says so, encrypted so that the coordinator cannot read it",
    "key_bundle": "the study's encryption keys: the public part for the coordinator, the secret part locked "
                  "separately for each participating hospital; no patient data",
    "metrics": "how well the model does on the hospital's held-out patients (AUROC, accuracy, loss) and "
               "patient counts; no records",
    "final_model": "the hospital's copy of the finished shared model, for the coordinator to check it is the "
                   "one all hospitals hold",
    "proposal_answer": "the hospital's yes or no to a proposed study",
    "statistics": "counts, averages and histograms of the hospital's cohort for an analysis study; never records. "
                  "Counts below the hospital's minimum cell count are held back (with a second cell so that no "
                  "total reveals them), and DP-noised when the hospital's node says so",
    "screen_scalars": "a few numbers per round (sizes of and distances between encrypted updates) that let the "
                      "coordinator set aside suspicious updates without reading any",
    "global_model": "the shared model, sent by the coordinator to the hospitals",
}

_HEX = re.compile(r"^[0-9a-f]{32,}$")


def describe_kind(kind: str) -> str:
    return MESSAGE_KINDS.get(kind, "not described in this version of the report")


def plain_value(value: Any) -> str:
    """One log field's value as text: numbers rounded, hashes shortened, collections spelt out."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.2e}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, str):
        return f"{value[:12]}…" if _HEX.match(value) else value
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {plain_value(v)}" for k, v in sorted(value.items())) or "none"
    if isinstance(value, (list, tuple, set)):
        return ", ".join(plain_value(v) for v in value) or "none"
    return str(value)


def plain_fields(fields: Mapping[str, Any], *, skip: tuple[str, ...] = ()) -> str:
    """A log entry's fields as `name: value` pairs in words; fields in `skip` are left out."""
    return "; ".join(f"{k.replace('_', ' ')}: {plain_value(v)}" for k, v in sorted(fields.items()) if k not in skip)


def plain_time(timestamp: str) -> str:
    """`2026-11-30T11:06:38.000123Z` as `2026-11-30 11:06:38`."""
    return timestamp.replace("T", " ").split(".")[0].removesuffix("Z")


def summary_paragraph(r: "ReportData") -> str:
    """The report's first paragraph: what happened and whether it stayed within the rules, in plain words."""
    scope = f"study {r.study}" if r.study else "every study in the logs"
    silos = [s.name for s in r.silos]
    who = f"{len(silos)} hospital{'s' if len(silos) != 1 else ''} ({', '.join(silos)})" if silos else "no hospital"
    parts = [f"This report covers {scope}: {who}"
             + (" and the coordinator." if r.coordinator else "; no coordinator log was supplied.")]
    if r.all_verified:
        parts.append(f"All {len(r.logs)} audit logs are intact: no entry was changed, removed or inserted after "
                     "it was written.")
    else:
        bad = [log.node for log in r.logs if not log.verification.ok]
        parts.append(f"The audit logs of {', '.join(bad)} FAILED verification, so what they say cannot be "
                     "relied on (see Log verification).")
    rounds = f"{len(r.rounds)} training round{'s' if len(r.rounds) != 1 else ''}" if r.rounds else "no training round"
    updates = sum(1 for s in r.silos for m in s.messages if m.kind == "update")
    parts.append(f"Over {rounds}, the hospitals sent {sum(len(s.messages) for s in r.silos)} messages "
                 f"({human_bytes(r.total_bytes).split(' (')[0]}), {updates} of them model updates"
                 + (". None of these kinds of message carries patient records."
                    if all(m.kind in MESSAGE_KINDS for s in r.silos for m in s.messages) else
                    "; some are of a kind this report does not describe (see each hospital's table)."))
    noised = sum(1 for s in r.silos for m in s.messages if m.kind == "update" and m.dp_noised)
    encrypted = sum(1 for s in r.silos for m in s.messages if m.kind == "update" and m.encrypted)
    if updates:
        unknown = sum(1 for s in r.silos for m in s.messages if m.kind == "update" and None in (m.dp_noised, m.encrypted))
        if encrypted == updates:
            parts.append(f"{_share(noised, updates).capitalize()} updates were DP-noised and all were encrypted, so "
                         "the coordinator never saw a single hospital's update in the clear.")
        else:
            parts.append(f"{_share(noised, updates).capitalize()} updates were DP-noised and {_share(encrypted, updates)} "
                         "encrypted (an update that is not encrypted is visible to the coordinator, though DP-noised).")
        if unknown:
            parts.append(f"For {unknown} update{'s' if unknown != 1 else ''} the logs do not say whether "
                         "it was DP-noised or encrypted.")
    budgets = [(s.name, b) for s in r.silos for b in s.budgets]
    if budgets:
        over = [f"{name} ({b.epsilon:.2f} against a cap of {b.cap:g})" for name, b in budgets if b.within_cap is False]
        capped = [b for _, b in budgets if b.cap is not None]
        if over:
            parts.append(f"Privacy budget EXCEEDED at {', '.join(over)}.")
        elif capped and len(capped) == len(budgets):
            parts.append("Every hospital's privacy spend stayed within its cap: "
                         + ", ".join(f"{name} spent ε = {b.epsilon:.2f} of {b.cap:g}" for name, b in budgets) + ".")
        else:
            parts.append("Privacy spent: " + ", ".join(f"{name} ε = {b.epsilon:.2f}" for name, b in budgets)
                         + " (a cap was not recorded for every hospital, so not all can be checked against one).")
    else:
        parts.append("No privacy ledger was supplied, so the privacy budget spent is not reported.")
    parts.append(f"{r.anomaly_count} anomal{'ies were' if r.anomaly_count != 1 else 'y was'} found, listed under "
                 "each hospital." if r.anomaly_count else "No anomalies were found.")
    return " ".join(parts)


def _share(n: int, total: int) -> str:
    return "all" if n == total else f"{n} of {total}"


def human_bytes(n: int) -> str:
    """`1,234,567` bytes as `1.2 MiB (1,234,567 bytes)`."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit} ({n:,} bytes)"
        value /= 1024
    raise AssertionError("unreachable")
