"""The console's exception hierarchy: every message says what was wrong and what to do."""

from __future__ import annotations


class ConsoleError(Exception):
    """A console could not start or do what was asked."""


class AccountError(ConsoleError):
    """An account could not be added or its store read."""
