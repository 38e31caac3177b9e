"""One exception hierarchy for the privacy room (DP and homomorphic encryption).

Every message says what was found, what was expected and what the caller can do.
"""

from __future__ import annotations


class PrivacyError(Exception):
    """Base class of every error raised by `privacy`."""


class DPError(PrivacyError):
    """Differential-privacy set-up or accounting could not be done as asked."""


class BudgetExceededError(DPError):
    """A round would spend more privacy budget than the silo's cap allows."""


class HEError(PrivacyError):
    """Homomorphic-encryption keys, ciphertexts or parameters are unusable."""


class InvalidUpdateError(HEError, ValueError):
    """An update or encrypted blob is malformed: wrong size, count, mode, NaN/Inf, bad header."""


class MissingSecretKeyError(HEError):
    """Decryption was asked of a context that holds no secret key (e.g. the coordinator's)."""


class KeyWrapError(HEError):
    """A wrapped secret could not be unwrapped: tampered blob, wrong recipient or wrong study."""


class SecureSumError(PrivacyError):
    """Pairwise masks cannot be agreed or applied (a missing or malformed partner key, too few partners)."""
