"""The sufficient-statistics packet: addition, scaling and re-shifting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgmm import _kernels as kernels
from dgmm._stats import tree_sum
from tests.helpers import COVARIANCE_TYPES


def packet(X, R, shift, covariance_type, center=None):
    center = X.mean(axis=0) if center is None else center
    return kernels.stats_from_resp(X, R, shift, center, covariance_type)


def assert_packets_equal(a, b, rtol=1e-9):
    for field in ("nk", "sk", "qk"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=rtol,
                                   atol=rtol * np.abs(getattr(b, field)).max())
    np.testing.assert_allclose(a.n, b.n, rtol=rtol)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), split=st.integers(1, 99))
def test_packets_add_exactly(covariance_type, seed, split):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(100, 3)) * 5 + rng.normal(size=3) * 100
    R = rng.dirichlet(np.ones(2), size=100).T
    shift, center = X[:2].copy(), X[0] + 1.0
    whole = packet(X, R, shift, covariance_type, center)
    parts = packet(X[:split], R[:, :split], shift, covariance_type, center) + packet(
        X[split:], R[:, split:], shift, covariance_type, center)
    assert_packets_equal(parts, whole)
    assert parts.n_rows == 100


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_shifted_equals_recomputation(covariance_type):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3)) + 10
    R = rng.dirichlet(np.ones(3), size=200).T
    a = packet(X, R, rng.normal(size=(3, 3)) + 10, covariance_type, X.mean(0))
    new_shift, new_center = rng.normal(size=(3, 3)) + 11, X.mean(0) + 0.5
    b = packet(X, R, new_shift, covariance_type, new_center)
    assert_packets_equal(a.shifted(new_shift, new_center), b)


def test_adding_across_shifts_is_refused():
    X = np.ones((4, 2))
    R = np.ones((1, 4))
    a = packet(X, R, np.zeros((1, 2)), "diag")
    b = packet(X, R, np.ones((1, 2)), "diag")
    with pytest.raises(ValueError, match="different shifts"):
        a + b


def test_scaled_and_tree_sum():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(30, 2))
    shift = np.zeros((2, 2))
    parts = [packet(X[i::5], rng.dirichlet([1, 1], size=6).T, shift, "full", np.zeros(2))
             for i in range(5)]
    seq = parts[0]
    for p in parts[1:]:
        seq = seq + p
    assert_packets_equal(tree_sum(parts), seq, rtol=1e-13)
    half = seq.scaled(0.5)
    np.testing.assert_allclose(half.qk, seq.qk / 2)
    assert half.n_rows == seq.n_rows
    pair_lists = tree_sum([[p, p] for p in parts])
    assert_packets_equal(pair_lists[1], seq, rtol=1e-13)
