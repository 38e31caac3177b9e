"""Wire format of encrypted updates and sums, and the fixed-point packing of `packed` mode.

An encrypted blob is a header followed by length-prefixed serialised ciphertexts:

    update:  b"FCHU" | ver u8 | mode u8 | n_values u64 | n_cts u32 | scale f64 | clip f64
    sum:     b"FCHS" | (same fields) | weight_units u64 | weight_unit f64 | n_added u32
    then n_cts × (length u32 | ciphertext bytes)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from privacy.errors import InvalidUpdateError
from privacy.he.params import DIGIT_BITS, DIGITS_PER_PART, MODE_CODES, QUANT_BITS, VALUES_PER_SLOT

_VERSION = 1
_BASE = struct.Struct("<4sBBQIdd")
_SUM = struct.Struct("<QdI")
_LEN = struct.Struct("<I")
_MODES_BY_CODE = {v: k for k, v in MODE_CODES.items()}
MAX_CIPHERTEXT_BYTES = 64 << 20


@dataclass(frozen=True)
class Header:
    mode: str
    n_values: int
    n_cts: int
    scale: float
    clip: float
    # sums only
    weight_units: int = 0
    weight_unit: float = 0.0
    n_added: int = 0


def pack_blob(h: Header, cts: list[bytes], *, is_sum: bool) -> bytes:
    parts = [_BASE.pack(b"FCHS" if is_sum else b"FCHU", _VERSION, MODE_CODES[h.mode], h.n_values, len(cts), h.scale, h.clip)]
    if is_sum:
        parts.append(_SUM.pack(h.weight_units, h.weight_unit, h.n_added))
    for c in cts:
        parts += [_LEN.pack(len(c)), c]
    return b"".join(parts)


def is_sum_blob(data: bytes | bytearray | memoryview) -> bool:
    """Whether a blob is an encrypted sum (a regional aggregator's partial sum), not a fresh update."""
    return bytes(memoryview(data)[:4]) == b"FCHS"


def unpack_blob(data: bytes, *, is_sum: bool, what: str) -> tuple[Header, list[memoryview]]:
    """Parse and bounds-check a blob; ciphertexts are returned as views, not copies."""
    magic = b"FCHS" if is_sum else b"FCHU"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidUpdateError(f"{what}: expected bytes, got {type(data).__name__}")
    mv = memoryview(data)
    if len(mv) < _BASE.size or bytes(mv[:4]) != magic:
        kind = "encrypted sum" if is_sum else "encrypted update"
        raise InvalidUpdateError(f"{what}: not an {kind} (expected the {magic!r} header, got {bytes(mv[:4])!r})")
    _, ver, code, n_values, n_cts, scale, clip = _BASE.unpack_from(mv)
    if ver != _VERSION or code not in _MODES_BY_CODE:
        raise InvalidUpdateError(f"{what}: unsupported version {ver} or mode code {code}")
    off = _BASE.size
    extra = (0, 0.0, 0)
    if is_sum:
        if len(mv) < off + _SUM.size:
            raise InvalidUpdateError(f"{what}: truncated header")
        extra = _SUM.unpack_from(mv, off)
        off += _SUM.size
    cts = []
    for i in range(n_cts):
        if off + _LEN.size > len(mv):
            raise InvalidUpdateError(f"{what}: truncated after {i} of {n_cts} ciphertexts")
        (n,) = _LEN.unpack_from(mv, off)
        off += _LEN.size
        if n > MAX_CIPHERTEXT_BYTES or off + n > len(mv):
            raise InvalidUpdateError(f"{what}: ciphertext {i} claims {n} bytes, {len(mv) - off} left")
        cts.append(mv[off : off + n])
        off += n
    if off != len(mv):
        raise InvalidUpdateError(f"{what}: {len(mv) - off} unexpected trailing bytes")
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(clip) and clip > 0):
        raise InvalidUpdateError(f"{what}: header has invalid scale {scale} or clip {clip}")
    return Header(_MODES_BY_CODE[code], n_values, n_cts, scale, clip, *extra), cts


def check_values(values: np.ndarray, clip: float) -> np.ndarray:
    """A flat finite float vector, as float64; refuses NaN/Inf with the first bad index."""
    if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise InvalidUpdateError(f"clip must be a finite number > 0, got {clip!r}")
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.floating):
        raise InvalidUpdateError(f"update must be a non-empty flat float vector, got dtype {arr.dtype}, shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidUpdateError(f"update has {int(bad.sum())} NaN/Inf values (first at index {i}: {arr[i]}); refusing to encrypt")
    return np.clip(arr.astype(np.float64), -clip, clip)


# -- packed mode: fixed point, DIGITS_PER_PART digits per real and imaginary part -------------
QMAX = 2**QUANT_BITS - 1


def quantise(x: np.ndarray, clip: float) -> np.ndarray:
    """[-clip, clip] → unsigned integers 0..QMAX (round to nearest)."""
    return np.rint((x + clip) * (QMAX / (2 * clip))).astype(np.int64)


def pack(u: np.ndarray, slots: int) -> list[np.ndarray]:
    """Unsigned digits → one complex vector of `slots` entries per ciphertext."""
    per_ct = slots * VALUES_PER_SLOT
    n_cts = -(-len(u) // per_ct)
    buf = np.zeros(n_cts * per_ct, dtype=np.int64)
    buf[: len(u)] = u
    d = buf.reshape(n_cts, VALUES_PER_SLOT, slots)
    shift = [2 ** (DIGIT_BITS * j) for j in range(DIGITS_PER_PART)]
    re = sum(d[:, j] * shift[j] for j in range(DIGITS_PER_PART))
    im = sum(d[:, DIGITS_PER_PART + j] * shift[j] for j in range(DIGITS_PER_PART))
    return [r.astype(np.float64) + 1j * i.astype(np.float64) for r, i in zip(re, im)]


def unpack(decoded: list[np.ndarray], n_values: int) -> np.ndarray:
    """Decoded complex vectors of weighted digit sums → the flat vector of digit sums."""
    mask = (1 << DIGIT_BITS) - 1
    out = []
    for z in decoded:
        parts = []
        for part in (np.rint(z.real).astype(np.int64), np.rint(z.imag).astype(np.int64)):
            if (part < 0).any():
                raise InvalidUpdateError("decrypted packed sum has negative slots: wrong key or corrupted sum")
            parts += [(part >> (DIGIT_BITS * j)) & mask for j in range(DIGITS_PER_PART)]
        out.append(np.concatenate(parts))
    return np.concatenate(out)[:n_values]


def measure_integer_range(context, *, scale: float, trials: int = 2, seed: int = 0) -> int:
    """Largest b such that random integers in [0, 2^b) in both parts of every slot survive
    encode → encrypt → decrypt → decode exactly (TenSEAL context with a secret key)."""
    import tenseal.sealapi as seal

    sc = context.seal_context().data
    sk = context.secret_key().data
    enc, dec, cod = seal.Encryptor(sc, sk), seal.Decryptor(sc, sk), seal.CKKSEncoder(sc)
    rng = np.random.default_rng(seed)
    best = 0
    for b in range(16, 63):
        for _ in range(trials):
            v = rng.integers(0, 2**b, size=(2, cod.slot_count()), dtype=np.int64).astype(np.float64)
            pt, ct, out = seal.Plaintext(), seal.Ciphertext(), seal.Plaintext()
            try:
                cod.encode((v[0] + 1j * v[1]).tolist(), scale, pt)
            except Exception:  # scale × value out of the modulus: past the range
                return best
            enc.encrypt_symmetric(pt, ct)
            dec.decrypt(ct, out)
            z = np.asarray(cod.decode_complex(out))
            if not (np.array_equal(np.rint(z.real), v[0]) and np.array_equal(np.rint(z.imag), v[1])):
                return best
        best = b
    return best
