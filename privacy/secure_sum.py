"""Secure summation by pairwise additive masks (Bonawitz et al. 2017, "Practical Secure Aggregation
for Privacy-Preserving Machine Learning", CCS; the masking round without its dropout recovery).

Every pair of participants (i, j) agrees a seed by X25519 (RFC 7748) between their long-term wrap
keys (privacy.he.wrap.SiloKeyPair) and HKDF-SHA256 (RFC 5869) bound to a context (study, round,
nonce); SHAKE-256 (FIPS 202) expands it into a vector of integers modulo 2**128. Participant i adds
the pair's vector when i < j and subtracts it when i > j, so the masks cancel in the sum over all
participants and the aggregator learns only that sum. Values are integers, or reals in fixed point
(FIXED_POINT_BITS fractional bits), in two's complement modulo 2**128.

Assumptions (docs/threat-model.md): every participant whose key was used must deliver (no dropout
recovery: one missing vector leaves the sum masked); the aggregator relays the partners' public keys
faithfully; one participant's vector stays hidden unless the aggregator colludes with all the others.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privacy.errors import SecureSumError

MODULUS_BITS = 128
MODULUS = 1 << MODULUS_BITS
FIXED_POINT_BITS = 32  # reals: round(x * 2**32); |x| must stay below 2**(127 - 32)
_ELEMENT_BYTES = MODULUS_BITS // 8
_INFO = b"fedcare-secure-sum|"


def to_ring(value: int | float, *, real: bool) -> int:
    """An integer, or a real in fixed point, as an element of Z / 2**128 (two's complement)."""
    if real:
        if not math.isfinite(value):
            raise SecureSumError(f"cannot mask {value!r}: only finite values add up")
        value = round(value * (1 << FIXED_POINT_BITS))
    if abs(value) >= MODULUS >> 1:
        raise SecureSumError(f"value {value!r} is out of the ring's range ±2**127; it would wrap around in the sum")
    return int(value) % MODULUS


def from_ring(element: int, *, real: bool) -> int | float:
    """The signed value of a ring element (an opened sum), a real when it was encoded as one."""
    signed = element - MODULUS if element >= MODULUS >> 1 else element
    return signed / (1 << FIXED_POINT_BITS) if real else signed


def _pair_stream(own: X25519PrivateKey, partner_public: bytes, *, pair: bytes, context: bytes, length: int) -> list[int]:
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=pair, info=_INFO + context).derive(
        own.exchange(X25519PublicKey.from_public_bytes(partner_public)))
    data = hashlib.shake_256(seed).digest(length * _ELEMENT_BYTES)
    return [int.from_bytes(data[k:k + _ELEMENT_BYTES], "big") for k in range(0, len(data), _ELEMENT_BYTES)]


def mask(values: Sequence[int], *, own_name: str, own_key: X25519PrivateKey, partners: Mapping[str, bytes],
         context: bytes) -> list[int]:
    """`values` (ring elements) plus this participant's share of the pairwise masks. `partners`: every
    participant of the sum by name, this one included, with its 32-byte X25519 public key."""
    if own_name not in partners:
        raise SecureSumError(f"{own_name!r} is not among the partners {sorted(partners)[:10]}; the masks would not cancel")
    if len(partners) < 2:
        raise SecureSumError(f"a masked sum needs at least two participants, got {sorted(partners)}; with one, "
                             "the aggregator would read this participant's values")
    own_public = own_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if partners[own_name] != own_public:
        raise SecureSumError(f"the key given for {own_name!r} is not this participant's own public key; "
                             "the aggregator relayed a wrong key, so nothing is sent")
    out = [v % MODULUS for v in values]
    for name, public in sorted(partners.items()):
        if name == own_name:
            continue
        if len(public) != 32:
            raise SecureSumError(f"partner {name!r} has a {len(public)}-byte key; expected a 32-byte X25519 public key")
        first, second = sorted((own_name, name))
        pair = hashlib.sha256(f"{first}\x00{second}".encode()).digest()
        stream = _pair_stream(own_key, public, pair=pair, context=context, length=len(out))
        sign = 1 if own_name < name else -1
        out = [(v + sign * m) % MODULUS for v, m in zip(out, stream)]
    return out


def open_sum(masked: Sequence[Sequence[int]]) -> list[int]:
    """The sum of every participant's masked vector: the masks cancel (all participants, no more, no fewer)."""
    lengths = {len(m) for m in masked}
    if len(lengths) != 1:
        raise SecureSumError(f"masked vectors of different lengths {sorted(lengths)}; they do not add up")
    return [sum(column) % MODULUS for column in zip(*masked)]
