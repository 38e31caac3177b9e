"""The compliance room's exceptions: one hierarchy, messages that say what to do."""


class ComplianceError(Exception):
    """Base class of every error raised by :mod:`compliance`."""


class AuditLogError(ComplianceError):
    """The audit log cannot be opened or appended to (wrong node, wrong key, not a log)."""


class PHIFieldError(AuditLogError, ValueError):
    """An audit event carried a field that looks like protected health information."""


class AuditFieldError(AuditLogError, ValueError):
    """An audit event name or field value cannot be recorded (unknown event, not JSON)."""


class SigningKeyError(ComplianceError):
    """A node signing key file is unreadable, of the wrong type, or too widely readable."""


class LedgerError(ComplianceError, ValueError):
    """A privacy-ledger row is invalid or contradicts what the ledger already holds."""


class ReportError(ComplianceError):
    """A compliance report cannot be built (no logs, renderer missing)."""
