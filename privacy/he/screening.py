"""Encrypted screening: squared norms and pairwise squared distances of CKKS-encrypted updates.

The coordinator holds only the public context, so it cannot look at an update to decide
whether to bound its norm (Sun 2019) or whether multi-Krum keeps it (Blanchard 2017). Both
rules need nothing but ||x_i||² and ||x_i - x_j||². In `screen` mode (see `params.py`) the
coordinator computes them under encryption:

    ||x||² :  Σ_c (ct_c)²                 (square each ciphertext, add, relinearise once)
    ||a-b||²: Σ_c (ct_a,c - ct_b,c)²
    then a rotate-and-add ladder (log2(N/2) = 12 rotations with the Galois keys) puts the total
    of all slots into every slot,

and sends each resulting one-scalar ciphertext to a silo, which decrypts it with the study's
secret key (`decrypt_scalar`) and returns one rounded float. Nothing else is decrypted outside
a silo; the updates and their sum stay encrypted as before.

WHAT THE SCALARS REVEAL, exactly: for each update i of the round, its squared L2 norm
||x_i||² (after the silo's L-inf clip), and for multi-Krum every pairwise squared distance
||x_i - x_j||²; equivalently (polarisation) every inner product <x_i, x_j>, i.e. the Gram
matrix of the round's updates. From the Gram matrix one learns the updates' lengths and the
angles between them, and nothing about any single coordinate: any rotation of all updates
together gives the same scalars. The decrypting silo learns the same scalars (it could
decrypt any update anyway: every silo holds the key). Norm bounding alone needs the n norms.

What we do to keep it at that: the slot-sum ladder makes every slot hold the total, so a
decryption shows no partial sums; the decrypting silo returns only slot 0, rounded to
SCALAR_BITS significant bits, never the raw decryption (a raw CKKS decryption handed back to the
party that made the ciphertext leaks noise that can reveal the secret key; Li & Micciancio
2021, "On the Security of Homomorphic Encryption on Approximate Numbers").

LIMITATION: the scalars are those of whatever the ciphertext encodes. An honest silo clips to
the study's L-inf bound before encrypting; a malicious silo that crafts its own ciphertext can
encode values beyond the clip, and a squared norm beyond 2^SCREEN_SQUARE_BITS wraps around the
modulus and can decrypt as a small number. Closing that needs zero-knowledge range proofs on
the ciphertexts (e.g. RoFL, Lycklama 2023), which we do not have.

Precision: inputs at scale 2^40, squares at 2^80 on a 120-bit modulus (no rescale), so the
decrypted scalar's relative error is ~1e-9 (measured in tests/privacy/test_screening.py:
< 1e-6 relative + 1e-6 absolute, asserted).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from privacy.errors import InvalidUpdateError, MissingSecretKeyError
from privacy.he import codec, seal_io
from privacy.he.keys import context_mode_check, load_context
from privacy.he.params import SCREEN_SCALE, SCREEN_SQUARE_BITS

SCALAR_BITS = 32  # significant bits of a returned scalar
_MAGIC = b"FCHQ"
_HEAD = struct.Struct("<4sBdQ")  # magic, version, scale of the inputs, n_values
_VERSION = 1


def _check_screenable(head: codec.Header, what: str) -> None:
    if head.mode != "screen":
        raise InvalidUpdateError(f"{what}: is a {head.mode!r}-mode update; encrypted screening needs mode 'screen' "
                                 "(study privacy.encryption = 'ckks-screen')")
    if head.scale != SCREEN_SCALE:
        raise InvalidUpdateError(f"{what}: scale {head.scale} is not the screen mode's {SCREEN_SCALE}")
    # the square of a difference of two clipped vectors is at most n * (2 clip)^2
    if math.log2(head.n_values) + 2 * math.log2(2 * head.clip) >= SCREEN_SQUARE_BITS:
        raise InvalidUpdateError(
            f"{what}: {head.n_values} values clipped at {head.clip} could give a squared distance above "
            f"2^{SCREEN_SQUARE_BITS}, which would wrap around the modulus; lower privacy.update_clip"
        )


@dataclass
class Screener:
    """Coordinator side: loads the public context and each update once, then computes scalars.

    `add(update_bytes)` registers an update and returns its index; `sq_norm(i)` and
    `sq_distance(i, j)` return a serialised one-scalar ciphertext for a silo to decrypt.
    """

    public_ctx: bytes | ts.Context
    _cts: list[list] = field(default_factory=list, init=False)
    _head: codec.Header | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        ctx = load_context(self.public_ctx, what="public context")
        context_mode_check(ctx, "screen")
        if not (ctx.has_relin_keys() and ctx.has_galois_keys()):
            raise InvalidUpdateError("the public context has no relinearisation/Galois keys; it must come from "
                                     "StudyKeys.generate('screen').public_context()")
        self.ctx = ctx
        sc = ctx.seal_context().data
        self._sc, self._ev = sc, seal.Evaluator(sc)
        self._relin, self._galois = ctx.relin_keys().data, ctx.galois_keys().data
        self._slots = seal.CKKSEncoder(sc).slot_count()

    def add(self, update_bytes: bytes) -> int:
        i = len(self._cts)
        what = f"update {i}"
        head, blobs = codec.unpack_blob(update_bytes, is_sum=False, what=what)
        _check_screenable(head, what)
        if self._head is not None and (head.n_values, head.n_cts, head.clip) != (
                self._head.n_values, self._head.n_cts, self._head.clip):
            raise InvalidUpdateError(f"{what}: {head.n_values} values clipped at {head.clip}, update 0 has "
                                     f"{self._head.n_values} clipped at {self._head.clip}")
        cts = []
        for k, b in enumerate(blobs):
            ct = seal_io.load_ciphertext(self._sc, bytes(b), what=f"{what}, ciphertext {k}")
            if ct.size() != 2 or ct.parms_id() != self._sc.first_parms_id() or ct.scale != head.scale:
                raise InvalidUpdateError(f"{what}: ciphertext {k} is not a fresh ciphertext at the header's scale")
            cts.append(ct)
        self._head = self._head or head
        self._cts.append(cts)
        return i

    def __len__(self) -> int:
        return len(self._cts)

    def sq_norm(self, i: int) -> bytes:
        return self._sum_of_squares([self._square(c) for c in self._cts[i]])

    def sq_distance(self, i: int, j: int) -> bytes:
        diffs = []
        for a, b in zip(self._cts[i], self._cts[j]):
            d = seal.Ciphertext()
            self._ev.sub(a, b, d)
            diffs.append(d)
        return self._sum_of_squares([self._square(d) for d in diffs])

    def _square(self, c) -> "seal.Ciphertext":
        out = seal.Ciphertext()
        self._ev.square(c, out)
        return out

    def _sum_of_squares(self, squares: list) -> bytes:
        acc = squares[0]
        for s in squares[1:]:
            self._ev.add_inplace(acc, s)  # size-3 ciphertexts add fine; relinearise once
        self._ev.relinearize_inplace(acc, self._relin)
        step = 1
        rotated = seal.Ciphertext()
        while step < self._slots:  # after the ladder every slot holds the sum of all slots
            self._ev.rotate_vector(acc, step, self._galois, rotated)
            self._ev.add_inplace(acc, rotated)
            step *= 2
        assert self._head is not None
        return _HEAD.pack(_MAGIC, _VERSION, self._head.scale, self._head.n_values) + seal_io.save(acc)


def encrypted_sq_norm(public_ctx: bytes | ts.Context, update_bytes: bytes) -> bytes:
    """Enc(||x||²) of one encrypted update (coordinator side, public context)."""
    s = Screener(public_ctx)
    return s.sq_norm(s.add(update_bytes))


def encrypted_sq_distance(public_ctx: bytes | ts.Context, a: bytes, b: bytes) -> bytes:
    """Enc(||a - b||²) of two encrypted updates of the same round (coordinator side)."""
    s = Screener(public_ctx)
    return s.sq_distance(s.add(a), s.add(b))


def decrypt_scalar(secret_ctx: bytes | ts.Context, scalar_bytes: bytes) -> float:
    """Silo side: decrypt one screening scalar; returns slot 0 rounded to SCALAR_BITS bits, >= 0."""
    ctx = load_context(secret_ctx, what="secret context")
    try:
        sk = ctx.secret_key().data
    except ValueError as e:
        raise MissingSecretKeyError(f"decrypting a screening scalar needs the study's secret context ({e})") from None
    context_mode_check(ctx, "screen")
    if not isinstance(scalar_bytes, (bytes, bytearray)) or len(scalar_bytes) < _HEAD.size:
        raise InvalidUpdateError("screening scalar: too short to hold its header")
    magic, ver, scale, _ = _HEAD.unpack_from(scalar_bytes)
    if magic != _MAGIC or ver != _VERSION or scale != SCREEN_SCALE:
        raise InvalidUpdateError(f"screening scalar: bad header (magic {magic!r}, version {ver}, scale {scale})")
    sc = ctx.seal_context().data
    ct = seal_io.load_ciphertext(sc, bytes(scalar_bytes[_HEAD.size:]), what="screening scalar")
    if ct.size() != 2 or ct.scale != scale * scale:
        raise InvalidUpdateError("screening scalar: not a relinearised square at the expected scale")
    pt = seal.Plaintext()
    seal.Decryptor(sc, sk).decrypt(ct, pt)
    value = float(np.asarray(seal.CKKSEncoder(sc).decode_double(pt))[0])
    return _round_bits(max(value, 0.0), SCALAR_BITS)


def _round_bits(x: float, bits: int) -> float:
    if x == 0.0 or not math.isfinite(x):
        return x
    m, e = math.frexp(x)
    return math.ldexp(round(m * 2**bits) / 2**bits, e)
