"""Shared vs personal weights, FedProx and the gate report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.models import (
    ModelConfigError,
    WeightsMismatchError,
    build_model,
    fedprox_term,
    get_shared_weights,
    mean_gate_weights,
    set_shared_weights,
    shared_parameter_names,
)

ARGS = dict(modalities=("ehr", "image", "signal"), ehr_features=4, image_size=16, signal_channels=2,
            signal_length=16, embed_dim=4, ehr_hidden=8, image_channels=(4,), signal_hidden=4)


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(**{**ARGS, **kw})


def test_personal_layers_are_never_shared():
    model = make()
    names = shared_parameter_names(model, ("head",))
    all_names = [n for n, _ in model.named_parameters()]
    assert names == [n for n in all_names if not n.startswith("head.")]
    assert len(names) < len(all_names)
    weights = get_shared_weights(model, ("head",))
    assert len(weights) == len(names)
    assert all(w.dtype == np.float32 for w in weights)
    shapes = dict(model.named_parameters())
    assert [w.shape for w in weights] == [tuple(shapes[n].shape) for n in names]
    assert shared_parameter_names(model, ()) == all_names


def test_prefix_matches_at_dot_boundary_and_typos_are_refused():
    model = make()
    assert all(not n.startswith("encoders.image.") for n in shared_parameter_names(model, ("encoders.image",)))
    with pytest.raises(ModelConfigError, match="'heads' matches no parameter"):
        shared_parameter_names(model, ("heads",))
    with pytest.raises(ModelConfigError, match="list of prefixes"):
        shared_parameter_names(model, "head")


def test_round_trip_and_personal_layers_stay():
    a, b = make(seed=0), make(seed=1)
    head_before = [p.clone() for p in b.head.parameters()]
    set_shared_weights(b, ("head",), get_shared_weights(a, ("head",)))
    for x, y in zip(get_shared_weights(a, ("head",)), get_shared_weights(b, ("head",))):
        np.testing.assert_array_equal(x, y)
    assert all(torch.equal(p, q) for p, q in zip(b.head.parameters(), head_before))


def test_weights_are_copies():
    model = make()
    weights = get_shared_weights(model, ())
    weights[0][...] = 123.0
    assert not torch.all(next(model.parameters()) == 123.0)


def test_wrong_shape_count_or_values_are_refused_and_model_unchanged():
    model = make()
    good = get_shared_weights(model, ("head",))
    names = shared_parameter_names(model, ("head",))
    bad = [w.copy() for w in good]
    bad[2] = np.zeros((3, 3), np.float32)
    with pytest.raises(WeightsMismatchError, match=f"{names[2]!r} must have shape"):
        set_shared_weights(model, ("head",), bad)
    with pytest.raises(WeightsMismatchError, match="expected .* arrays, got"):
        set_shared_weights(model, ("head",), good[:-1])
    nan = [w.copy() + 1 for w in good]
    nan[-1][...] = np.nan
    with pytest.raises(WeightsMismatchError, match="NaN"):
        set_shared_weights(model, ("head",), nan)
    for x, y in zip(good, get_shared_weights(model, ("head",))):
        np.testing.assert_array_equal(x, y)


def test_fedprox_term():
    model = make()
    names = shared_parameter_names(model, ("head",))
    params = dict(model.named_parameters())
    same = {n: params[n].detach().clone() for n in names}
    assert fedprox_term(model, same, mu=0.5).item() == 0.0
    shifted = {n: t + 1.0 for n, t in same.items()}
    count = sum(t.numel() for t in same.values())
    assert fedprox_term(model, shifted, mu=0.5).item() == pytest.approx(0.25 * count, rel=1e-5)
    with pytest.raises(WeightsMismatchError, match="not a parameter"):
        fedprox_term(model, {"nope": torch.zeros(1)}, mu=1.0)


def test_mean_gate_weights_over_present_samples():
    model = make()
    model.train()
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 1], [1, 0, 0], [1, 1, 0]])
    tensors = (torch.randn(4, 8, generator=g), torch.randn(4, 1, 16, 16, generator=g),
               torch.randn(4, 2, 16, generator=g), mask, torch.zeros(4))
    report = mean_gate_weights(model, tensors)
    assert model.training  # mode restored
    assert set(report) == {"ehr", "image", "signal"}
    model.eval()
    gate = model(*tensors[:4]).gate
    for i, name in enumerate(("ehr", "image", "signal")):
        present = mask[:, i] == 1
        assert report[name] == pytest.approx(gate[present, i].mean().item(), rel=1e-5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors), batch_size=3)
    assert mean_gate_weights(model, loader) == pytest.approx(report, rel=1e-5)
    assert set(mean_gate_weights(make(modalities=("ehr",)), tensors)) == {"ehr"}
