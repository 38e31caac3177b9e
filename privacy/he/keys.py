"""One CKKS key set per study, generated at a silo.

The secret context goes only to silos (wrapped, see `wrap.py`); the coordinator gets the
public context, which holds the encryption parameters and nothing else: no secret key and,
because aggregation needs no key switching, no relinearisation or Galois keys. The one
exception is `screen` mode, whose public context also carries the relinearisation and Galois
(rotation) keys the coordinator needs to compute encrypted squared norms and distances; these
are evaluation keys, they do not decrypt. Encryption is symmetric (silos share the secret
key), so there is no public key either.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenseal as ts

from privacy.errors import HEError
from privacy.he.params import BASELINE_SCALE, MODES, SCREEN_SCALE, Mode, mode_params

_N_THREADS = 2
_GLOBAL_SCALE = {"baseline": BASELINE_SCALE, "exact": 2.0**30, "packed": 2.0**24, "screen": SCREEN_SCALE}


def _new_context(mode: str) -> ts.Context:
    p = mode_params(mode)
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        p.poly_modulus_degree,
        coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        n_threads=_N_THREADS,
    )
    # the global scale is unused by exact/packed (they set their own) and, being serialised
    # with the context, tells the two apart since they share parameters
    ctx.global_scale = _GLOBAL_SCALE[mode]
    if mode == "screen":  # evaluation keys for the coordinator's square + slot-sum rotations
        if not ctx.has_relin_keys():
            ctx.generate_relin_keys()
        ctx.generate_galois_keys()
    return ctx


def load_context(ctx: bytes | ts.Context, *, what: str = "context") -> ts.Context:
    if isinstance(ctx, ts.Context):
        return ctx
    if not isinstance(ctx, (bytes, bytearray, memoryview)):
        raise HEError(f"{what}: expected serialised TenSEAL context bytes, got {type(ctx).__name__}")
    try:
        return ts.context_from(bytes(ctx), n_threads=_N_THREADS)
    except Exception as e:
        raise HEError(f"{what}: not a serialised TenSEAL context ({e})") from None


def context_mode_check(ctx: ts.Context, mode: str) -> None:
    """Refuse a context whose parameters are not those of `mode`."""
    p = mode_params(mode)
    parms = ctx.seal_context().data.key_context_data().parms()
    got = (parms.poly_modulus_degree(), tuple(m.bit_count() for m in parms.coeff_modulus()))
    if got != (p.poly_modulus_degree, p.coeff_mod_bit_sizes):
        raise HEError(
            f"context has N={got[0]}, primes {list(got[1])} but mode {mode!r} needs "
            f"N={p.poly_modulus_degree}, primes {list(p.coeff_mod_bit_sizes)}; use the study's key set for this mode"
        )


def context_has_secret_key(ctx_bytes: bytes) -> bool:
    return load_context(ctx_bytes).has_secret_key()


@dataclass(frozen=True)
class StudyKeys:
    """A study's CKKS key set (TenSEAL context holding the secret key)."""

    context: ts.Context
    mode: Mode

    @classmethod
    def generate(cls, mode: Mode) -> "StudyKeys":
        if mode not in MODES:
            raise HEError(f"unknown encryption mode {mode!r}; expected one of {sorted(MODES)}")
        return cls(_new_context(mode), mode)

    @classmethod
    def from_secret(cls, data: bytes) -> "StudyKeys":
        ctx = load_context(data, what="secret context")
        if not ctx.has_secret_key():
            raise HEError("secret context holds no secret key; pass StudyKeys.secret_context(), not the public one")
        for mode in MODES:
            try:
                context_mode_check(ctx, mode)
            except HEError:
                continue
            if ctx.global_scale == _GLOBAL_SCALE[mode]:
                return cls(ctx, mode)  # type: ignore[arg-type]
        raise HEError("secret context matches no encryption mode's parameters")

    def public_context(self) -> bytes:
        evaluation = self.mode == "screen"
        return self.context.serialize(save_secret_key=False, save_galois_keys=evaluation, save_relin_keys=evaluation)

    def secret_context(self) -> bytes:
        return self.context.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
