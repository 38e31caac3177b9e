"""What did the model rely on: mean fusion gate weight per modality."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from .errors import ModelInputError
from .fusion import MODALITIES
from .weights import unwrap


def _batches(loader_or_tensors: Iterable | Sequence[Tensor]) -> Iterable[Sequence[Tensor]]:
    if isinstance(loader_or_tensors, (tuple, list)) and loader_or_tensors and isinstance(loader_or_tensors[0], Tensor):
        return [loader_or_tensors]  # one batch given as tensors
    return loader_or_tensors


@torch.no_grad()
def mean_gate_weights(model: nn.Module, loader_or_tensors: Iterable | Sequence[Tensor]) -> dict[str, float]:
    """Mean gate weight per modality the model encodes, over the samples where it is present.

    Accepts a data loader of `(ehr, image, signal, mask[, label])` batches or one such tuple.
    Runs in eval mode (no sampling, no modality dropout) and restores the previous mode. A
    modality present in no sample reports 0.0.
    """
    module = unwrap(model)
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    sums = torch.zeros(len(MODALITIES), dtype=torch.float64)
    counts = torch.zeros(len(MODALITIES), dtype=torch.float64)
    try:
        for batch in _batches(loader_or_tensors):
            if len(batch) < 4:
                raise ModelInputError(f"a batch must be (ehr, image, signal, mask[, label]), got {len(batch)} tensors")
            # batches come from a CPU data loader; the model may be on a GPU (the node's `device`)
            ehr, image, signal, mask = (x.to(device) for x in batch[:4])
            gate = module(ehr, image, signal, mask).gate.double().cpu()
            present = (mask > 0.5).double().cpu()
            sums += (gate * present).sum(dim=0)
            counts += present.sum(dim=0)
    finally:
        module.train(was_training)
    names = getattr(module, "modalities", MODALITIES)
    return {
        name: float(sums[i] / counts[i]) if counts[i] > 0 else 0.0
        for i, name in enumerate(MODALITIES)
        if name in names
    }
