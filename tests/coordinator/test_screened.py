"""Norm bounding and multi-Krum from scalars make the plaintext rules' decisions; end to end under
real CKKS the encrypted aggregate equals the plaintext rule's result."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregation import AggregationError, MultiKrum, NormBounding, build_rule
from coordinator.aggregation.base import stack
from coordinator.aggregation.screened import decide, encrypted_aggregate, scalars_needed


def _round(seed: int = 0, n: int = 10, bad: int = 3) -> tuple[list[list[np.ndarray]], list[float]]:
    rng = np.random.default_rng(seed)
    honest = rng.normal(0.1, 0.05, size=(n - bad, 30))
    attackers = -4.0 * honest[:bad]  # sign-flipped, boosted
    rows = np.concatenate([honest, attackers])
    updates = [[r[:20].reshape(4, 5).astype(np.float32), r[20:].astype(np.float32)] for r in rows]
    weights = list(rng.integers(50, 300, size=n).astype(float))
    return updates, weights


def _scalars(updates):
    rows = stack(updates)
    sq_norms = [float(r @ r) for r in rows]
    sq_dist = {(i, j): float((rows[i] - rows[j]) @ (rows[i] - rows[j]))
               for i in range(len(rows)) for j in range(i + 1, len(rows))}
    return sq_norms, sq_dist


def _apply(decision, updates):
    rows = stack(updates)
    total = sum(decision.sum_weights.values())
    avg = sum(decision.sum_weights[i] * rows[i] for i in decision.accepted) / total
    return avg * decision.post_scale


@pytest.mark.parametrize("bound", [0.1, 0.5, 100.0])
def test_norm_bounding_from_norms_matches_plaintext(bound):
    updates, weights = _round()
    rule = NormBounding(bound=bound)
    plain = rule.aggregate(updates, weights)
    d = decide(rule, weights, sq_norms=_scalars(updates)[0])
    assert d.accepted == plain.accepted
    assert d.scores["scaled"] == plain.scores["scaled"]
    np.testing.assert_allclose(_apply(d, updates), stack([plain.update])[0], rtol=1e-5, atol=1e-7)
    norms = np.sqrt(_scalars(updates)[0])
    for i, f in d.factors.items():
        assert f == pytest.approx(min(1.0, bound / norms[i]))
        assert d.sum_weights[i] == pytest.approx(weights[i] * f)
    assert d.divisor == pytest.approx(sum(weights))


@pytest.mark.parametrize("f,m", [(1, 1), (3, 3), (3, 7), (0, 10)])
def test_multi_krum_from_distances_matches_plaintext(f, m):
    updates, weights = _round(seed=f + m)
    rule = MultiKrum(f=f, m=m)
    plain = rule.aggregate(updates, weights)
    d = decide(rule, weights, sq_distances=_scalars(updates)[1])
    assert d.accepted == plain.accepted
    assert d.refused.keys() == plain.refused.keys()
    assert set(d.sum_weights.values()) == {1.0} and d.divisor == m
    np.testing.assert_allclose(_apply(d, updates), stack([plain.update])[0], rtol=1e-5, atol=1e-7)
    for i, s in plain.scores["krum"].items():
        assert d.scores["krum"][i] == pytest.approx(s)


def test_krum_ties_keep_the_earlier_update_as_plaintext():
    updates = [[np.array([0.0, 0.0], dtype=np.float32)], [np.array([0.0, 0.0], dtype=np.float32)],
               [np.array([1.0, 0.0], dtype=np.float32)], [np.array([0.0, 1.0], dtype=np.float32)],
               [np.array([5.0, 5.0], dtype=np.float32)]]
    rule = MultiKrum(f=1, m=1)
    d = decide(rule, [1.0] * 5, sq_distances=_scalars(updates)[1])
    assert d.accepted == rule.aggregate(updates, [1.0] * 5).accepted == [0]


def test_refusals_match_the_plaintext_rules():
    with pytest.raises(AggregationError, match="n > 2f \\+ 2"):
        decide(MultiKrum(f=2), [1.0] * 6, sq_distances=np.zeros((6, 6)))
    with pytest.raises(AggregationError, match="cannot run under encryption"):
        decide(build_rule("median"), [1.0, 1.0], sq_norms=[1.0, 1.0])
    with pytest.raises(AggregationError, match="finite and >= 0"):
        decide(NormBounding(bound=1.0), [1.0, 1.0], sq_norms=[1.0, float("nan")])
    with pytest.raises(AggregationError, match="missing"):
        decide(MultiKrum(f=0), [1.0] * 3, sq_distances={(0, 1): 1.0})
    assert scalars_needed(MultiKrum(f=1), 4)["sq_distances"] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


@pytest.mark.parametrize("rule", [NormBounding(bound=0.5), MultiKrum(f=3, m=5)], ids=["norm_bounding", "krum"])
def test_encrypted_twin_equals_plaintext_rule_under_real_ckks(rule):
    from privacy.he import StudyKeys, decrypt_average, encrypt_update
    from privacy.he.screening import Screener, decrypt_scalar

    updates, weights = _round(seed=11)
    keys = StudyKeys.generate("screen")
    pub, sec = keys.public_context(), keys.secret_context()
    rows = stack(updates)
    blobs = [encrypt_update(sec, r.astype(np.float32), mode="screen", clip=10.0) for r in rows]
    screener = Screener(pub)  # coordinator: public context only
    for b in blobs:
        screener.add(b)
    need = scalars_needed(rule, len(blobs))
    sq_norms = [decrypt_scalar(sec, screener.sq_norm(i)) for i in need["sq_norms"]] or None  # a silo decrypts
    sq_dist = {(i, j): decrypt_scalar(sec, screener.sq_distance(i, j)) for i, j in need["sq_distances"]} or None
    decision = decide(rule, weights, sq_norms=sq_norms, sq_distances=sq_dist)
    plain = rule.aggregate(updates, weights)
    assert decision.accepted == plain.accepted
    summed, total, post = encrypted_aggregate(pub, blobs, decision, n_values=rows.shape[1])
    avg = decrypt_average(sec, summed, n_values=rows.shape[1], total_weight=total) * post
    np.testing.assert_allclose(avg, stack([plain.update])[0], rtol=1e-5, atol=1e-6)
