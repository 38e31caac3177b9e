"""CKKS parameters per mode, chosen for sum-only aggregation (no deep modulus chains).

Aggregation needs ciphertext + ciphertext and ciphertext × plaintext weight, nothing else:
no relinearisation, no rotation, no rescale. So:

- `baseline`: what NVFlare provisions for its TenSEAL filters (N=8192, [60, 40, 40], scale
  2^40, symmetric), kept for the benchmark comparison; weights applied as CKKS scalars.
- `exact`: N=4096, chain [40, 35 | 34]; fresh ciphertexts live on the 75-bit data level
  (the 34-bit prime is SEAL's key-switching prime, never used). Encrypted symmetrically with
  a PRNG seed in place of the second polynomial (silos hold the secret key; the coordinator
  only adds), so a fresh ciphertext costs one polynomial on the wire. One value per real
  slot. The weight is an integer-encoded plaintext (scale 1), so no level is consumed; the
  scale Δ is whatever the 75 bits leave after sign, clip and weight headroom (≥ 2^37).
- `packed`: same chain; values are clipped, quantised to QUANT_BITS unsigned fixed point and
  packed DIGITS_PER_PART per real AND imaginary part of each complex slot, each digit
  DIGIT_BITS wide so the weighted sum of all silos cannot carry into the next digit.

The usable integer range of one slot part was MEASURED (`codec.measure_integer_range`,
tests/privacy/test_he.py): random integers round-trip exactly through
encode → encrypt → decrypt → decode up to 48 bits (2^48) on this chain for scales 2^16..2^24,
and on N=8192 [60, 60, 60] as well: the limit is the encoder's double-precision FFT, not the
modulus. Fresh-encryption noise in a slot part is ≤ ~2^9.1 (measured max 525 at scale 1).

Packed error: quantisation ≤ clip/(2^12-1) per value, plus weight rounding ≤ Σ 0.5·unit·|xᵢ-x̄|/W
(weights are integers of `weight_unit`; the sum holds < 2^12 units). Measured with 1M values
uniform in [-1, 1], 8 silos, unit = total/2^11: max abs error 1.0e-3 (exact: 3.0e-8).

- `screen`: exact mode plus ONE multiplicative level, for encrypted norm/distance screening
  (`privacy.he.screening`). N=8192, chain [60, 60 | 60] (180 bits, within the 218 that
  HE-standard 128-bit security allows at N=8192); fresh ciphertexts at scale Δ = 2^40 on the
  120-bit data level. A square is never rescaled: it lives at scale Δ² = 2^80 on the same
  120 bits, which leaves 2^38 for the squared norm or distance (checked per call:
  4·n·clip² < 2^SCREEN_SQUARE_BITS). The public context carries relinearisation keys and the
  Galois keys for the slot-sum rotations. Sums work as in `exact` (integer weights, no level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Mode = Literal["exact", "packed", "baseline", "screen"]
MODE_CODES: dict[str, int] = {"baseline": 1, "exact": 2, "packed": 3, "screen": 4}


@dataclass(frozen=True)
class ModeParams:
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    weight_bits: int  # precision of a weight relative to the first weight of a sum
    headroom_bits: int  # Σ integer weights < 2^(weight_bits + headroom_bits)

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        """Bits of the modulus fresh ciphertexts live on (the last prime is key-switching only)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def max_weight_units(self) -> int:
        return 2 ** (self.weight_bits + self.headroom_bits)


MODES: dict[str, ModeParams] = {
    "baseline": ModeParams(8192, (60, 40, 40), weight_bits=0, headroom_bits=0),
    "exact": ModeParams(4096, (40, 35, 34), weight_bits=24, headroom_bits=8),
    "packed": ModeParams(4096, (40, 35, 34), weight_bits=6, headroom_bits=6),
    "screen": ModeParams(8192, (60, 60, 60), weight_bits=24, headroom_bits=8),
}
BASELINE_SCALE = 2.0**40

# measured, see module docstring; the packed layout below must fit in it
USABLE_INTEGER_BITS = 48
# packed layout: 12-bit digits with 12 bits of headroom for Σ w_int·u < 2^24
QUANT_BITS = 12
DIGIT_BITS = 24
DIGITS_PER_PART = 2
VALUES_PER_SLOT = 2 * DIGITS_PER_PART  # real and imaginary parts
PACKED_SCALE = 2.0**24  # noise ≤ Σ w_int·2^9.1 < 2^21.1, i.e. < 1/8 of one integer unit
assert DIGITS_PER_PART * DIGIT_BITS <= USABLE_INTEGER_BITS
assert QUANT_BITS + MODES["packed"].weight_bits + MODES["packed"].headroom_bits <= DIGIT_BITS
assert USABLE_INTEGER_BITS + math.log2(PACKED_SCALE) < MODES["packed"].data_bits - 1


SCREEN_SCALE = 2.0**40
# bits left for a squared norm / distance at scale SCREEN_SCALE² below half the data modulus
SCREEN_SQUARE_BITS = MODES["screen"].data_bits - 2 - 2 * int(math.log2(SCREEN_SCALE))
assert SCREEN_SQUARE_BITS >= 30
assert math.log2(SCREEN_SCALE) + MODES["screen"].weight_bits + MODES["screen"].headroom_bits + 24 < MODES["screen"].data_bits


def mode_params(mode: str) -> ModeParams:
    from privacy.errors import HEError

    try:
        return MODES[mode]
    except KeyError:
        raise HEError(f"unknown encryption mode {mode!r}; expected one of {sorted(MODES)}") from None


def exact_scale(clip: float) -> float:
    """Scale Δ for exact mode: |Σ w_int·x|·Δ must stay below half the 75-bit modulus."""
    p = MODES["exact"]
    bits = p.data_bits - 2 - (p.weight_bits + p.headroom_bits) - max(0, math.ceil(math.log2(clip)))
    return 2.0 ** min(bits, 45)
