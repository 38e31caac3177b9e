"""The certificate revocation list, read so that revocation fails closed.

A CRL (RFC 5280 §5) is only as good as its freshness: an attacker who can swap the file
for an *older* one, validly signed before their certificate was revoked, un-revokes it.
So the CRL named at start must exist, parse, be signed by the study CA and be current
(its nextUpdate in the future); each new version must not go back (its CRL number,
RFC 5280 §5.2.3, or else its thisUpdate, at least the last one seen, remembered across
restarts in the state directory). While the file is unusable every certificate is refused
with the reason; none is let through unchecked.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

log = logging.getLogger(__name__)

LAST_SEEN_FILE = "crl-last-seen"  # in the state directory: "<crl number> <thisUpdate ISO>"


class RevocationError(Exception):
    """The CRL cannot be used: missing, unreadable, not the CA's, expired, or older than one seen."""


@dataclass(frozen=True)
class Revocations:
    serials: frozenset[int]
    number: int | None
    this_update: dt.datetime
    next_update: dt.datetime | None


class RevocationList:
    """The CRL at `path`, checked against the study CA, re-read whenever the file changes."""

    def __init__(self, path: Path, *, ca: x509.Certificate | None, state_dir: Path | None = None) -> None:
        self.path, self._ca = Path(path), ca
        self._memo = Path(state_dir) / LAST_SEEN_FILE if state_dir is not None else None
        self._stamp: tuple[float, int] | None = (-1.0, -1)  # never read yet
        self._current: Revocations | None = None
        self._problem: str | None = None
        self._last_number, self._last_update = self._remembered()
        self._refresh()  # at start: a CRL that cannot be used stops the server here
        if self._problem:
            raise RevocationError(self._problem)

    def revoked_serials(self) -> frozenset[int]:
        """The revoked serial numbers; RevocationError (with the reason) while the CRL is unusable."""
        self._refresh()
        if self._problem:
            raise RevocationError(f"{self._problem}; every client certificate is refused until a valid CRL is in place")
        assert self._current is not None
        return self._current.serials

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:  # a changed (or vanished) file is read again, once
            self._stamp = stamp
            self._reload(exists=stamp is not None)
        if self._problem is None and self._current is not None and self._current.next_update is not None \
                and self._current.next_update < _now():
            self._problem = (f"CRL {self.path} expired at {self._current.next_update:%Y-%m-%d %H:%M} UTC "
                             "(nextUpdate); issue a fresh one with `fedcare pki revoke` or re-sign it")

    def _reload(self, *, exists: bool) -> None:
        try:
            crl = self._load(exists)
        except RevocationError as e:
            self._problem = str(e)
            log.error("revocation list unusable: %s", self._problem)
            return
        self._current, self._problem = crl, None
        self._last_number = crl.number if crl.number is not None else self._last_number
        self._last_update = max(crl.this_update, self._last_update) if self._last_update else crl.this_update
        self._remember()
        log.info("CRL %s loaded: %d revoked certificates (CRL number %s)", self.path, len(crl.serials), crl.number)

    def _load(self, exists: bool) -> Revocations:
        if not exists:
            raise RevocationError(f"CRL {self.path} not found (check --crl)")
        try:
            crl = x509.load_pem_x509_crl(self.path.read_bytes())
        except (OSError, ValueError) as e:
            raise RevocationError(f"CRL {self.path} is not a readable PEM CRL ({e})") from None
        if self._ca is not None and not crl.is_signature_valid(self._ca.public_key()):  # type: ignore[arg-type]
            raise RevocationError(f"CRL {self.path} is not signed by the study CA")
        try:
            number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            number = None
        this_update, next_update = crl.last_update_utc, crl.next_update_utc
        if next_update is not None and next_update < _now():
            raise RevocationError(f"CRL {self.path} expired at {next_update:%Y-%m-%d %H:%M} UTC (nextUpdate); "
                                  "issue a fresh one with `fedcare pki revoke`")
        if self._last_number is not None and (number is None or number < self._last_number):
            raise RevocationError(f"CRL {self.path} has CRL number {number}, older than number {self._last_number} "
                                  "already seen (an old CRL put back?)")
        if self._last_update is not None and this_update < self._last_update:
            raise RevocationError(f"CRL {self.path} was issued {this_update:%Y-%m-%d %H:%M:%S} UTC, before the one "
                                  f"already seen ({self._last_update:%Y-%m-%d %H:%M:%S} UTC): an old CRL put back?")
        return Revocations(frozenset(r.serial_number for r in crl), number, this_update, next_update)

    def _remembered(self) -> tuple[int | None, dt.datetime | None]:
        if self._memo is None or not self._memo.exists():
            return None, None
        try:
            number, when = self._memo.read_text().split()
            return (None if number == "-" else int(number)), dt.datetime.fromisoformat(when)
        except ValueError:
            raise RevocationError(f"{self._memo} is unreadable; it records the newest CRL seen. Restore it, or "
                                  "delete it only if you are sure the current CRL is the newest") from None

    def _remember(self) -> None:
        if self._memo is None or self._last_update is None:
            return
        tmp = self._memo.with_suffix(".tmp")
        number = "-" if self._last_number is None else str(self._last_number)
        tmp.write_text(f"{number} {self._last_update.isoformat()}\n")
        tmp.replace(self._memo)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
