"""SEAL objects ↔ bytes. TenSEAL's sealapi saves and loads only through file paths, so we go
through a private temporary directory (in RAM, /dev/shm, where there is one)."""

from __future__ import annotations

import os
import tempfile
import threading

import tenseal.sealapi as seal

from privacy.errors import InvalidUpdateError

_dir: str | None = None
_lock = threading.Lock()


def _path() -> str:
    global _dir
    with _lock:
        if _dir is None:
            base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            _dir = tempfile.mkdtemp(prefix="fedcare-he-", dir=base)
    return os.path.join(_dir, f"{os.getpid()}-{threading.get_ident()}.bin")


def save(obj) -> bytes:
    """Serialise a SEAL Ciphertext or SerializableCiphertext (seeded, compressed)."""
    p = _path()
    try:
        obj.save(p)
        with open(p, "rb") as f:
            return f.read()
    finally:
        if os.path.exists(p):
            os.remove(p)


def load_ciphertext(context, data: bytes, *, what: str) -> "seal.Ciphertext":
    """Load and validate a ciphertext against `context` (SEAL checks parameters and ranges)."""
    p = _path()
    try:
        with open(p, "wb") as f:
            f.write(data)
        ct = seal.Ciphertext()
        try:
            ct.load(context, p)
        except Exception as e:  # SEAL raises several types for corrupt or foreign data
            raise InvalidUpdateError(f"{what}: not a valid ciphertext for this study's context ({e})") from None
        return ct
    finally:
        if os.path.exists(p):
            os.remove(p)
