"""2D/3D imaging and CNN/GRU signal encoders: built from the study spec, shapes, masking, Opacus."""

from __future__ import annotations

import warnings

import pytest
import torch
from opacus import PrivacyEngine
from opacus.layers import DPGRU
from opacus.validators import ModuleValidator
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coordinator.api.study import CohortSpec, ModelSpec, StudySpec
from pipelines.models import (
    MODALITIES,
    ModelConfigError,
    ModelInputError,
    build_model,
    multimodal_loss,
)
from pipelines.models.encoders import (
    GRUSignalEncoder,
    ImageEncoder,
    ImageFeatureEncoder,
    SignalEncoder,
    SignalFeatureEncoder,
)

F_, S, D, C, L = 4, 16, 8, 2, 16
# (image_dims, signal_encoder): every encoder variant a study can choose
VARIANTS = [(2, "cnn"), (2, "gru"), (3, "cnn"), (3, "gru")]


def make(image_dims=2, signal_encoder="cnn", *, modality_dropout=0.15, fusion="moe"):
    torch.manual_seed(0)
    return build_model(
        modalities=("ehr", "image", "signal"), ehr_features=F_, image_size=S, image_dims=image_dims, image_depth=D,
        signal_channels=C, signal_length=L, embed_dim=4, ehr_hidden=8, image_channels=(4, 8), signal_hidden=8,
        signal_encoder=signal_encoder, fusion=fusion, modality_dropout=modality_dropout,
    )


def batch(b, image_dims, seed=1):
    g = torch.Generator().manual_seed(seed)
    image_shape = (1, S, S) if image_dims == 2 else (1, D, S, S)
    return (torch.randn(b, 2 * F_, generator=g), torch.randn(b, *image_shape, generator=g),
            torch.randn(b, C, L, generator=g), torch.ones(b, 3))


def test_the_spec_chooses_the_encoders():
    spec = StudySpec(name="x", cohort=CohortSpec(image_size=S, image_dims=3, image_depth=D, signal_length=L),
                     model=ModelSpec(image_encoder="cnn", signal_encoder="gru", embed_dim=4, image_channels=(4, 8), signal_hidden=8))
    model = build_model(**spec.model_arguments())
    assert isinstance(model.encoders["image"], ImageEncoder) and model.encoders["image"].spatial_dims == 3
    assert any(isinstance(m, nn.Conv3d) for m in model.encoders["image"].modules())
    assert isinstance(model.encoders["signal"], GRUSignalEncoder)
    assert any(isinstance(m, DPGRU) for m in model.encoders["signal"].modules())
    cnn = build_model(**StudySpec(name="y", model=ModelSpec(image_encoder="cnn", signal_encoder="cnn")).model_arguments())
    assert cnn.encoders["image"].spatial_dims == 2 and isinstance(cnn.encoders["signal"], SignalEncoder)
    default = build_model(**StudySpec(name="z").model_arguments())  # sized for DP-SGD, which studies run by default
    assert isinstance(default.encoders["image"], ImageFeatureEncoder)
    assert isinstance(default.encoders["signal"], SignalFeatureEncoder)


@pytest.mark.parametrize(("field", "section"), [("image_dims", "cohort"), ("signal_encoder", "model")])
def test_the_spec_refuses_unknown_encoders(field, section):
    bad = {"image_dims": 4, "signal_encoder": "lstm"}[field]
    with pytest.raises(ValidationError, match=field):
        StudySpec.model_validate({"name": "x", section: {field: bad}})
    with pytest.raises(ModelConfigError, match=field):
        build_model(**{**StudySpec(name="x").model_arguments(), field: bad})


@pytest.mark.parametrize(("image_dims", "signal_encoder"), VARIANTS)
def test_shapes_and_backward(image_dims, signal_encoder):
    model = make(image_dims, signal_encoder).train()
    out = model(*batch(3, image_dims))
    assert out.logits.shape == (3,) and out.mu.shape == out.logvar.shape == (3, 3, 4) and out.gate.shape == (3, 3)
    loss, _ = multimodal_loss(out, torch.tensor([0.0, 1, 1]), torch.ones(3, 3), kl_weight=1e-3, consistency_weight=0.1)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the encoders reached by the loss all learn: the image and signal encoders get a gradient
    assert model.encoders["image"].body[0][0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in model.encoders["signal"].parameters())


def test_image_and_signal_encoder_output_shapes():
    torch.manual_seed(0)
    for dims, x in ((2, torch.randn(5, 1, 24, 24)), (3, torch.randn(5, 1, 6, 24, 24))):
        mu, logvar = ImageEncoder((4, 8), 3, spatial_dims=dims)(x)
        assert mu.shape == logvar.shape == (5, 3)
    for encoder in (SignalEncoder(C, 8, 3), GRUSignalEncoder(C, 8, 3)):
        mu, logvar = encoder(torch.randn(5, C, 20))
        assert mu.shape == logvar.shape == (5, 3)
        empty_mu, _ = encoder(torch.randn(0, C, 20))  # an empty Poisson batch
        assert empty_mu.shape == (0, 3)


def test_a_slice_is_refused_by_a_3d_model_with_the_fields_to_check():
    ehr, image, signal, mask = batch(2, image_dims=2)
    with pytest.raises(ModelInputError, match=r"image input must have shape \[2, 1, 8, 16, 16\].*image_dims"):
        make(image_dims=3)(ehr, image, signal, mask)


@pytest.mark.parametrize(("image_dims", "signal_encoder"), VARIANTS)
@pytest.mark.parametrize("absent", [0, 1, 2])
def test_a_missing_modality_changes_nothing_but_the_gate(image_dims, signal_encoder, absent):
    """An absent modality's input cannot reach the output; removing it only re-weights the gate."""
    model = make(image_dims, signal_encoder).eval()
    ehr, image, signal, full = batch(4, image_dims)
    mask = full.clone()
    mask[:, absent] = 0
    before = model(ehr, image, signal, mask)
    inputs = [ehr.clone(), image.clone(), signal.clone()]
    inputs[absent] = inputs[absent] * 100 + 7
    after = model(*inputs, mask)
    assert torch.equal(before.logits, after.logits) and torch.equal(before.gate, after.gate)
    assert (after.gate[:, absent] == 0).all()
    with_it = model(ehr, image, signal, full)
    present = [i for i in range(3) if i != absent]
    # the present modalities' embeddings are the same with or without the absent one ...
    assert torch.equal(with_it.mu[:, present], after.mu[:, present])
    assert torch.equal(with_it.logvar[:, present], after.logvar[:, present])
    # ... so the output is the full-data experts mixed with the new gate: only the gate moved
    experts = {name: model.fusion.experts[name](with_it.mu[:, i]) for i, name in enumerate(MODALITIES)}
    n_present = mask.sum(dim=1, keepdim=True)  # the mixture is scaled by the count of present modalities
    fused = sum(n_present * after.gate[:, i : i + 1] * experts[name] for i, name in enumerate(MODALITIES))
    assert torch.allclose(model.head(fused).squeeze(-1), after.logits, atol=1e-6)
    assert not torch.allclose(after.gate, with_it.gate)


@pytest.mark.parametrize(("image_dims", "signal_encoder"), VARIANTS)
def test_opacus_accepts_every_encoder_variant(image_dims, signal_encoder):
    """The validator passes and Opacus' per-sample gradients equal each sample's own gradient."""
    model = make(image_dims, signal_encoder, modality_dropout=0.0)
    assert ModuleValidator.validate(model, strict=True) == []
    ehr, image, signal, mask = batch(4, image_dims, seed=3)
    label = torch.tensor([0.0, 1, 0, 1])
    loader = DataLoader(TensorDataset(ehr, image, signal, mask, label), batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG advice and hook notices, not relevant in a test
        private, optimizer, _ = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
            poisson_sampling=False,
        )
        torch.manual_seed(5)  # the same reparameterisation noise for the batch and the reference below
        out = private(ehr, image, signal, mask)
        loss, _ = multimodal_loss(out, label, mask, kl_weight=1e-3, consistency_weight=0.1)
        loss.backward()
    per_sample = {n.removeprefix("_module."): p.grad_sample.clone() for n, p in private.named_parameters()}
    reference = make(image_dims, signal_encoder, modality_dropout=0.0).train()
    reference.load_state_dict(private._module.state_dict())
    checked = 0
    for i in range(4):
        reference.zero_grad()
        torch.manual_seed(5)
        out = reference(ehr, image, signal, mask)
        # sample i's loss alone, computed in the same batch: no layer or loss term mixes samples
        per = torch.autograd.grad(
            _sample_loss(out, label, mask, i), [p for _, p in reference.named_parameters()], allow_unused=True)
        for (name, _), g in zip(reference.named_parameters(), per):
            g = torch.zeros_like(per_sample[name][i]) if g is None else g
            # Opacus (loss_reduction="mean") stores each sample's gradient of its own loss
            assert torch.allclose(per_sample[name][i], g, atol=1e-5, rtol=1e-4), (name, i)
        checked += 1
    assert checked == 4 and any(g.abs().sum() > 0 for g in per_sample.values())


def _sample_loss(out, label, mask, i):
    from pipelines.models import MultimodalOutput

    pick = slice(i, i + 1)
    one = MultimodalOutput(out.logits[pick], out.mu[pick], out.logvar[pick], out.gate[pick],
                           None if out.present is None else out.present[pick])
    loss, _ = multimodal_loss(one, label[pick], mask[pick], kl_weight=1e-3, consistency_weight=0.1)
    return loss


def test_plain_gru_is_not_private_which_is_why_dpgru_is_used():
    """Opacus refuses nn.GRU (no per-sample gradients); the GRU encoder must not regress to it."""
    assert ModuleValidator.validate(nn.GRU(4, 4), strict=False) != []
    assert not any(type(m) is nn.GRU for m in make(signal_encoder="gru").modules())
