"""Aggregation rules pinned on small hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.api.server_step import ServerStepError
from coordinator.aggregation import (
    AggregationError,
    CenteredClipping,
    CoordinateMedian,
    FedAdam,
    FedAvg,
    FedYogi,
    MultiKrum,
    NormBounding,
    ServerSGD,
    StreamingFedAvg,
    TrimmedMean,
    build_rule,
    build_server_optimizer,
)


def upd(*values: float, dtype=np.float32) -> list[np.ndarray]:
    """A one-array update."""
    return [np.array(values, dtype=dtype)]


def col(result) -> list[float]:
    return result.update[0].tolist()


# -- FedAvg -------------------------------------------------------------------------------------


def test_fedavg_weighted_mean_two_arrays():
    a = [np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)]
    b = [np.array([4.0, 8.0], np.float32), np.array([[3.0]], np.float32)]
    r = FedAvg().aggregate([a, b], [1, 2])
    assert r.update[0].tolist() == [3.0, 6.0]
    assert r.update[1].tolist() == [[2.0]]
    assert r.update[0].dtype == np.float32 and r.update[1].shape == (1, 1)
    assert r.accepted == [0, 1] and r.refused == {}


def test_streaming_fedavg_equals_fedavg():
    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)] for _ in range(7)]
    weights = [float(w) for w in rng.integers(1, 100, size=7)]
    stream = StreamingFedAvg()
    for u, w in zip(updates, weights):
        stream.add(u, w)
    streamed, batch = stream.result(), FedAvg().aggregate(updates, weights)
    expected = [sum(w * u[j].astype(np.float64) for u, w in zip(updates, weights)) / sum(weights) for j in range(2)]
    for s, b, e in zip(streamed.update, batch.update, expected):
        np.testing.assert_array_equal(s, b)
        np.testing.assert_allclose(s, e, rtol=1e-6)
    assert streamed.accepted == list(range(7)) and stream.count == 7


def test_streaming_fedavg_refuses_bad_update_without_touching_the_sum():
    stream = StreamingFedAvg()
    stream.add(upd(1.0, 1.0), 1)
    with pytest.raises(AggregationError, match="NaN or Inf"):
        stream.add([np.array([5.0, np.nan], np.float32)], 1)
    with pytest.raises(AggregationError, match="shape"):
        stream.add(upd(1.0, 2.0, 3.0), 1)
    with pytest.raises(AggregationError, match="weight"):
        stream.add(upd(1.0, 2.0), 0)
    stream.add(upd(3.0, 5.0), 1)
    assert col(stream.result()) == [2.0, 3.0]
    with pytest.raises(AggregationError, match="no updates"):
        StreamingFedAvg().result()


# -- median and trimmed mean --------------------------------------------------------------------


def test_median_odd_even_ties_and_weights_ignored():
    assert col(CoordinateMedian().aggregate([upd(1, 9), upd(5, 5), upd(3, 1)], [1, 1, 100])) == [3.0, 5.0]
    assert col(CoordinateMedian().aggregate([upd(1), upd(2), upd(4), upd(10)], [1, 1, 1, 1])) == [3.0]
    assert col(CoordinateMedian().aggregate([upd(2), upd(2), upd(7)], [1, 1, 1])) == [2.0]
    assert col(CoordinateMedian().aggregate([upd(6)], [1])) == [6.0]


@pytest.mark.parametrize(
    ("beta", "values", "expected", "k"),
    [
        (0.0, [1, 2, 3, 10], 4.0, 0),  # plain mean
        (0.2, [1, 2, 3, 10], 4.0, 0),  # floor(0.8) = 0: nothing trimmed yet
        (0.25, [1, 2, 3, 10], 2.5, 1),  # one per side
        (0.4, [1, 2, 3, 4, 100], 3.0, 2),  # floor(2.0) = 2 per side leaves the median
        (0.3, [5, 1, 9, 1, 3, 7, 2, 8, 4, 6], 4.5, 3),  # floor(3.0) per side, exact despite float rounding
        (0.49, [7, 7, 1], 7.0, 1),  # ties
    ],
)
def test_trimmed_mean(beta, values, expected, k):
    r = TrimmedMean(beta=beta).aggregate([upd(v) for v in values], [1] * len(values))
    assert col(r) == [expected]
    assert r.scores["trimmed_per_side"] == k


def test_trimmed_mean_is_per_coordinate():
    r = TrimmedMean(beta=1 / 3).aggregate([upd(1, 30), upd(2, 10), upd(3, 20)], [1, 2, 3])
    assert col(r) == [2.0, 20.0]


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7])
def test_trimmed_mean_refuses_beta_outside_range(beta):
    with pytest.raises(AggregationError, match="beta"):
        TrimmedMean(beta=beta)


# -- Krum ---------------------------------------------------------------------------------------


def test_krum_scores_by_hand():
    # 1-D points 0, 1, 3, 10, 11; f=1 -> n-f-2 = 2 nearest neighbours.
    points = [0, 1, 3, 10, 11]
    r = MultiKrum(f=1, m=1).aggregate([upd(p) for p in points], [1] * 5)
    # scores: 0: 1+9=10, 1: 1+4=5, 3: 4+9=13, 10: 1+49=50, 11: 1+64=65
    assert r.scores["krum"] == {0: 10.0, 1: 5.0, 2: 13.0, 3: 50.0, 4: 65.0}
    assert r.accepted == [1] and col(r) == [1.0]
    assert set(r.refused) == {0, 2, 3, 4} and "ranks 5 of 5" in r.refused[4]


def test_multikrum_averages_m_lowest_without_weights():
    r = MultiKrum(f=1, m=3).aggregate([upd(p) for p in [0, 1, 3, 10, 11]], [100, 1, 1, 1, 1])
    assert r.accepted == [0, 1, 2] and col(r) == pytest.approx([4 / 3])


def test_krum_ties_keep_the_earlier_update():
    r = MultiKrum(f=0, m=1).aggregate([upd(5), upd(0), upd(10)], [1, 1, 1])
    # neighbours n-0-2 = 1: scores 25, 25, 25 -> index 0 wins the tie
    assert r.accepted == [0] and col(r) == [5.0]


def test_krum_f_at_the_limit_and_beyond():
    five = [upd(p) for p in [0, 1, 3, 10, 11]]
    MultiKrum(f=1).aggregate(five, [1] * 5)  # n = 5 > 2f + 2 = 4
    with pytest.raises(AggregationError, match=r"n > 2f \+ 2.*at least 7"):
        MultiKrum(f=2).aggregate(five, [1] * 5)  # n = 5 <= 6
    with pytest.raises(AggregationError, match="at least 5"):
        MultiKrum(f=1).aggregate(five[:4], [1] * 4)
    with pytest.raises(AggregationError, match="m=5"):
        MultiKrum(f=1, m=5).aggregate(five, [1] * 5)


# -- centered clipping and norm bounding --------------------------------------------------------


def test_centered_clipping_by_hand_and_keeps_its_centre():
    rule = CenteredClipping(tau=1.0, iterations=1)
    r = rule.aggregate([upd(0, 0), upd(0, 0), upd(3, 4)], [1, 1, 1])
    # median centre (0, 0); the outlier at distance 5 is clipped to (0.6, 0.8), then / 3
    assert col(r) == pytest.approx([0.2, 0.8 / 3])
    assert r.scores["start"] == "median" and r.scores["clipped_last_iteration"] == [2]
    r2 = rule.aggregate([upd(0.2, 0.8 / 3)] * 3, [1, 1, 1])
    assert r2.scores["start"] == "previous aggregate" and col(r2) == pytest.approx([0.2, 0.8 / 3])


def test_centered_clipping_within_tau_is_the_mean():
    r = CenteredClipping(tau=100.0, iterations=3).aggregate([upd(1), upd(2), upd(6)], [1, 1, 1])
    assert col(r) == pytest.approx([3.0])


def test_centered_clipping_refuses_a_centre_of_another_model():
    rule = CenteredClipping(tau=1.0, centre=[np.zeros(3)])
    with pytest.raises(AggregationError, match="model changed"):
        rule.aggregate([upd(1, 2)] * 3, [1, 1, 1])


def test_norm_bounding_scales_then_weighted_mean():
    r = NormBounding(bound=1.0).aggregate([upd(3, 4), upd(0.6, 0)], [1, 3])
    # (3, 4) -> (0.6, 0.8); (0.6, 0) has norm 0.6 and is kept; weighted mean (0.6, 0.2)
    assert col(r) == pytest.approx([0.6, 0.2])
    assert r.scores["scaled"] == [0]


# -- robustness: one sign-flipped, scaled outlier ---------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        CoordinateMedian(),
        TrimmedMean(beta=0.2),
        MultiKrum(f=1, m=3),
        CenteredClipping(tau=0.5, iterations=3),
    ],
    ids=lambda r: type(r).__name__,
)
def test_robust_rules_neutralise_a_sign_flipped_outlier(rule):
    rng = np.random.default_rng(1)
    honest_mean = np.linspace(-1, 1, 20)
    updates = [[(honest_mean + 0.05 * rng.normal(size=20)).astype(np.float32)] for _ in range(5)]
    updates.append([(-100.0 * honest_mean).astype(np.float32)])
    weights = [1.0] * 6
    plain = FedAvg().aggregate(updates, weights).update[0]
    robust = rule.aggregate(updates, weights).update[0]
    assert np.linalg.norm(plain - honest_mean) > 10
    assert np.linalg.norm(robust - honest_mean) < 0.5
    if isinstance(rule, MultiKrum):
        assert 5 in rule.aggregate(updates, weights).refused


# -- malformed inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("updates", "weights", "message"),
    [
        ([], [], "no updates"),
        ([upd(1)], [1, 2], "2 weights"),
        ([upd(1), upd(2)], [1, 0], "weight of update 1"),
        ([upd(1), upd(2)], [1, float("nan")], "weight of update 1"),
        ([upd(1), upd(2)], [1, "x"], "weights must be numbers"),
        ([upd(1), upd(1, 2)], [1, 1], r"update 1, array 0 has shape \(2,\)"),
        ([upd(1), upd(1) + upd(2)], [1, 1], "update 1 has 2 arrays"),
        ([upd(1), [np.array([np.inf], np.float32)]], [1, 1], "NaN or Inf"),
        ([upd(1), [np.array([1], np.int64)]], [1, 1], "dtype int64"),
        ([upd(1), [[1.0]]], [1, 1], "expected a numpy array"),
        ([upd(1), np.array([1.0])], [1, 1], "expected a list of numpy arrays"),
    ],
)
def test_malformed_inputs_refused(updates, weights, message):
    with pytest.raises(AggregationError, match=message):
        FedAvg().aggregate(updates, weights)
    with pytest.raises(AggregationError, match=message):
        CoordinateMedian().aggregate(updates, weights)


# -- building from the study spec ---------------------------------------------------------------


def test_build_rule_from_spec_values():
    rule = build_rule("krum", {"f": 2.0, "m": 3.0})
    assert isinstance(rule, MultiKrum) and (rule.f, rule.m) == (2, 3)
    assert isinstance(build_rule("median", {}), CoordinateMedian)
    assert build_rule("trimmed_mean", {"beta": 0.25}).beta == 0.25
    assert build_rule("centered_clipping", {"tau": 2.0, "iterations": 2}).iterations == 2


@pytest.mark.parametrize(
    ("rule", "params", "message"),
    [
        ("bulyan", {}, "unknown aggregation rule 'bulyan'"),
        ("krum", {"k": 1.0}, "unknown parameter 'k' for aggregation rule 'krum'; it takes: f, m"),
        ("median", {"beta": 0.1}, "unknown parameter 'beta'.*takes: none"),
        ("krum", {"f": 1.5}, "'f' must be a whole number"),
        ("norm_bounding", {}, "needs parameter 'bound'"),
        ("trimmed_mean", {"beta": 0.5}, "beta"),
    ],
)
def test_build_rule_errors_name_the_problem(rule, params, message):
    with pytest.raises(AggregationError, match=message):
        build_rule(rule, params)


# -- server optimisers --------------------------------------------------------------------------


def test_server_sgd_and_adam_yogi_by_hand():
    x, d = [np.array([1.0, 1.0], np.float32)], [np.array([0.5, -2.0], np.float32)]
    assert build_server_optimizer("none", 1.0).step(x, d)[0].tolist() == [1.5, -1.0]
    adam = build_server_optimizer("fedadam", 0.1)
    assert isinstance(adam, FedAdam)
    out = adam.step(x, d)[0]
    # m = 0.1 d; v = 0.99 tau^2 + 0.01 d^2 -> x + 0.1 * m / (sqrt(v) + tau)
    m, v = 0.1 * np.array([0.5, -2.0]), 0.99e-6 + 0.01 * np.array([0.25, 4.0])
    np.testing.assert_allclose(out, 1.0 + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-6)
    yogi = FedYogi(lr=0.1)
    yogi.step(x, d)
    # v0 = tau^2 < d^2 -> sign = -1 -> v = tau^2 + 0.01 d^2
    np.testing.assert_allclose(yogi.v[0], 1e-6 + 0.01 * np.array([0.25, 4.0]))
    assert isinstance(build_server_optimizer("fedyogi", 1.0), FedYogi)
    assert isinstance(build_server_optimizer("none", 1.0), ServerSGD)


def test_server_optimizer_state_round_trips_and_errors():
    a, b = FedAdam(lr=0.1), FedAdam(lr=0.1)
    x, d = [np.zeros(3)], [np.ones(3)]
    a.step(x, d)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.step(x, d)[0], b.step(x, d)[0])
    with pytest.raises(AggregationError, match="unknown server optimizer 'sgdm'"):
        build_server_optimizer("sgdm", 1.0)
    with pytest.raises(ServerStepError, match="shape"):
        a.step(x, [np.ones(4)])
