"""CKKS (TenSEAL) encrypted aggregation: per-study keys, secret wrapping, encrypt/sum/decrypt.

Collusion assumption: every silo holds the study's secret key, so the coordinator must not
collude with any silo; a silo can decrypt another silo's update if it obtains it, so updates
travel only to the coordinator (mutual TLS).
"""

from privacy.he.aggregate import EncryptedSum, decrypt_average, encrypt_update
from privacy.he.keys import StudyKeys, context_has_secret_key
from privacy.he.params import Mode
from privacy.he.wrap import SiloKeyPair, unwrap_secret, wrap_secret

__all__ = [
    "EncryptedSum",
    "Mode",
    "SiloKeyPair",
    "StudyKeys",
    "context_has_secret_key",
    "decrypt_average",
    "encrypt_update",
    "unwrap_secret",
    "wrap_secret",
]
