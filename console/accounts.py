"""The console's local account store: users, roles and scrypt-hashed passwords.

For sites without a PKI in the browser. Passwords are hashed with scrypt (RFC 7914) at
N=2**15, r=8, p=1 (32 MiB per hash: Percival's interactive-login setting, below OWASP's
2**17 so that a sign-in stays quick on a loaded 2-core node) with a 16-byte random salt;
verification compares in constant time, and an unknown user costs the same work.
The store is one JSON file written 0600, atomically.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from compliance.keys import write_secret_file
from console.errors import AccountError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MIN_PASSWORD_LENGTH = 12
ACCOUNTS_FILE = "console-accounts.json"


class Role(StrEnum):
    """The PKI's roles (fedcare pki), as the consoles grant them."""

    RESEARCHER = "researcher"
    AUDITOR = "auditor"
    SITE_ADMIN = "site-admin"


class Account(BaseModel):
    user: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role
    salt: str  # hex
    scrypt: str  # hex, 32 bytes
    # SHA-256 of the DER certificate that may sign this user in (site console, mutual TLS): the site decides
    # who its administrators are, not whichever CA issued their certificates.
    certificate_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=128 * SCRYPT_N * SCRYPT_R * 2, dklen=32)


class AccountStore:
    """Accounts in ``path`` (JSON: {user: Account})."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict[str, Account]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {u: Account.model_validate(a) for u, a in raw.items()}
        except (OSError, ValueError) as e:
            raise AccountError(f"{self.path} is not a readable console account store ({e}); restore it from "
                               "backup or move it away and add the users again") from None

    def add(self, user: str, password: str, role: Role | str, *, certificate_pem: bytes | None = None) -> Account:
        """Add ``user`` (or replace their password and role); ``certificate_pem`` pins the certificate that may
        also sign them in over mutual TLS (a site console served with --tls-cert)."""
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AccountError(f"the password for {user!r} has {len(password)} characters; use at least "
                               f"{MIN_PASSWORD_LENGTH}")
        try:
            role = Role(role)
        except ValueError:
            raise AccountError(f"role {role!r} is not a console role; use one of "
                               f"{', '.join(r.value for r in Role)}") from None
        salt = secrets.token_bytes(16)
        try:
            account = Account(user=user, role=role, salt=salt.hex(), scrypt=_hash(password, salt).hex(),
                              certificate_sha256=None if certificate_pem is None else certificate_sha256(certificate_pem))
        except ValueError:
            raise AccountError(f"user name {user!r} is not allowed; use 1-64 letters, digits or . _ @ -") from None
        accounts = self._load()
        accounts[user] = account
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_secret_file(self.path, json.dumps({u: a.model_dump(mode="json") for u, a in accounts.items()},
                                                indent=2).encode())
        return account

    def check(self, user: str, password: str) -> Account | None:
        """The account when ``password`` is right, else None (same work either way)."""
        account = self._load().get(user)
        salt = bytes.fromhex(account.salt) if account else os.urandom(16)
        digest = _hash(password, salt)
        if account is None or not hmac.compare_digest(digest, bytes.fromhex(account.scrypt)):
            return None
        return account

    def users(self) -> list[Account]:
        return list(self._load().values())

    def by_certificate(self, fingerprint: str) -> Account | None:
        """The account whose pinned certificate has this SHA-256, if any."""
        return next((a for a in self._load().values()
                     if a.certificate_sha256 and hmac.compare_digest(a.certificate_sha256, fingerprint)), None)


def certificate_sha256(pem: bytes) -> str:
    """SHA-256 of a PEM certificate's DER encoding (the fingerprint browsers and openssl show)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise AccountError("the certificate to pin is not a PEM X.509 certificate; give the user's .pem file "
                           "(from `fedcare pki` or the hospital's own CA)") from None
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
