"""Encrypt an update at a silo, sum encrypted updates at the coordinator, decrypt the average.

Weighted average = Σ wᵢ xᵢ / Σ wᵢ. The coordinator applies the weights (it only has the
public context) and adds each update into a running sum as it arrives, so it holds one
update besides the sum. In `exact` and `packed` modes a weight becomes an integer number of
`weight_unit`s (a power of two set by the first weight to give it `weight_bits` bits, or
given by the caller), and the average divides by the same quantised total: the result is an
exact weighted average with weights rounded to that resolution.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from privacy.errors import InvalidUpdateError, MissingSecretKeyError
from privacy.he import codec, seal_io
from privacy.he.keys import context_mode_check, load_context
from privacy.he.params import PACKED_SCALE, SCREEN_SCALE, VALUES_PER_SLOT, Mode, exact_scale, mode_params

log = logging.getLogger(__name__)


def _values_per_ct(mode: str) -> int:
    return mode_params(mode).slots * (VALUES_PER_SLOT if mode == "packed" else 1)


def _n_cts(mode: str, n_values: int) -> int:
    return -(-n_values // _values_per_ct(mode))


def _secret_key(ctx: ts.Context, what: str):
    try:
        return ctx.secret_key().data
    except ValueError as e:  # tenseal: "the current context is public, it doesn't hold a Secret key"
        raise MissingSecretKeyError(
            f"{what} needs the study's secret context, but this context has no secret key ({e}); "
            "the coordinator can only add, silos encrypt and decrypt"
        ) from None


def encrypt_update(ctx: bytes | ts.Context, values: np.ndarray, *, mode: Mode, clip: float) -> bytes:
    """Clip a flat float vector to [-clip, clip] and encrypt it (silo side, secret context)."""
    ctx = load_context(ctx)
    context_mode_check(ctx, mode)
    x = codec.check_values(values, clip)
    sk = _secret_key(ctx, "encryption (symmetric)")
    per_ct = _values_per_ct(mode)
    chunks = [x[i : i + per_ct] for i in range(0, len(x), per_ct)]
    if mode == "baseline":
        cts = [ts.ckks_vector(ctx, c.tolist()).serialize() for c in chunks]
        scale = ctx.global_scale
    else:
        sc = ctx.seal_context().data
        enc, cod = seal.Encryptor(sc, sk), seal.CKKSEncoder(sc)
        if mode in ("exact", "screen"):
            scale = exact_scale(clip) if mode == "exact" else SCREEN_SCALE
            plain = [c.tolist() for c in chunks]
        else:
            scale = PACKED_SCALE
            plain = [z.tolist() for z in codec.pack(codec.quantise(x, clip), cod.slot_count())]
        cts = []
        for p in plain:
            pt = seal.Plaintext()
            cod.encode(p, scale, pt)
            cts.append(seal_io.save(enc.encrypt_symmetric(pt)))  # seeded: one polynomial on the wire
    head = codec.Header(mode, len(x), len(cts), scale, float(clip))
    return codec.pack_blob(head, cts, is_sum=False)


class EncryptedSum:
    """Σ wᵢ·Enc(xᵢ), accumulated update by update with the public context only."""

    def __init__(self, public_ctx: bytes | ts.Context, n_values: int, mode: Mode, *, weight_unit: float | None = None):
        self.ctx = load_context(public_ctx, what="public context")
        context_mode_check(self.ctx, mode)
        if not (isinstance(n_values, int) and n_values > 0):
            raise InvalidUpdateError(f"n_values must be a positive integer, got {n_values!r}")
        if weight_unit is not None and not (math.isfinite(weight_unit) and weight_unit > 0):
            raise InvalidUpdateError(f"weight_unit must be a finite number > 0, got {weight_unit!r}")
        self.mode, self.n_values, self.n_cts = mode, n_values, _n_cts(mode, n_values)
        self.params = mode_params(mode)
        self._unit = weight_unit
        self._units = 0  # Σ integer weights (exact/packed)
        self._total = 0.0  # Σ float weights (baseline)
        self._n_added = 0
        self._head: codec.Header | None = None
        self._acc: list | None = None
        if mode != "baseline":
            sc = self.ctx.seal_context().data
            self._sc, self._ev, self._cod = sc, seal.Evaluator(sc), seal.CKKSEncoder(sc)

    def _quantise_weight(self, weight: float) -> int:
        if self._unit is None:  # power of two: integral weights below 2^weight_bits stay exact
            self._unit = 2.0 ** (math.floor(math.log2(weight)) - self.params.weight_bits)
        units = round(weight / self._unit)
        if units < 1:
            raise InvalidUpdateError(
                f"weight {weight} is below this sum's weight resolution {self._unit} (set by the first "
                "weight); pass EncryptedSum(weight_unit=expected_total_weight / 2**weight_bits)"
            )
        if self._units + units >= self.params.max_weight_units:
            raise InvalidUpdateError(
                f"total weight {(self._units + units) * self._unit:g} exceeds the {self.mode} mode's headroom "
                f"({self.params.max_weight_units} units of {self._unit:g}); pass a larger weight_unit "
                "(e.g. expected_total_weight / 2**weight_bits)"
            )
        return units

    def add(self, update_bytes: bytes, weight: float) -> None:
        """Add `weight` × the encrypted update. A refused update leaves the sum unchanged.

        A regional aggregator's partial sum (an encrypted sum, see `add_sum`) is accepted too:
        its weights are already applied, so `weight` must be the total weight it holds.
        """
        what = f"update {self._n_added + 1}"
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
            raise InvalidUpdateError(f"{what}: weight must be a finite number > 0, got {weight!r}")
        if codec.is_sum_blob(update_bytes):
            self._add_partial_with_weight(update_bytes, weight)
            return
        head, blobs = codec.unpack_blob(update_bytes, is_sum=False, what=what)
        if head.mode != self.mode or head.n_values != self.n_values or head.n_cts != self.n_cts:
            raise InvalidUpdateError(
                f"{what}: is mode {head.mode!r} with {head.n_values} values in {head.n_cts} ciphertexts, "
                f"this sum expects mode {self.mode!r} with {self.n_values} values in {self.n_cts}"
            )
        if self._head is not None and (head.clip, head.scale) != (self._head.clip, self._head.scale):
            raise InvalidUpdateError(f"{what}: clip {head.clip} differs from the first update's {self._head.clip}")
        if self.mode == "baseline":
            weighted = [self._weighted_baseline(b, i, weight, what) for i, b in enumerate(blobs)]
        else:
            unit_before = self._unit
            try:
                units = self._quantise_weight(weight)
                weighted = [self._weighted_seal(b, i, units, head, what) for i, b in enumerate(blobs)]
            except Exception:
                self._unit = unit_before
                raise
        if self._acc is None:
            self._acc, self._head = weighted, head
        elif self.mode == "baseline":
            for a, w in zip(self._acc, weighted):
                a.add_(w)
        else:
            for a, w in zip(self._acc, weighted):
                self._ev.add_inplace(a, w)
        if self.mode == "baseline":
            self._total += weight
        else:
            self._units += units
        self._n_added += 1

    def _add_partial_with_weight(self, sum_bytes: bytes, weight: float) -> None:
        head, _ = codec.unpack_blob(sum_bytes, is_sum=True, what=f"partial sum {self._n_added + 1}")
        held = head.weight_units * head.weight_unit
        if abs(weight - held) > 0.5 * max(head.weight_unit, 0.0) + 1e-9 * held:
            raise InvalidUpdateError(f"partial sum {self._n_added + 1}: declared weight {weight:g} but it holds "
                                     f"{held:g} ({head.weight_units} units of {head.weight_unit:g})")
        self.add_sum(sum_bytes)

    def add_sum(self, sum_bytes: bytes) -> None:
        """Add a partial encrypted sum (a regional aggregator's `result()`) with all its weights.

        Σ over regions of (Σ over a region's silos) is the flat sum, ciphertext by ciphertext.
        Weight units that differ by a power of two are brought to the finer one by multiplying
        the coarser side by an integer plaintext (no level used), so each aggregator may pick
        its own unit from its first weight. Exact and packed modes only. A refused partial sum
        leaves this sum unchanged.
        """
        what = f"partial sum {self._n_added + 1}"
        if self.mode == "baseline":
            raise InvalidUpdateError("partial sums are not supported in baseline mode; use exact or packed")
        head, blobs = codec.unpack_blob(sum_bytes, is_sum=True, what=what)
        if head.mode != self.mode or head.n_values != self.n_values or head.n_cts != self.n_cts:
            raise InvalidUpdateError(f"{what}: mode {head.mode!r} with {head.n_values} values, this sum expects "
                                     f"mode {self.mode!r} with {self.n_values}")
        if self._head is not None and (head.clip, head.scale) != (self._head.clip, self._head.scale):
            raise InvalidUpdateError(f"{what}: clip/scale differ from the first update's")
        unit = head.weight_unit if self._unit is None else min(self._unit, head.weight_unit)
        incoming_factor = _unit_ratio(head.weight_unit, unit, what)
        own_factor = _unit_ratio(self._unit, unit, what) if self._unit is not None else 1
        units_after = self._units * own_factor + head.weight_units * incoming_factor
        if head.weight_units < 1 or units_after >= self.params.max_weight_units:
            raise InvalidUpdateError(f"{what}: {head.weight_units} weight units of {head.weight_unit:g} do not fit "
                                     "this sum's headroom")
        cts = []
        for i, b in enumerate(blobs):
            ct = seal_io.load_ciphertext(self._sc, bytes(b), what=f"{what}, ciphertext {i}")
            if ct.size() != 2 or ct.parms_id() != self._sc.first_parms_id() or ct.scale != head.scale:
                raise InvalidUpdateError(f"{what}: ciphertext {i} is not at the first level and the header's scale")
            cts.append(self._times_integer(ct, incoming_factor))
        if self._acc is None:
            self._acc, self._head = cts, codec.Header(head.mode, head.n_values, head.n_cts, head.scale, head.clip)
        else:
            self._acc = [self._times_integer(a, own_factor) for a in self._acc]
            for a, c in zip(self._acc, cts):
                self._ev.add_inplace(a, c)
        self._unit = unit
        self._units = units_after
        self._n_added += head.n_added

    def _times_integer(self, ct, factor: int):
        """ct × a positive integer, as an integer plaintext at scale 1 (no level used)."""
        if factor == 1:
            return ct
        pt = seal.Plaintext()
        self._cod.encode(float(factor), ct.parms_id(), 1.0, pt)
        self._ev.multiply_plain_inplace(ct, pt)
        return ct

    @property
    def total_weight(self) -> float:
        """Σ of the (quantised) weights added so far."""
        return self._total if self.mode == "baseline" else self._units * float(self._unit or 0.0)

    def _expected_len(self, i: int) -> int:
        per = _values_per_ct(self.mode)
        return min(per, self.n_values - i * per)

    def _weighted_baseline(self, blob, i: int, weight: float, what: str):
        try:
            v = ts.ckks_vector_from(self.ctx, bytes(blob))
        except Exception as e:
            raise InvalidUpdateError(f"{what}: ciphertext {i} is not a valid CKKS vector ({e})") from None
        if v.size() != self._expected_len(i):
            raise InvalidUpdateError(f"{what}: ciphertext {i} holds {v.size()} values, expected {self._expected_len(i)}")
        return v * weight

    def _weighted_seal(self, blob, i: int, units: int, head: codec.Header, what: str):
        ct = seal_io.load_ciphertext(self._sc, bytes(blob), what=f"{what}, ciphertext {i}")
        if ct.size() != 2 or ct.parms_id() != self._sc.first_parms_id() or ct.scale != head.scale:
            raise InvalidUpdateError(f"{what}: ciphertext {i} is not a fresh ciphertext at the header's scale")
        pt = seal.Plaintext()
        self._cod.encode(float(units), ct.parms_id(), 1.0, pt)  # integer plaintext: no level used
        self._ev.multiply_plain_inplace(ct, pt)
        return ct

    def result(self) -> bytes:
        if self._acc is None or self._head is None:
            raise InvalidUpdateError("no update was added to this encrypted sum")
        if self.mode == "baseline":
            cts = [v.serialize() for v in self._acc]
            units, unit = 1, self._total
        else:
            cts = [seal_io.save(c) for c in self._acc]
            units, unit = self._units, float(self._unit)
        h = self._head
        head = codec.Header(self.mode, self.n_values, len(cts), h.scale, h.clip, units, unit, self._n_added)
        return codec.pack_blob(head, cts, is_sum=True)


def _unit_ratio(coarse: float, fine: float, what: str) -> int:
    """coarse / fine as an exact integer (weight units are powers of two); refuse anything else."""
    ratio = coarse / fine
    if not (math.isfinite(ratio) and ratio >= 1 and ratio == round(ratio) and ratio < 2**40):
        raise InvalidUpdateError(f"{what}: weight unit {coarse:g} is not an integer multiple of {fine:g}; "
                                 "give every aggregator the same weight_unit (or powers of two)")
    return int(round(ratio))


def decrypt_average(secret_ctx: bytes | ts.Context, sum_bytes: bytes, *, n_values: int, total_weight: float) -> np.ndarray:
    """Decrypt an encrypted sum and divide by the total weight (silo side, secret context)."""
    ctx = load_context(secret_ctx, what="secret context")
    sk = _secret_key(ctx, "decryption")
    head, blobs = codec.unpack_blob(sum_bytes, is_sum=True, what="encrypted sum")
    context_mode_check(ctx, head.mode)
    if head.n_values != n_values or head.n_cts != _n_cts(head.mode, n_values):
        raise InvalidUpdateError(f"encrypted sum holds {head.n_values} values in {head.n_cts} ciphertexts, expected {n_values}")
    summed = head.weight_units * head.weight_unit
    tolerance = 0.5 * head.n_added * (head.weight_unit if head.mode != "baseline" else 0.0) + 1e-9 * summed
    if not (math.isfinite(total_weight) and abs(total_weight - summed) <= tolerance):
        raise InvalidUpdateError(
            f"total_weight {total_weight!r} does not match the {head.n_added} weights summed by the coordinator "
            f"({summed:g}); pass the sum of the weights given to EncryptedSum.add"
        )
    if head.mode == "baseline":
        out = []
        for i, b in enumerate(blobs):
            try:
                out.append(np.asarray(ts.ckks_vector_from(ctx, bytes(b)).decrypt()))
            except Exception as e:
                raise InvalidUpdateError(f"encrypted sum: ciphertext {i} cannot be decrypted ({e})") from None
        return (np.concatenate(out)[:n_values] / summed).astype(np.float32)
    sc = ctx.seal_context().data
    dec, cod = seal.Decryptor(sc, sk), seal.CKKSEncoder(sc)
    decoded = []
    for i, b in enumerate(blobs):
        ct = seal_io.load_ciphertext(sc, bytes(b), what=f"encrypted sum, ciphertext {i}")
        pt = seal.Plaintext()
        dec.decrypt(ct, pt)
        decoded.append(np.asarray(cod.decode_complex(pt) if head.mode == "packed" else cod.decode_double(pt)))
    if head.mode in ("exact", "screen"):
        return (np.concatenate(decoded)[:n_values] / head.weight_units).astype(np.float32)
    digit_sums = codec.unpack(decoded, n_values).astype(np.float64)
    step = 2 * head.clip / codec.QMAX
    return (digit_sums / head.weight_units * step - head.clip).astype(np.float32)
