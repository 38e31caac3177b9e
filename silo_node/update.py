"""Turn a round's model delta into what goes on the wire, and a model version back into weights.

delta -> (error feedback + codec) -> encode: plaintext tensors, a compressed update (the
study's `compression.codec`, encoding header = codec name, "+zstd"), or CKKS ciphertexts that
only the silos can open. Under CKKS + random-k every silo keeps the same coordinates (chosen
by the round seed) and encrypts only those values, so the coordinator's encrypted sum runs
over the shorter vectors and still adds up coordinate by coordinate.

The inverse: a model version is plaintext weights, a compressed delta over the previous
version ("delta+q8" ...; version r IS version r-1 + the decoded delta, so every silo holds
the coordinator's weights bit for bit), or, under CKKS, the encrypted weighted-average delta
(of the kept coordinates, under random-k) that the silo decrypts and scatters back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from coordinator.api.codecs import CodecError, ErrorFeedback, decode, randk_indices
from coordinator.api.protocol import Codec, ProtocolError, VersionKind, VersionMetadata, check_finite_model
from coordinator.api.study import StudySpec
from coordinator.api.tensors import decode_tensors, encode_tensors
from privacy.he import decrypt_average, encrypt_update

#: Under CKKS: (base weights, decrypted average delta) -> next weights, the study's server step.
ServerStep = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


@dataclass
class EncodedUpdate:
    data: bytes
    encoding: str


def flatten(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays]).astype(np.float32, copy=False)


def unflatten(flat: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    out, offset = [], 0
    for a in like:
        out.append(flat[offset : offset + a.size].reshape(a.shape).astype(np.float32))
        offset += a.size
    if offset != flat.size:
        raise ValueError(f"decrypted aggregate has {flat.size} values; the model has {offset}")
    return out


def build_feedback(spec: StudySpec) -> ErrorFeedback | None:
    """The silo's error-feedback state for a sparsifying codec (top-k, random-k); None otherwise.

    Stochastic quantisers (q8/q4) are unbiased and fp16 loses ~1e-3 relative, so they go
    without; top-k / random-k drop most of the update and need the residual carried over.
    """
    protocol = spec.protocol
    return ErrorFeedback(protocol.uplink_codec()) if protocol.codec.sparse else None


def encode_update(spec: StudySpec, names: list[str], delta: list[np.ndarray], *, secret_context: bytes | None,
                  round_seed: int | None = None, feedback: ErrorFeedback | None = None) -> EncodedUpdate:
    """The update as sent. `round_seed` (the task's) picks random-k coordinates; `feedback` carries
    what a sparse codec did not send into the next round (it is updated in place)."""
    protocol = spec.protocol
    encoding = protocol.update_encoding
    if not protocol.encrypted:
        if protocol.codec is Codec.NONE:
            return EncodedUpdate(encode_tensors(names, delta), encoding)
        coder = feedback if feedback is not None else protocol.uplink_codec()
        return EncodedUpdate(coder.encode(delta, seed=round_seed), encoding)
    if secret_context is None:
        raise ValueError("this study encrypts updates but the silo has no key yet")
    values = flatten(delta)
    if protocol.codec is Codec.RANDK:
        values = _randk_values(spec, delta, round_seed, feedback)
    data = encrypt_update(secret_context, values, mode=protocol.encryption.he_mode, clip=spec.privacy.update_clip)
    return EncodedUpdate(data, encoding)


def _randk_values(spec: StudySpec, delta: list[np.ndarray], seed: int | None, feedback: ErrorFeedback | None) -> np.ndarray:
    """The values at the round's random-k coordinates (after error feedback), ready to encrypt."""
    if seed is None:
        raise CodecError("random-k under CKKS needs the round seed")
    n = sum(a.size for a in delta)
    idx = randk_indices(n, spec.compression.fraction, seed)
    if feedback is None:
        return flatten(delta)[idx]
    data = feedback.encode(delta, seed=seed)
    kept = flatten(feedback.codec.decode(data, max_values=n))[idx].astype(np.float64)
    # Encryption clips to update_clip: what the clip removes stays in the residual, not lost.
    clip = spec.privacy.update_clip
    clipped = np.clip(kept, -clip, clip)
    feedback.residual[idx] += kept - clipped
    return clipped.astype(np.float32)


def resolve_version(data: bytes | bytearray, encoding: str, metadata_json: str, *,
                    base: tuple[list[str], list[np.ndarray]] | None, secret_context: bytes | None,
                    server_step: ServerStep | None = None) -> tuple[list[str], list[np.ndarray]]:
    """Weights of a model version from its blob (and, for a delta, the base version).

    Under CKKS the decrypted average delta goes through `server_step` (the study's server
    optimiser, coordinator.api.server_step; None: base + delta), as at every other silo.
    Whatever the encoding, the weights must be finite float32 (ValueError otherwise)."""
    names, weights = _resolve(data, encoding, metadata_json, base=base, secret_context=secret_context,
                              server_step=server_step)
    try:
        check_finite_model(weights, f"model version ({encoding})")
    except ProtocolError as e:
        raise ValueError(str(e)) from None
    return names, weights


def _resolve(data: bytes | bytearray, encoding: str, metadata_json: str, *,
             base: tuple[list[str], list[np.ndarray]] | None, secret_context: bytes | None,
             server_step: ServerStep | None) -> tuple[list[str], list[np.ndarray]]:
    kind = VersionKind.of(encoding)
    if kind is VersionKind.FULL:
        names, arrays = decode_tensors(data)
        return names, [np.array(a) for a in arrays]
    if base is None:
        raise ValueError(f"model version encoded {encoding!r} needs the base version")
    names, base_arrays = base
    n_values = sum(a.size for a in base_arrays)
    if kind is VersionKind.DELTA:
        delta = decode(data, max_values=n_values, max_arrays=len(base_arrays))
        if [d.shape for d in delta] != [b.shape for b in base_arrays]:
            raise ValueError("compressed model delta does not match the model's layout")
        return names, [np.add(b, d, dtype=np.float32) for b, d in zip(base_arrays, delta)]
    if kind is not VersionKind.ENCRYPTED:
        raise ValueError(f"model version encoded {encoding!r} cannot be resolved over a base version")
    if secret_context is None:
        raise ValueError(f"model version encoded {encoding!r} needs the study key")
    try:
        meta = VersionMetadata.from_json(metadata_json or "{}")
    except ProtocolError as e:
        raise ValueError(str(e)) from None
    if meta.total_weight is None:
        raise ValueError("an encrypted model version's metadata lacks total_weight")
    randk = meta.randk
    kept = n_values if randk is None else randk.kept
    avg = np.asarray(decrypt_average(secret_context, bytes(data), n_values=kept, total_weight=meta.total_weight),
                     dtype=np.float32)
    # A screened robust rule (norm bounding, multi-Krum) divides by its own denominator.
    avg *= np.float32(meta.post_scale if meta.post_scale is not None else 1.0)
    if randk is not None:  # scatter the kept coordinates back; the others did not move this round
        idx = randk_indices(n_values, randk.fraction, randk.seed)
        if idx.size != kept:
            raise ValueError(f"random-k: {kept} decrypted values for {idx.size} coordinates")
        full = np.zeros(n_values, dtype=np.float32)
        full[idx] = avg
        avg = full
    delta = unflatten(avg, base_arrays)
    if server_step is not None:
        return names, [np.asarray(w, dtype=np.float32) for w in server_step(base_arrays, delta)]
    return names, [(b + d).astype(np.float32) for b, d in zip(base_arrays, delta)]
