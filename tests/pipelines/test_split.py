"""A silo's train / validation / test split (pipelines.dataset.split_silo): disjoint, complete,
reproducible from the study seed and the keyed pseudonyms, stratified when asked."""

from __future__ import annotations

import pytest
import torch

from pipelines.dataset import MultimodalDataset, split_silo
from pipelines.errors import DatasetError


def _dataset(n: int, prevalence: float = 0.2) -> MultimodalDataset:
    label = (torch.arange(n) < round(n * prevalence)).float()
    return MultimodalDataset(ehr=torch.zeros(n, 4), image=torch.zeros(n, 1, 8, 8), signal=torch.zeros(n, 2, 16),
                             mask=torch.ones(n, 3), label=label, pseudonyms=[f"hmac-{i:04d}" for i in range(n)])


@pytest.mark.parametrize("stratify", [False, True])
def test_three_parts_disjoint_complete_and_reproducible(stratify):
    d = _dataset(500)
    parts = split_silo(d, test_fraction=0.25, validation_fraction=0.2, seed=3, stratify=stratify)
    names = [set(p.pseudonyms) for p in parts]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set().union(*names) == set(d.pseudonyms)
    again = split_silo(d, test_fraction=0.25, validation_fraction=0.2, seed=3, stratify=stratify)
    assert [p.pseudonyms for p in parts] == [p.pseudonyms for p in again]
    other = split_silo(d, test_fraction=0.25, validation_fraction=0.2, seed=4, stratify=stratify)
    assert other.test.pseudonyms != parts.test.pseudonyms
    assert 70 < len(parts.validation) < 130 and 90 < len(parts.test) < 160


def test_stratified_parts_keep_the_label_share_exactly():
    d = _dataset(203, prevalence=0.1)  # 20 positives
    train, validation, test = split_silo(d, test_fraction=0.25, validation_fraction=0.2, seed=0, stratify=True)
    assert [int(p.label.sum()) for p in (train, validation, test)] == [11, 4, 5]
    assert len(test) == 5 + round(183 * 0.25) and len(validation) == 4 + round(183 * 0.2)


def test_unstratified_side_depends_only_on_the_patient():
    d = _dataset(400)
    full = split_silo(d, test_fraction=0.25, validation_fraction=0.2, seed=1)
    half = split_silo(d.subset(range(200)), test_fraction=0.25, validation_fraction=0.2, seed=1)
    for whole, part in zip(full, half):
        assert set(part.pseudonyms) == set(whole.pseudonyms) & set(d.pseudonyms[:200])


def test_fractions_that_leave_nobody_to_train_on_are_refused():
    with pytest.raises(DatasetError, match="validation_fraction is 0.8 with test_fraction 0.25"):
        split_silo(_dataset(10), test_fraction=0.25, validation_fraction=0.8, seed=0)
