"""The typed study protocol: encodings, compatibility rules at the spec, the key-free update
checks, the name rule, the wire models, and the server step every side runs the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coordinator.api.protocol import (
    KeyBundle,
    ProtocolError,
    StudyProtocol,
    UpdateMetadata,
    VersionKind,
    check_study_id,
    check_update_header,
    decode_plain_update,
    decode_screening_scalars,
    encode_screening_scalars,
    study_id_for,
)
from coordinator.api.server_step import build_server_optimizer
from coordinator.api.study import SpecError, StudySpec
from coordinator.api.tensors import TensorSpec, encode_tensors

LAYOUT = [TensorSpec("w", (2, 3)), TensorSpec("b", (3,))]


def _spec(**sections) -> StudySpec:
    return StudySpec.model_validate({"name": "p", **sections})


def test_encodings_follow_the_spec() -> None:
    assert _spec().protocol.update_encoding == "ckks-exact"
    clear = _spec(privacy={"encryption": "none"}, compression={"codec": "q8", "zstd": True, "downlink": "fp16"})
    assert (clear.protocol.update_encoding, clear.protocol.downlink_encoding) == ("q8+zstd", "delta+fp16+zstd")
    randk = _spec(privacy={"encryption": "ckks-packed"}, compression={"codec": "randk"})
    assert randk.protocol.update_encoding == "ckks-packed+randk" and randk.protocol.encryption.he_mode == "packed"
    assert [VersionKind.of(e) for e in ("tensors", "seeded-init", "delta+q8", "ckks-screen")] == list(VersionKind)
    with pytest.raises(ProtocolError, match="update the node"):
        VersionKind.of("rot13")


@pytest.mark.parametrize(("sections", "field"), [
    ({"aggregation": {"rule": "centered_clipping"}, "privacy": {"encryption": "none"}}, "aggregation.params.tau"),
    ({"aggregation": {"rule": "median"}}, "aggregation.rule"),
    ({"privacy": {"encryption": "ckks-screen"}}, "privacy.encryption"),
    ({"compression": {"codec": "topk"}}, "compression.codec"),
    ({"aggregation": {"rule": "krum", "params": {"f": 1.5}}, "privacy": {"encryption": "none"}}, "aggregation.params.f"),
])
def test_bad_combinations_are_refused_by_the_spec_naming_the_field(sections, field) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        StudySpec.from_json(json.dumps({"name": "p", **sections}))


def test_a_server_optimiser_is_accepted_under_encryption() -> None:
    """Under CKKS the silos apply the server step after decrypting (no longer refused)."""
    spec = _spec(aggregation={"server_optimizer": "fedadam"})
    assert spec.protocol.encrypted and spec.protocol.server_optimizer == "fedadam"


def test_a_float64_update_is_refused_by_its_dtype() -> None:
    """#16 item 1: 1e300 is finite as float64, not once the average is cast to the model's float32."""
    protocol = _spec(privacy={"encryption": "none"}).protocol
    good = encode_tensors(["w", "b"], [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)])
    assert [a.dtype for a in decode_plain_update(protocol, good, LAYOUT, max_values=9)] == [np.float32] * 2
    huge = encode_tensors(["w", "b"], [np.full((2, 3), 1e300), np.zeros(3)])
    with pytest.raises(ProtocolError, match="float64"):
        decode_plain_update(protocol, huge, LAYOUT, max_values=9)
    with pytest.raises(ProtocolError, match="float32"):  # no layout yet (a region): float32 is still required
        decode_plain_update(protocol, huge, None, max_values=9)
    nan = encode_tensors(["w", "b"], [np.full((2, 3), np.nan, np.float32), np.zeros(3, np.float32)])
    with pytest.raises(ProtocolError, match="NaN"):
        decode_plain_update(protocol, nan, LAYOUT, max_values=9)


def test_update_header_checks() -> None:
    p = _spec(privacy={"encryption": "none"}).protocol
    ok = dict(weight=10.0, encoding="tensors", metadata_json='{"update_norm": 1.5}', size=10, limit=100)
    assert check_update_header(p, **ok).update_norm == 1.5
    for change, why in [({"weight": 2e9}, "weight"), ({"weight": float("nan")}, "weight"),
                        ({"encoding": "q8"}, "encoding"), ({"size": 101}, "limit"),
                        ({"metadata_json": '{"update_norm": -1}'}, "update_norm"),
                        ({"metadata_json": '{"surprise": 1}'}, "surprise"),
                        ({"metadata_json": "x" * 70_000}, "bytes")]:
        with pytest.raises(ProtocolError, match=why):
            check_update_header(p, **{**ok, **change})
    assert UpdateMetadata.from_json("{}").privacy.enabled is False


def test_study_ids_one_rule() -> None:
    for bad in ("../etc", ".hidden", "a/b", "", "x" * 65, "bad\x00id"):
        with pytest.raises(ProtocolError):
            check_study_id(bad)
    sid = study_id_for("Heart failure (HF), 30 days")
    assert check_study_id(sid) == sid and "/" not in sid
    for name in ("a/b", ".x", "", "x" * 201, "tab\there"):
        with pytest.raises(SpecError, match="name"):
            StudySpec.from_json(json.dumps({"name": name}))


def test_key_bundle_and_screening_wire_formats() -> None:
    bundle = KeyBundle(public_context=b"pub", wrapped={"h1": b"k1", "r/m": b"k2"})
    assert KeyBundle.from_json(bundle.to_json()) == bundle
    for bad in (b"{}", b'{"public_context": "!!", "wrapped": {}}', b'{"public_context": "cHVi", "wrapped": []}'):
        with pytest.raises(ProtocolError, match="key bundle"):
            KeyBundle.from_json(bad)
    assert decode_screening_scalars(encode_screening_scalars([b"a", b"bc"])) == [b"a", b"bc"]
    with pytest.raises(ProtocolError, match="malformed"):
        decode_screening_scalars(b'{"a": 1}')


def test_fedavgm_equals_the_closed_form_on_a_quadratic() -> None:
    """f(x) = x^2 / 2, each round's aggregate one local GD step (delta = -eta x). FedAvgM
    (m <- beta m + delta, x <- x + lr m) is the heavy ball: x_{t+1} = (1 + beta - c) x_t - beta x_{t-1},
    c = lr eta, x_1 = (1 - c) x_0; so x_t = A r1^t + B r2^t with r1, r2 the roots of r^2 - (1 + beta - c) r + beta."""
    beta, lr, eta, x0 = 0.9, 1.0, 0.1, 3.0
    opt = build_server_optimizer("fedavgm", lr, beta)
    x, got = [np.array([x0])], [x0]
    for _ in range(30):
        x = opt.step(x, [-eta * x[0]])
        got.append(float(x[0][0]))
    c = lr * eta
    r1, r2 = np.roots([1.0, -(1 + beta - c), beta])
    a = np.linalg.solve(np.array([[1, 1], [r1, r2]]), np.array([x0, (1 - c) * x0], dtype=complex))
    closed = [float(np.real(a[0] * r1**t + a[1] * r2**t)) for t in range(31)]
    np.testing.assert_allclose(got, closed, rtol=1e-9, atol=1e-12)
    plain = build_server_optimizer("none", lr)
    y = [np.array([x0])]
    for _ in range(30):
        y = plain.step(y, [-eta * y[0]])
    assert abs(float(y[0][0]) - got[-1]) > 1e-3  # momentum changes the trajectory (here: it oscillates)


def test_server_step_is_deterministic_for_every_silo() -> None:
    """Under CKKS each silo runs the step on the same decrypted average: same inputs, same bits."""
    rng = np.random.default_rng(0)
    model = [rng.normal(size=(4, 3)).astype(np.float32)]
    deltas = [[rng.normal(size=(4, 3)).astype(np.float32)] for _ in range(3)]
    for name in ("fedavgm", "fedadam", "fedyogi"):
        a, b = build_server_optimizer(name, 0.1, 0.9), build_server_optimizer(name, 0.1, 0.9)
        xa, xb = model, model
        for d in deltas:
            xa, xb = a.step(xa, d), b.step(xb, d)
        assert xa[0].dtype == np.float32 and xa[0].tobytes() == xb[0].tobytes()
        assert StudyProtocol(_spec(aggregation={"server_optimizer": name})).server_optimizer == name
