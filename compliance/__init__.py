"""Compliance: the signed audit log, the privacy ledger, verification, reconciliation, reports.

Imports none of fedcare's other rooms; silos and the coordinator call into it.
"""

from compliance._sqlite import file_problem
from compliance.audit import AuditEntry, AuditLog, Event, read_log
from compliance.errors import (
    AuditFieldError, AuditLogError, ComplianceError, LedgerError, PHIFieldError, ReportError,
    SigningKeyError,
)
from compliance.keys import load_or_create_signing_key, public_key_bytes, public_key_hex
from compliance.ledger import LedgerRow, PrivacyLedger
from compliance.reconcile import Reconciliation, reconcile
from compliance.report import build_report
from compliance.verify import VerifyResult, verify_log, verify_logs
from compliance.witness import SignedHead, WitnessError, witness

__all__ = [
    "AuditEntry", "AuditFieldError", "AuditLog", "AuditLogError", "ComplianceError", "Event",
    "LedgerError", "LedgerRow", "PHIFieldError", "SignedHead", "WitnessError", "file_problem",
    "verify_logs", "witness", "PrivacyLedger", "Reconciliation", "ReportError",
    "SigningKeyError", "VerifyResult", "build_report", "load_or_create_signing_key",
    "public_key_bytes", "public_key_hex", "read_log", "reconcile", "verify_log",
]
