from __future__ import annotations

import math
from pathlib import Path

import pytest

from compliance import LedgerError, PrivacyLedger

MECHANISM = {"delta": 1e-5, "noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 100,
             "accountant": "rdp"}


def test_round_trip_history_and_spent(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with PrivacyLedger(path) as ledger:
        for r, eps in ((1, 0.4), (2, 0.7), (3, 0.9)):
            ledger.record(silo="silo-a", dataset="ehr", study="s1", round=r, epsilon=eps, **MECHANISM)
        ledger.record(silo="silo-a", dataset="ehr", study="s2", round=1, epsilon=0.3, **MECHANISM)
        ledger.record(silo="silo-a", dataset="ecg", study="s2", round=1, epsilon=0.2, **MECHANISM)
    with PrivacyLedger(path) as ledger:  # reopened: it is on disk
        history = ledger.history("ehr")
        assert [(r.study, r.round, r.epsilon) for r in history] == [
            ("s1", 1, 0.4), ("s1", 2, 0.7), ("s1", 3, 0.9), ("s2", 1, 0.3)]
        assert history[0].noise_multiplier == 1.1 and history[0].steps == 100
        assert history[0].accountant == "rdp" and history[0].recorded_at.endswith("Z")
        assert ledger.spent(dataset="ehr", study="s1") == 0.9
        assert math.isclose(ledger.spent(dataset="ehr"), 1.2)  # both studies, sequential composition
        assert ledger.spent(dataset="ecg") == 0.2
        assert ledger.spent(dataset="never-used") == 0.0
        assert len(ledger.rows()) == 5 and len(ledger.rows("s2")) == 2
        assert ledger.rows("s2", silo="silo-b") == []


def test_retry_is_idempotent_but_rewrites_are_refused(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        first = ledger.record(silo="a", dataset="ehr", study="s", round=1, epsilon=0.5, **MECHANISM)
        again = ledger.record(silo="a", dataset="ehr", study="s", round=1, epsilon=0.5, **MECHANISM)
        assert again == first and len(ledger.rows()) == 1
        with pytest.raises(LedgerError, match="already recorded with different values"):
            ledger.record(silo="a", dataset="ehr", study="s", round=1, epsilon=0.1, **MECHANISM)
        ledger.record(silo="a", dataset="ehr", study="s", round=3, epsilon=0.8, **MECHANISM)
        with pytest.raises(LedgerError, match="older than the latest recorded round 3"):
            ledger.record(silo="a", dataset="ehr", study="s", round=2, epsilon=0.9, **MECHANISM)
        with pytest.raises(LedgerError, match="cumulative epsilon 0.2 is lower than 0.8"):
            ledger.record(silo="a", dataset="ehr", study="s", round=4, epsilon=0.2, **MECHANISM)


@pytest.mark.parametrize("bad, message", [
    ({"epsilon": float("inf")}, "epsilon must be finite"),
    ({"epsilon": -1.0}, "epsilon must be finite and >= 0"),
    ({"delta": 1.5}, "delta must be in"),
    ({"sample_rate": 0.0}, "sample_rate must be in"),
    ({"steps": -1}, "steps must be >= 0"),
    ({"accountant": ""}, "accountant must be a non-empty string"),
])
def test_invalid_rows_are_refused(tmp_path: Path, bad: dict, message: str) -> None:
    row = {"silo": "a", "dataset": "ehr", "study": "s", "round": 1, "epsilon": 0.5, **MECHANISM, **bad}
    with PrivacyLedger(tmp_path / "l.db") as ledger, pytest.raises(LedgerError, match=message):
        ledger.record(**row)
