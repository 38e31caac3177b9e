"""Turn a round's model delta into what goes on the wire, and a model version back into weights.

delta -> (clip) -> encode: plaintext tensors, or CKKS ciphertexts that only the silos can
open. The inverse: a model version is either plaintext weights or, under CKKS, the
encrypted weighted-average delta over the previous version, which the silo decrypts with
the study's secret key and applies to the version it already holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from coordinator.api.study import StudySpec
from coordinator.api.tensors import decode_tensors, encode_tensors
from privacy.he import decrypt_average, encrypt_update


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


def encode_update(spec: StudySpec, names: list[str], delta: list[np.ndarray], *, secret_context: bytes | None) -> EncodedUpdate:
    if spec.privacy.encryption == "none":
        return EncodedUpdate(encode_tensors(names, delta), "tensors")
    if secret_context is None:
        raise ValueError("this study encrypts updates but the silo has no key yet")
    mode = spec.privacy.encryption.removeprefix("ckks-")
    data = encrypt_update(secret_context, flatten(delta), mode=mode, clip=spec.privacy.update_clip)
    return EncodedUpdate(data, spec.privacy.encryption)


def resolve_version(data: bytes, encoding: str, metadata_json: str, *, base: tuple[list[str], list[np.ndarray]] | None,
                    secret_context: bytes | None) -> tuple[list[str], list[np.ndarray]]:
    """Weights of a model version from its blob (and, for an encrypted delta, the base version)."""
    if encoding == "tensors":
        names, arrays = decode_tensors(data)
        return names, [np.array(a) for a in arrays]
    if base is None or secret_context is None:
        raise ValueError(f"model version encoded {encoding!r} needs the base version and the study key")
    meta = json.loads(metadata_json or "{}")
    names, base_arrays = base
    n_values = sum(a.size for a in base_arrays)
    avg = decrypt_average(secret_context, data, n_values=n_values, total_weight=float(meta["total_weight"]))
    delta = unflatten(np.asarray(avg, dtype=np.float32), base_arrays)
    return names, [(b + d).astype(np.float32) for b, d in zip(base_arrays, delta)]
