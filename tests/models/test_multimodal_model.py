"""Shapes, missing modalities and gating of the multimodal model (real torch)."""

from __future__ import annotations

import pytest
import torch

from pipelines.models import MODALITIES, ModelConfigError, ModelInputError, build_model
from pipelines.models.fusion import drop_modalities, masked_softmax

F_, C, L = 6, 3, 32


def make(modalities=MODALITIES, image_size=32, fusion="moe", **kw):
    torch.manual_seed(0)
    return build_model(
        modalities=modalities, ehr_features=F_, image_size=image_size, signal_channels=C,
        signal_length=L, fusion=fusion, **kw,
    )


def batch(b=4, image_size=32, mask=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 3) if mask is None else torch.as_tensor(mask, dtype=torch.float32)
    return (
        torch.randn(b, 2 * F_, generator=g),
        torch.randn(b, 1, image_size, image_size, generator=g),
        torch.randn(b, C, L, generator=g),
        mask,
    )


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("modalities", [MODALITIES, ("ehr",), ("image", "signal"), ("signal", "ehr")])
@pytest.mark.parametrize("fusion", ["moe", "concat"])
def test_output_shapes(image_size, modalities, fusion):
    model = make(modalities, image_size, fusion, embed_dim=8)
    out = model(*batch(5, image_size))
    assert out.logits.shape == (5,)
    assert out.mu.shape == out.logvar.shape == (5, 3, 8)
    assert out.gate.shape == (5, 3)
    assert torch.isfinite(out.logits).all()
    disabled = [i for i, m in enumerate(MODALITIES) if m not in modalities]
    assert (out.gate[:, disabled] == 0).all()
    assert (out.mu[:, disabled] == 0).all()


def test_no_encoder_for_unused_modalities():
    model = make(("ehr", "signal"))
    assert set(model.encoders) == {"ehr", "signal"}
    assert not any(name.startswith("encoders.image") for name, _ in model.named_parameters())


def test_parameter_order_ignores_spec_order():
    a = [n for n, _ in make(("signal", "ehr")).named_parameters()]
    b = [n for n, _ in make(("ehr", "signal")).named_parameters()]
    assert a == b


@pytest.mark.parametrize("fusion", ["moe", "concat"])
@pytest.mark.parametrize("absent", [0, 1, 2])
def test_absent_modality_input_changes_nothing(fusion, absent):
    model = make(fusion=fusion).eval()
    mask = torch.ones(4, 3)
    mask[:, absent] = 0
    ehr, image, signal, _ = batch(4)
    before = model(ehr, image, signal, mask)
    inputs = [ehr.clone(), image.clone(), signal.clone()]
    inputs[absent] = inputs[absent] * 100 + 7
    after = model(*inputs, mask)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.gate, after.gate)
    assert (after.gate[:, absent] == 0).all()


def test_absent_modality_may_hold_nan():
    model = make().eval()
    ehr, image, signal, _ = batch(2)
    image[:] = float("nan")
    out = model(ehr, image, signal, torch.tensor([[1.0, 0, 1], [1, 0, 0]]))
    assert torch.isfinite(out.logits).all()


def test_nan_in_present_modality_is_refused():
    ehr, image, signal, mask = batch(2)
    ehr[0, 0] = float("nan")
    with pytest.raises(ModelInputError, match="ehr input of a present modality"):
        make().eval()(ehr, image, signal, mask)


def test_gate_sums_to_one_over_present_modalities():
    model = make().eval()
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    out = model(*batch(5, mask=mask)[:3], mask)
    assert torch.allclose(out.gate.sum(dim=1), torch.ones(5))
    assert (out.gate[mask == 0] == 0).all()
    assert (out.gate[mask == 1] > 0).all()


def test_sample_with_nothing_present_gets_zero_gate():
    model = make().eval()
    out = model(*batch(2, mask=[[0.0, 0, 0], [1, 0, 0]]))
    assert torch.equal(out.gate[0], torch.zeros(3)) and torch.isfinite(out.logits).all()


def test_eval_is_deterministic_and_training_samples():
    model = make()
    x = batch(3)
    model.eval()
    assert torch.equal(model(*x).logits, model(*x).logits)
    model.train()
    assert not torch.equal(model(*x).logits, model(*x).logits)


def test_modality_dropout_keeps_one_present_modality():
    torch.manual_seed(0)
    present = torch.rand(2000, 3) > 0.3
    kept = drop_modalities(present, 0.9)
    assert not (kept & ~present).any()
    assert (kept.any(dim=1) == present.any(dim=1)).all()
    assert kept.sum() < present.sum()


def test_masked_softmax_exact_zeros():
    w = masked_softmax(torch.tensor([[5.0, -3.0, 100.0]]), torch.tensor([[True, True, False]]))
    assert w[0, 2] == 0 and torch.isclose(w.sum(), torch.tensor(1.0))


def test_wrong_input_shape_names_the_modality():
    ehr, image, signal, mask = batch(2, image_size=64)
    with pytest.raises(ModelInputError, match="image input must have shape"):
        make(image_size=32)(ehr, image, signal, mask)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modalities": ()}, "modalities"),
        ({"modalities": ("ehr", "xray")}, "modalities"),
        ({"image_channels": ()}, "image_channels"),
        ({"fusion": "attention"}, "fusion"),
        ({"modality_dropout": 1.0}, "modality_dropout"),
        ({"embed_dim": 0}, "embed_dim"),
    ],
)
def test_bad_configuration_is_refused(kwargs, match):
    args = dict(modalities=MODALITIES, ehr_features=F_, image_size=32, signal_channels=C, signal_length=L)
    args.update(kwargs)
    with pytest.raises(ModelConfigError, match=match):
        build_model(**args)


@pytest.mark.parametrize("fusion", ["moe", "concat"])
def test_empty_batch(fusion):
    out = make(fusion=fusion)(*batch(0))  # Poisson sampling can draw an empty batch
    assert out.logits.shape == (0,) and out.gate.shape == (0, 3)


def test_modality_dropout_in_training_keeps_gate_normalised():
    model = make(modality_dropout=0.9).train()
    out = model(*batch(64))
    assert torch.allclose(out.gate.sum(dim=1), torch.ones(64))
    assert (out.gate == 0).any()  # some present modalities were dropped
    assert torch.equal(out.present, torch.ones(64, 3))  # the loss still sees every given modality
