"""Who is calling: the identity and role bound to each gRPC call.

In secure mode (mutual TLS) the identity is the client certificate's common name and the
role its organizational unit (`silo`, `researcher`, `auditor`), both set by `fedcare pki`;
a silo can only act as itself. In `--insecure` mode (local demos only) the claimed name is
taken at its word, which the server logs loudly at start.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from coordinator.errors import PermissionDenied, StateError
from coordinator.revocation import RevocationError, RevocationList

ROLES = ("silo", "researcher", "auditor")


class Authenticator:
    def __init__(self, *, insecure: bool, ca_cert: Path | None = None, crl: Path | None = None,
                 state_dir: Path | None = None) -> None:
        """`crl`: the study CA's revocation list, checked now (a server that cannot check revocation
        does not start) and re-read when it changes; `state_dir` remembers the newest CRL seen."""
        self.insecure = insecure
        self.crl_path = crl
        self._ca = x509.load_pem_x509_certificate(ca_cert.read_bytes()) if ca_cert else None
        self._crl: RevocationList | None = None
        if crl is not None and not insecure:
            try:
                self._crl = RevocationList(crl, ca=self._ca, state_dir=state_dir)
            except RevocationError as e:
                raise StateError(f"cannot check revocation: {e}") from None

    def _revoked_serials(self) -> frozenset[int]:
        """The CRL's serials; while it is unusable every call is refused (and audited) with the reason."""
        if self._crl is None:
            return frozenset()
        try:
            return self._crl.revoked_serials()
        except RevocationError as e:
            raise PermissionDenied(f"revocation cannot be checked: {e}") from None

    def identity(self, context: grpc.ServicerContext) -> tuple[str, str]:
        """(name, role) from the verified client certificate."""
        auth = context.auth_context()
        pem = (auth.get("x509_pem_cert") or [b""])[0]
        if not pem:
            raise PermissionDenied("no client certificate: this coordinator requires mutual TLS")
        cert = x509.load_pem_x509_certificate(pem)
        if cert.serial_number in self._revoked_serials():
            raise PermissionDenied(f"certificate of {cert.subject.rfc4514_string()} is revoked")
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        if not names or not units or units[0].value not in ROLES:
            raise PermissionDenied("client certificate lacks a fedcare name (CN) or role (OU)")
        return str(names[0].value), str(units[0].value)

    def silo(self, context: grpc.ServicerContext, claimed: str) -> str:
        """The calling silo's name; a silo may only act as itself."""
        if self.insecure:
            if not claimed:
                raise PermissionDenied("the request names no silo")
            return claimed
        name, role = self.identity(context)
        if role != "silo":
            raise PermissionDenied(f"{role} {name!r} may not act as a silo")
        if claimed and claimed != name:
            raise PermissionDenied(f"silo {name!r} may not act as silo {claimed!r}")
        return name

    def require(self, context: grpc.ServicerContext, *roles: str) -> str:
        if self.insecure:
            return "insecure"
        name, role = self.identity(context)
        if role not in roles:
            raise PermissionDenied(f"{role} {name!r} may not call this; it needs the role {' or '.join(roles)}")
        return name
