"""The coordinator's exception hierarchy; the gRPC service maps each to a status code."""


class CoordinatorError(Exception):
    """Base of every error the coordinator raises on purpose."""


class NotFound(CoordinatorError):
    """An unknown study, round, silo or model version."""


class Refused(CoordinatorError):
    """A well-formed request that the protocol does not allow now (late, replayed, not a participant)."""


class InvalidInput(CoordinatorError):
    """A malformed message, blob, spec or update."""


class PermissionDenied(CoordinatorError):
    """The caller's identity or role does not allow this call."""


class StateError(CoordinatorError):
    """The coordinator's own state on disk (database, audit log, CRL) is unusable; it refuses to start."""
