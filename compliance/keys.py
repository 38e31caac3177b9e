"""Node signing keys: one Ed25519 key per silo or coordinator signs its audit log.

The private key is a PKCS#8 PEM file readable by its owner only (mode 0600), like an SSH
key; a key file that group or others can read is refused rather than silently trusted.
The public key is exchanged out of band (printed at ``fedcare silo init``) so that a
compliance officer can verify a log against the key the hospital registered, not only
against the key the log's own header names.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from compliance.errors import SigningKeyError

log = logging.getLogger(__name__)

KEY_FILE_MODE = 0o600


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Return the Ed25519 key stored at ``path``, creating it (mode 0600) if there is none.

    Creation is atomic: the key is written to a private temporary file and linked into
    place, so two processes starting at once end up sharing one key.
    """
    path = Path(path)
    if not path.exists():
        _create(path)
    return _load(path)


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of the public half of ``key`` (RFC 8032 encoding)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public half of ``key`` as 64 lowercase hex digits, for configs and reports."""
    return public_key_bytes(key).hex()


def write_secret_file(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """Write a secret (a key, a residual, a study's wrapped keys) readable by its owner only.

    The file is created 0600 (never world-readable, not even for an instant), written and
    fsynced under a private temporary name, then moved into place, so a reader sees the old
    file or the new one, never a part. With ``replace=False`` an existing file wins (two
    processes creating the same key at once end up sharing one); returns whether ``data``
    was written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # fails if another process created the file first: use theirs
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)


def _create(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    if write_secret_file(path, pem, replace=False):
        log.info("created node signing key %s", path)


def _load(path: Path) -> Ed25519PrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SigningKeyError(
            f"signing key {path} has mode {mode:04o}: group or others can read it. "
            f"Run `chmod 600 {path}` (and check who copied it) before starting the node."
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"signing key {path} is not an unencrypted PEM private key ({exc}). "
            "Restore it from backup, or move it away to create a new key (a new key "
            "must be re-registered with the coordinator)."
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"signing key {path} holds a {type(key).__name__}, expected an Ed25519 key."
        )
    return key
