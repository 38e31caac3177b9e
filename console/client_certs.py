"""Mutual-TLS sign-in to a console: a client certificate issued by `fedcare pki` names the user.

The console is served over TLS asking for (not requiring) a client certificate of the study CA
(`ssl.CERT_OPTIONAL`: users without one still sign in with a password). The TLS handshake verifies
the chain; `PeerCertificateProtocol` hands the verified certificate to the application in the ASGI
TLS extension (`scope["extensions"]["tls"]["client_cert_chain"]`, asgiref's TLS extension), which
uvicorn does not fill itself. `ClientCertificates.identity` then reads the holder's name (CN) and role
(OU, the PKI's roles; only those a console grants sign in) and refuses a certificate on the CA's
revocation list (RFC 5280 CRL, its signature checked against the CA), as the coordinator does.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from uvicorn.protocols.http.h11_impl import H11Protocol

from console.accounts import AccountStore, Role, certificate_sha256
from console.errors import ConsoleError

TLS_EXTENSION = "tls"


class CertificateRefused(ConsoleError):
    """A client certificate that may not sign in; the message says why."""


@dataclass(frozen=True)
class ConsoleTLS:
    """The console's own certificate and key, the study CA whose client certificates sign users in, its CRL."""

    cert: Path
    key: Path
    ca_cert: Path
    crl: Path | None = None

    def uvicorn_options(self) -> dict[str, Any]:
        return {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key), "ssl_ca_certs": str(self.ca_cert),
                "ssl_cert_reqs": ssl.CERT_OPTIONAL, "http": PeerCertificateProtocol}

    def certificates(self) -> "ClientCertificates":
        """The researcher console's sign-in: the study CA's certificates by role."""
        return ClientCertificates(ca_cert=self.ca_cert, crl=self.crl)

    def pinned(self, accounts: AccountStore) -> "PinnedCertificates":
        """The site console's sign-in: certificates pinned to its own accounts."""
        return PinnedCertificates(ca_cert=self.ca_cert, accounts=accounts, crl=self.crl)


class PeerCertificateProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol that puts the TLS peer's verified certificate into each request's scope."""

    def connection_made(self, transport: Any) -> None:  # noqa: ANN401 - asyncio's transport
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            pem = ssl.DER_cert_to_PEM_cert(der)
            inner = self.app

            async def with_certificate(scope: dict, receive: Any, send: Any) -> None:
                scope.setdefault("extensions", {})[TLS_EXTENSION] = {"client_cert_chain": [pem]}
                await inner(scope, receive, send)

            self.app = with_certificate


def peer_certificate(scope: dict) -> str | None:
    """The PEM of the client certificate the TLS handshake verified for this request, if any."""
    chain = scope.get("extensions", {}).get(TLS_EXTENSION, {}).get("client_cert_chain") or []
    return chain[0] if chain else None


def revoked(ca_cert: Path, crl_path: Path | None, serial: int) -> bool:
    """Whether `serial` is on the CA's revocation list (its signature checked against the CA)."""
    if crl_path is None:
        return False
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    try:
        data = crl_path.read_bytes()
        crl = x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_crl(data)
    except (OSError, ValueError) as e:
        raise CertificateRefused(f"revocation cannot be checked ({crl_path}: {e}); fix the CRL file") from None
    if not crl.is_signature_valid(ca.public_key()):
        raise CertificateRefused(f"the CRL {crl_path} is not signed by the CA; revocation cannot be checked")
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


def not_revoked(pem: str, ca_cert: Path, crl: Path | None) -> tuple[x509.Certificate, str]:
    """The handshake-verified certificate and its subject, or CertificateRefused when the CA revoked it."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    subject = cert.subject.rfc4514_string()
    if revoked(ca_cert, crl, cert.serial_number):
        raise CertificateRefused(f"certificate of {subject} is revoked")
    return cert, subject


@dataclass(frozen=True)
class ClientCertificates:
    """Who a verified client certificate names, for a console granting `roles` (the researcher console:
    the study CA's CN is the user, its OU the role)."""

    ca_cert: Path
    crl: Path | None = None
    roles: frozenset[Role] = frozenset({Role.RESEARCHER, Role.AUDITOR})

    def identity(self, pem: str) -> tuple[str, Role]:
        """(user, role) of a handshake-verified certificate, or CertificateRefused saying why not."""
        cert, subject = not_revoked(pem, self.ca_cert, self.crl)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        role = str(units[0].value) if units else ""
        if not names or role not in {r.value for r in self.roles}:
            raise CertificateRefused(f"certificate of {subject} has role {role or 'none'}; this console signs in "
                                     f"{' or '.join(sorted(r.value for r in self.roles))} certificates of the study CA")
        return str(names[0].value), Role(role)


@dataclass(frozen=True)
class PinnedCertificates:
    """The site console's certificate sign-in: the handshake proves the holder has a certificate of the CA
    the hospital names, and the site's own account store decides who that is. Only a certificate pinned to
    an account (`fedcare console add-user --config node.toml USER --certificate FILE`) signs in, as that
    account's user and role: a CA operator outside the hospital (the study's) cannot mint an administrator."""

    ca_cert: Path
    accounts: AccountStore
    crl: Path | None = None

    def identity(self, pem: str) -> tuple[str, Role]:
        _, subject = not_revoked(pem, self.ca_cert, self.crl)
        account = self.accounts.by_certificate(certificate_sha256(pem.encode()))
        if account is None:
            raise CertificateRefused(f"certificate of {subject} is not pinned to an account of this site console; "
                                     "an administrator pins it with `fedcare console add-user --config node.toml "
                                     "USER --certificate FILE`")
        return account.user, account.role


#: What a console asks of its certificate sign-in: `identity(pem) -> (user, role)` or CertificateRefused.
CertificateSignIn = ClientCertificates | PinnedCertificates
