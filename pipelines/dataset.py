"""`MultimodalDataset`: the tensors one silo trains on (contract in docs/internals.md).

Each item is the tuple `(ehr[2F], image[1,S,S], signal[C,L], mask[3], label[])`, float32,
in `SAMPLE_FIELDS` order; a 3D study (`cohort.image_dims = 3`) has `image[1,D,S,S]`. A sample
without an image holds zeros there and `mask[1] = 0`: the model masks the modality out, the
zeros are never read as data. EHR values are normalised by `pipelines.normalise` (reference
ranges, the same at every hospital; statistics of training rows only for features without
one); `ehr_raw` keeps the values before it, so a silo can refit on its training part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from .cohort import MODALITIES
from .errors import DatasetError
from .splits import SplitPart

SAMPLE_FIELDS = ("ehr", "image", "signal", "mask", "label")


class MultimodalDataset(Dataset):
    """Stacked per-sample tensors of one silo, indexed by keyed pseudonyms (never MRNs)."""

    def __init__(self, *, ehr: torch.Tensor, image: torch.Tensor, signal: torch.Tensor, mask: torch.Tensor,
                 label: torch.Tensor, pseudonyms: Sequence[str], feature_names: Sequence[str] = (),
                 signal_channels: Sequence[str] = (), checked: Collection[str] = (),
                 ehr_raw: torch.Tensor | None = None, assigned: Sequence[SplitPart | None] | None = None) -> None:
        """`checked`: fields whose values the caller has already checked finite row by row, e.g. fields
        memory-mapped from `pipelines.rowfiles`; they are not read whole again (that would page them all in).
        `ehr_raw`: [N, C] float64 EHR values before normalisation (NaN = missing), one column per `ehr` value column.
        `assigned`: per sample, the split part its data names (`pipelines.splits`), None where it names none."""
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
        if ehr_raw is not None and (ehr_raw.dim() != 2 or ehr_raw.shape[0] != n or 2 * ehr_raw.shape[1] != ehr.shape[1]):
            raise DatasetError(f"ehr_raw is {tuple(ehr_raw.shape)}; expected [{n}, {ehr.shape[1] // 2}], one raw column per "
                               "normalised EHR value column")
        self.ehr, self.image, self.signal, self.mask, self.label = ehr, image, signal, mask, label
        if assigned is not None and len(assigned) != n:
            raise DatasetError(f"assigned has {len(assigned)} parts; expected one per pseudonym ({n})")
        self.ehr_raw = ehr_raw
        self.assigned: tuple[SplitPart | None, ...] = tuple(assigned) if assigned is not None else (None,) * n
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
                                 feature_names=self.feature_names, signal_channels=self.signal_channels,
                                 ehr_raw=None if self.ehr_raw is None else self.ehr_raw[idx],
                                 assigned=[self.assigned[i] for i in idx.tolist()])

    def with_ehr(self, ehr: torch.Tensor) -> "MultimodalDataset":
        """The same samples with the EHR field replaced (a refitted normalisation, `pipelines.normalise`)."""
        return MultimodalDataset(ehr=ehr, image=self.image, signal=self.signal, mask=self.mask, label=self.label,
                                 pseudonyms=self.pseudonyms, feature_names=self.feature_names,
                                 signal_channels=self.signal_channels, checked=("image", "signal"), ehr_raw=self.ehr_raw,
                                 assigned=self.assigned)


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
               stratify: bool = False, by_column: bool = False) -> SiloSplit:
    """Train / validation / test split of one silo, reproducible from the study seed and the pseudonym key.

    Unstratified, a patient is in test when its draw u < test_fraction, in validation when
    test_fraction <= u < test_fraction + validation_fraction: the side depends only on the patient
    and the seed, so it stays the same when the silo gains or loses other patients (no leakage as
    data grow), and the shares are close to, not exactly, the fractions. Stratified, patients of
    each label are ranked by their draw and the first round(n·fraction) of each label go to test,
    the next to validation: the label shares are exact (what a small, imbalanced silo needs for a
    usable validation AUROC) at the price of a patient's side moving when others join.

    `by_column` (the study's `cohort.split = "column"`): a patient whose data names a part
    (`dataset.assigned`, from a split column or split file, `pipelines.splits`) is put exactly there;
    the others take the hash split above, among themselves. A silo whose data names no part for
    any patient is refused: the study asked for a split the data does not hold.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction is {test_fraction}; expected a value strictly between 0 and 1")
    if not 0.0 <= validation_fraction < 1.0 or test_fraction + validation_fraction >= 1.0:
        raise DatasetError(f"validation_fraction is {validation_fraction} with test_fraction {test_fraction}; expected "
                           "validation_fraction >= 0 and the two together below 1, leaving patients to train on")
    draws = [_patient_draw(seed, p) for p in dataset.pseudonyms]
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])  # train, validation, test
    hashed = list(range(len(dataset)))
    if by_column:
        if len(dataset) and all(a is None for a in dataset.assigned):
            raise DatasetError("the study splits by column (cohort.split = \"column\") but this silo's data names no "
                               "part for any patient; set split_column on a [[data.tables]] entry or split_file in "
                               "[data] of the node config")
        for i, a in enumerate(dataset.assigned):
            if a is not None:
                parts[list(SplitPart).index(a)].append(i)  # SplitPart is in SiloSplit order
        hashed = [i for i, a in enumerate(dataset.assigned) if a is None]
    if stratify:
        labels = dataset.label.tolist()
        for value in sorted({labels[i] for i in hashed}):
            ranked = sorted((i for i in hashed if labels[i] == value), key=lambda i: draws[i])
            n_test = round(len(ranked) * test_fraction)
            n_val = round(len(ranked) * validation_fraction)
            parts[2].extend(ranked[:n_test])
            parts[1].extend(ranked[n_test:n_test + n_val])
            parts[0].extend(ranked[n_test + n_val:])
    else:
        for i in hashed:
            u = draws[i]
            parts[2 if u < test_fraction else 1 if u < test_fraction + validation_fraction else 0].append(i)
    train, validation, test = (dataset.subset(sorted(part)) for part in parts)
    return SiloSplit(train, validation, test)


def split_train_test(dataset: MultimodalDataset, *, test_fraction: float, seed: int) -> tuple[MultimodalDataset, MultimodalDataset]:
    """`split_silo` without a validation part: a patient is in test when its draw < test_fraction."""
    train, _, test = split_silo(dataset, test_fraction=test_fraction, validation_fraction=0.0, seed=seed)
    return train, test
