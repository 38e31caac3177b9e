"""Wrapping a study's secret context for each silo (ECIES-style hybrid encryption).

X25519 ECDH with an ephemeral sender key (RFC 7748) → HKDF-SHA256 (RFC 5869) → AES-256-GCM.
The associated data binds the study id (`context`) and both public keys, so a blob cannot be
replayed into another study or re-targeted at another silo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privacy.errors import KeyWrapError

_MAGIC = b"FCW1"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


@dataclass(frozen=True)
class SiloKeyPair:
    """A silo's long-term X25519 identity for receiving wrapped study secrets."""

    private_key: X25519PrivateKey

    @classmethod
    def generate(cls) -> "SiloKeyPair":
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> "SiloKeyPair":
        return cls(X25519PrivateKey.from_private_bytes(data))

    def private_bytes(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def public_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(*_RAW)


def _key(shared: bytes, eph_pub: bytes, recipient_pub: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=b"fedcare-he-wrap|" + context).derive(
        shared
    )


def wrap_secret(secret: bytes, recipient_public: bytes, *, context: bytes) -> bytes:
    """Encrypt `secret` for the holder of `recipient_public`; `context` is the study id."""
    if len(recipient_public) != 32:
        raise KeyWrapError(f"recipient public key must be 32 raw X25519 bytes, got {len(recipient_public)}")
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(*_RAW)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    nonce = os.urandom(12)
    aad = _MAGIC + eph_pub + recipient_public + context
    ct = AESGCM(_key(shared, eph_pub, recipient_public, context)).encrypt(nonce, secret, aad)
    return _MAGIC + eph_pub + nonce + ct


def unwrap_secret(blob: bytes, keypair: SiloKeyPair, *, context: bytes) -> bytes:
    if len(blob) < 4 + 32 + 12 + 16 or blob[:4] != _MAGIC:
        raise KeyWrapError(f"not a wrapped study secret ({len(blob)} bytes, expected the {_MAGIC!r} format)")
    eph_pub, nonce, ct = blob[4:36], blob[36:48], blob[48:]
    me = keypair.public_bytes()
    shared = keypair.private_key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    try:
        return AESGCM(_key(shared, eph_pub, me, context)).decrypt(nonce, ct, _MAGIC + eph_pub + me + context)
    except InvalidTag:
        raise KeyWrapError(
            f"wrapped secret failed authentication for study {context!r}: it was tampered with, "
            "wrapped for another silo, or for another study; ask the key holder to wrap it again"
        ) from None
