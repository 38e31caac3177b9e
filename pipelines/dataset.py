"""`MultimodalDataset`: the tensors one silo trains on (contract in docs/internals.md).

Each item is the tuple `(ehr[2F], image[1,S,S], signal[C,L], mask[3], label[])`, float32,
in `SAMPLE_FIELDS` order; a 3D study (`cohort.image_dims = 3`) has `image[1,D,S,S]`. A sample
without an image holds zeros there and `mask[1] = 0`: the model masks the modality out, the
zeros are never read as data. EHR values are normalised with fixed clinical reference ranges
(`REFERENCE_RANGES`), the same at every hospital, so that features mean the same thing
across silos; only a feature without a reference falls back to local statistics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .cohort import DEMOGRAPHIC_SYSTEM, MODALITIES, FeatureLike
from .errors import DatasetError

SAMPLE_FIELDS = ("ehr", "image", "signal", "mask", "label")
LOINC = "http://loinc.org"


@dataclass(frozen=True)
class ReferenceRange:
    """Adult reference interval; values map to (x - mid) / half-width, on a log scale if `log`."""

    low: float
    high: float
    log: bool = False

    def normalise(self, x: np.ndarray) -> np.ndarray:
        lo, hi = (np.log(self.low), np.log(self.high)) if self.log else (self.low, self.high)
        x = np.log(np.maximum(x, 1e-6)) if self.log else x
        return (x - (lo + hi) / 2) / ((hi - lo) / 2)


#: (system, code) -> reference interval in the cohort's default units (see study.DEFAULT_FEATURES).
REFERENCE_RANGES: dict[tuple[str, str], ReferenceRange] = {
    (DEMOGRAPHIC_SYSTEM, "age"): ReferenceRange(20, 90),  # a
    (DEMOGRAPHIC_SYSTEM, "sex-female"): ReferenceRange(0, 1),
    (DEMOGRAPHIC_SYSTEM, "sex-male"): ReferenceRange(0, 1),
    (LOINC, "2345-7"): ReferenceRange(70, 100),  # glucose, mg/dL (fasting)
    (LOINC, "4548-4"): ReferenceRange(4.0, 5.6),  # HbA1c, %
    (LOINC, "8480-6"): ReferenceRange(90, 120),  # systolic BP, mm[Hg]
    (LOINC, "8462-4"): ReferenceRange(60, 80),  # diastolic BP, mm[Hg]
    (LOINC, "39156-5"): ReferenceRange(18.5, 25),  # BMI, kg/m2
    (LOINC, "2093-3"): ReferenceRange(125, 200),  # total cholesterol, mg/dL
    (LOINC, "2160-0"): ReferenceRange(0.6, 1.2),  # creatinine, mg/dL
    (LOINC, "33762-6"): ReferenceRange(10, 125, log=True),  # NT-proBNP, pg/mL (skewed: log scale)
}
CLIP = 10.0  # normalised values beyond this are clipped; keeps DP clipping meaningful


def normalise_ehr(raw: np.ndarray, features: Sequence[FeatureLike]) -> np.ndarray:
    """Raw values `[N, F]` (NaN = missing) -> `[N, 2F]`: normalised values (0 if missing), then indicators."""
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, len(features))
    missing = ~np.isfinite(raw)
    out = np.zeros_like(raw)
    for j, f in enumerate(features):
        col, ok = raw[:, j], ~missing[:, j]
        ref = REFERENCE_RANGES.get((f.system, f.code))
        if f.aggregate == "count":
            out[ok, j] = np.log1p(col[ok])
        elif ref is not None:
            out[ok, j] = ref.normalise(col[ok])
        elif ok.any():  # fallback: this silo's own statistics
            out[ok, j] = (col[ok] - col[ok].mean()) / (col[ok].std() or 1.0)
    out = np.clip(out, -CLIP, CLIP)
    return np.concatenate([out, missing.astype(np.float64)], axis=1).astype(np.float32)


class MultimodalDataset(Dataset):
    """Stacked per-sample tensors of one silo, indexed by keyed pseudonyms (never MRNs)."""

    def __init__(self, *, ehr: torch.Tensor, image: torch.Tensor, signal: torch.Tensor, mask: torch.Tensor,
                 label: torch.Tensor, pseudonyms: Sequence[str], feature_names: Sequence[str] = (),
                 signal_channels: Sequence[str] = (), checked: Collection[str] = ()) -> None:
        """`checked`: fields whose values the caller has already checked finite row by row, e.g. fields
        memory-mapped from `pipelines.rowfiles`; they are not read whole again (that would page them all in)."""
        n = len(pseudonyms)
        tensors = {"ehr": ehr, "image": image, "signal": signal, "mask": mask, "label": label}
        ranks = {"ehr": 2, "image": image.dim() if isinstance(image, torch.Tensor) and image.dim() in (4, 5) else 4,
                 "signal": 3, "mask": 2, "label": 1}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.dim() != ranks[name] or t.shape[0] != n:
                got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise DatasetError(f"field {name!r} is {got}; expected float32 with {ranks[name]} dims and {n} rows "
                                   "(one per pseudonym)")
            if name not in checked and not torch.isfinite(t).all():
                raise DatasetError(f"field {name!r} holds NaN or Inf; expected finite values. Check the ingestion step")
        if mask.shape[1] != len(MODALITIES) or (image.shape[1] != 1):
            raise DatasetError(f"mask is {tuple(mask.shape)} and image {tuple(image.shape)}; expected [N, 3] and "
                               "[N, 1, S, S] (or [N, 1, D, S, S] for volumes)")
        if len(set(pseudonyms)) != n:
            raise DatasetError("pseudonyms repeat; expected one sample per patient")
        self.ehr, self.image, self.signal, self.mask, self.label = ehr, image, signal, mask, label
        self.pseudonyms: tuple[str, ...] = tuple(pseudonyms)
        self.feature_names = tuple(feature_names)
        self.signal_channels = tuple(signal_channels)

    def __len__(self) -> int:
        return len(self.pseudonyms)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.ehr[i], self.image[i], self.signal[i], self.mask[i], self.label[i]

    @property
    def labels(self) -> torch.Tensor:
        return self.label

    def modality_counts(self) -> dict[str, int]:
        return {m: int(self.mask[:, k].sum()) for k, m in enumerate(MODALITIES)}

    def subset(self, indices: Sequence[int]) -> "MultimodalDataset":
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return MultimodalDataset(ehr=self.ehr[idx], image=self.image[idx], signal=self.signal[idx], mask=self.mask[idx],
                                 label=self.label[idx], pseudonyms=[self.pseudonyms[i] for i in idx.tolist()],
                                 feature_names=self.feature_names, signal_channels=self.signal_channels)


class SiloSplit(NamedTuple):
    """A silo's patients in three disjoint parts: fit on `train`, choose (threshold, round) on
    `validation`, report on `test`."""

    train: MultimodalDataset
    validation: MultimodalDataset
    test: MultimodalDataset


def _patient_draw(seed: int, pseudonym: str) -> float:
    """A uniform number in [0, 1) fixed by the study seed and the patient's keyed pseudonym.

    Pseudonyms are HMACs under the silo's pseudonym key (pipelines.deid), so the draw depends on
    seed, key and patient, and nobody without the key can tell which side a patient is on.
    """
    return int.from_bytes(hashlib.sha256(f"{seed}:{pseudonym}".encode()).digest()[:8], "big") / 2**64


def split_silo(dataset: MultimodalDataset, *, test_fraction: float, validation_fraction: float, seed: int,
               stratify: bool = False) -> SiloSplit:
    """Train / validation / test split of one silo, reproducible from the study seed and the pseudonym key.

    Unstratified, a patient is in test when its draw u < test_fraction, in validation when
    test_fraction <= u < test_fraction + validation_fraction: the side depends only on the patient
    and the seed, so it stays the same when the silo gains or loses other patients (no leakage as
    data grow), and the shares are close to, not exactly, the fractions. Stratified, patients of
    each label are ranked by their draw and the first round(n·fraction) of each label go to test,
    the next to validation: the label shares are exact (what a small, imbalanced silo needs for a
    usable validation AUROC) at the price of a patient's side moving when others join.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction is {test_fraction}; expected a value strictly between 0 and 1")
    if not 0.0 <= validation_fraction < 1.0 or test_fraction + validation_fraction >= 1.0:
        raise DatasetError(f"validation_fraction is {validation_fraction} with test_fraction {test_fraction}; expected "
                           "validation_fraction >= 0 and the two together below 1, leaving patients to train on")
    draws = [_patient_draw(seed, p) for p in dataset.pseudonyms]
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])  # train, validation, test
    if stratify:
        labels = dataset.label.tolist()
        for value in sorted(set(labels)):
            ranked = sorted((i for i, y in enumerate(labels) if y == value), key=lambda i: draws[i])
            n_test = round(len(ranked) * test_fraction)
            n_val = round(len(ranked) * validation_fraction)
            parts[2].extend(ranked[:n_test])
            parts[1].extend(ranked[n_test:n_test + n_val])
            parts[0].extend(ranked[n_test + n_val:])
    else:
        for i, u in enumerate(draws):
            parts[2 if u < test_fraction else 1 if u < test_fraction + validation_fraction else 0].append(i)
    train, validation, test = (dataset.subset(sorted(part)) for part in parts)
    return SiloSplit(train, validation, test)


def split_train_test(dataset: MultimodalDataset, *, test_fraction: float, seed: int) -> tuple[MultimodalDataset, MultimodalDataset]:
    """`split_silo` without a validation part: a patient is in test when its draw < test_fraction."""
    train, _, test = split_silo(dataset, test_fraction=test_fraction, validation_fraction=0.0, seed=seed)
    return train, test
