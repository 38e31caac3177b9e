"""A regional aggregator's result, forwarded upstream, equals flat aggregation (clear and CKKS)."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregation import FedAvg
from coordinator.regional import EncryptedRegionalAggregate, RegionalAggregate
from privacy.errors import InvalidUpdateError
from privacy.he import EncryptedSum, StudyKeys, decrypt_average, encrypt_update

WEIGHTS = [120.0, 75.0, 300.0, 31.0, 64.0]
REGIONS = [[0, 1], [2, 3, 4]]
N = 3000


@pytest.fixture(scope="module")
def updates() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.uniform(-1, 1, N).astype(np.float32) for _ in WEIGHTS]


def test_regional_fedavg_then_upstream_equals_flat_fedavg(updates) -> None:
    flat = FedAvg().aggregate([[u] for u in updates], WEIGHTS).update[0]
    upstream = FedAvg()
    forwarded, weights = [], []
    for region in REGIONS:
        agg = RegionalAggregate("fedavg")
        for i in region:
            agg.add([updates[i]], WEIGHTS[i])
        update, weight = agg.forward()
        forwarded.append(update)
        weights.append(weight)
    assert weights == [195.0, 395.0]
    np.testing.assert_allclose(upstream.aggregate(forwarded, weights).update[0], flat, atol=1e-6)


def test_regional_robust_rule_forwards_the_accepted_weight(updates) -> None:
    agg = RegionalAggregate("median")
    for i in REGIONS[1]:
        agg.add([updates[i]], WEIGHTS[i])
    update, weight = agg.forward()
    np.testing.assert_allclose(update[0], np.median(np.stack([updates[i] for i in REGIONS[1]]), axis=0), atol=1e-6)
    assert weight == sum(WEIGHTS[i] for i in REGIONS[1])


@pytest.mark.parametrize("mode", ["exact", "packed"])
def test_regional_ciphertext_sums_upstream_equal_flat_encrypted_sum(updates, mode) -> None:
    """No one decrypts until the silos: regions sum ciphertexts, upstream adds the partial sums."""
    keys = StudyKeys.generate(mode)
    secret, public = keys.secret_context(), keys.public_context()
    cts = [encrypt_update(secret, u, mode=mode, clip=1.0) for u in updates]
    flat = EncryptedSum(public, N, mode, weight_unit=1.0)
    for c, w in zip(cts, WEIGHTS):
        flat.add(c, w)
    upstream = EncryptedSum(public, N, mode, weight_unit=1.0)
    for region in REGIONS:
        agg = EncryptedRegionalAggregate(public, N, mode, weight_unit=1.0)
        for i in region:
            agg.add(cts[i], WEIGHTS[i])
        partial, weight = agg.forward()
        assert weight == sum(WEIGHTS[i] for i in region)
        upstream.add_sum(partial)
    total = sum(WEIGHTS)
    got = decrypt_average(secret, upstream.result(), n_values=N, total_weight=total)
    want = decrypt_average(secret, flat.result(), n_values=N, total_weight=total)
    plain = sum(w * u.astype(np.float64) for w, u in zip(WEIGHTS, updates)) / total
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got, plain, atol=1e-6 if mode == "exact" else 1e-3)


@pytest.mark.parametrize("region_first", [True, False])
def test_central_sum_takes_a_partial_sum_as_an_update_of_its_total_weight(updates, region_first) -> None:
    """What the central coordinator does with a region's forwarded update: `EncryptedSum.add(partial,
    W)` next to direct silos' fresh updates, each sum choosing its own weight unit, equals the flat sum."""
    keys = StudyKeys.generate("exact")
    secret, public = keys.secret_context(), keys.public_context()
    cts = [encrypt_update(secret, u, mode="exact", clip=1.0) for u in updates]
    region = EncryptedRegionalAggregate(public, N, "exact")  # unit from its first weight (300 -> 2^-16)
    for i in REGIONS[1]:
        region.add(cts[i], WEIGHTS[i])
    partial, weight = region.forward()
    central = EncryptedSum(public, N, "exact")  # unit from ITS first weight: 120 -> 2^-18, or the region's
    direct = [(cts[i], WEIGHTS[i]) for i in REGIONS[0]]
    items = [(partial, weight), *direct] if region_first else [*direct, (partial, weight)]
    for blob, w in items:
        central.add(blob, w)
    total = sum(WEIGHTS)
    assert central.total_weight == total
    got = decrypt_average(secret, central.result(), n_values=N, total_weight=total)
    plain = sum(w * u.astype(np.float64) for w, u in zip(WEIGHTS, updates)) / total
    np.testing.assert_allclose(got, plain, atol=1e-6)


def test_a_partial_sum_declared_with_the_wrong_weight_is_refused(updates) -> None:
    keys = StudyKeys.generate("exact")
    secret, public = keys.secret_context(), keys.public_context()
    region = EncryptedRegionalAggregate(public, N, "exact")
    for i in REGIONS[0]:
        region.add(encrypt_update(secret, updates[i], mode="exact", clip=1.0), WEIGHTS[i])
    partial, weight = region.forward()
    central = EncryptedSum(public, N, "exact")
    with pytest.raises(InvalidUpdateError, match="declared weight"):
        central.add(partial, weight * 2)
    central.add(partial, weight)  # the refused one left the sum unchanged
    assert central.total_weight == weight
