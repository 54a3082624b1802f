"""The compiled loops of the linear route against NumPy formulas and the reference route."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from dgmm import _jit
from dgmm import _kernels as kernels
from dgmm._covariance import COVARIANCE
from tests.helpers import random_params

NO_LABEL = np.empty(0, dtype=np.int64)


def features_by_numpy(X: np.ndarray, center: np.ndarray, covariance_type: str) -> np.ndarray:
    """The linear features [z | extra | 1] written out with NumPy."""
    Z = X.astype(np.float64) - center
    if covariance_type == "full":
        iu = np.triu_indices(X.shape[1])
        extra = (Z[:, :, None] * Z[:, None, :])[:, iu[0], iu[1]]
    elif covariance_type == "diag":
        extra = Z**2
    else:
        extra = (Z**2).sum(axis=1, keepdims=True)
    return np.hstack([Z, extra, np.ones((len(X), 1))])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", sorted(_jit.FILL))
def test_fill_writes_the_linear_features(covariance_type, dtype):
    rng = np.random.default_rng(0)
    d = 5
    X = (rng.normal(size=(37, d)) * 3 + 100).astype(dtype)
    center = rng.normal(size=d) + 100
    m = COVARIANCE[covariance_type].lin_rows(8, d)
    F = np.full((37, m + 1), np.nan)
    _jit.FILL[covariance_type](X, center, F)
    np.testing.assert_array_equal(F, features_by_numpy(X, center, covariance_type))


def test_normalise_rows_matches_logsumexp_for_hard_soft_and_impossible_rows():
    rng = np.random.default_rng(1)
    a = rng.normal(scale=200.0, size=(400, 6))  # mostly one-hot rows
    a[:50] = rng.normal(size=(50, 6))  # soft rows
    a[50:60, 2] = -np.inf  # an empty component
    a[60, :2] = a[60, 2:4].max() + 1.0  # a tie at the maximum: not one-hot
    P, log_norm, hot = a.copy(), np.empty(len(a)), np.empty(len(a), dtype=np.int64)
    finite, nonzero = _jit.normalise_rows(P, NO_LABEL, log_norm, kernels._LOG_NEGLIGIBLE, hot)
    assert finite and nonzero == np.count_nonzero(P)
    np.testing.assert_allclose(log_norm, logsumexp(a, axis=1), rtol=1e-13)
    expected = np.exp(a - logsumexp(a, axis=1, keepdims=True))
    np.testing.assert_allclose(P, expected, rtol=1e-12, atol=1e-16)
    assert (P[expected < 1e-17] == 0.0).all()
    # one-hot rows name their component, the others -1
    one_hot = np.count_nonzero(P, axis=1) == 1
    assert 200 < one_hot.sum() < 350  # both kinds present
    np.testing.assert_array_equal(hot, np.where(one_hot, P.argmax(axis=1), -1))
    # the same as the NumPy normalisation of the reference route
    ref = a.T.copy()
    np.testing.assert_allclose(kernels._normalise_t(ref), log_norm, rtol=1e-14)
    np.testing.assert_allclose(ref.T, P, rtol=1e-13, atol=1e-300)


def test_normalise_rows_reports_non_finite_rows_and_fixes_labelled_ones():
    a = np.array([[0.0, -1.0], [np.nan, 0.0], [-np.inf, -np.inf], [np.inf, 0.0],
                  [-3.0, -1.0], [2.0, np.nan]])
    P, log_norm, hot = a.copy(), np.empty(len(a)), np.empty(len(a), dtype=np.int64)
    assert not _jit.normalise_rows(P, NO_LABEL, log_norm, kernels._LOG_NEGLIGIBLE, hot)[0]
    assert np.isfinite(log_norm[[0, 4]]).all()
    assert np.isnan(log_norm[[1, 5]]).all()
    assert log_norm[2] == -np.inf and log_norm[3] == np.inf
    # labelled rows: one-hot at the label, log-norm the labelled entry
    label = np.array([1, -1, -1, -1, 0, -1])
    P, log_norm = a.copy(), np.empty(len(a))
    _jit.normalise_rows(P, label, log_norm, kernels._LOG_NEGLIGIBLE, hot)
    np.testing.assert_array_equal(P[[0, 4]], [[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_array_equal(log_norm[[0, 4]], [-1.0, -3.0])
    np.testing.assert_array_equal(hot[[0, 4]], [1, 0])
    P, log_norm = a[[0, 4]].copy(), np.empty(2)
    assert _jit.normalise_rows(P, label[[0, 4]], log_norm, kernels._LOG_NEGLIGIBLE, hot) == (
        True, 2)


def test_sparse_products_sum_by_rows():
    rng = np.random.default_rng(2)
    R = np.eye(4)[rng.integers(0, 4, 300)] * rng.uniform(0.5, 2.0, (300, 1))  # one-hot
    R[:30] = rng.dirichlet(np.ones(4), 30)  # and some soft rows
    R[30:40, 1:] = 0.0  # one-hot, but not said so: taken as soft rows
    hot = np.where(np.count_nonzero(R, axis=1) == 1, R.argmax(axis=1), -1)
    hot[30:40] = -1
    F = rng.normal(size=(300, 9))
    G = np.ones((4, 9))
    _jit.add_sparse_products(R, F, G, hot)
    np.testing.assert_allclose(G, 1.0 + R.T @ F, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("share", [0.0, 1.0])  # GEMM only, rows only
@pytest.mark.parametrize("covariance_type,k,d", [("full", 6, 4), ("diag", 5, 3),
                                                 ("spherical", 3, 4)])
def test_statistics_by_rows_or_gemm_equal_the_reference_route(monkeypatch, covariance_type,
                                                              k, d, share):
    monkeypatch.setattr(kernels, "SPARSE_SHARE", share)
    params, _ = random_params(covariance_type, k, d, seed=4)
    rng = np.random.default_rng(5)
    X = params.means[rng.integers(0, k, 500)] + rng.normal(scale=0.3, size=(500, d))
    weight = rng.uniform(0.0, 2.0, 500)
    fast = kernels.estep_stats(X, params, sample_weight=weight)
    ref = kernels.estep_stats(X, params, sample_weight=weight, reference=True)
    for field in ("nk", "sk", "qk"):
        a, b = getattr(fast, field), getattr(ref, field)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * np.abs(b).max())
    np.testing.assert_allclose(fast.loglik, ref.loglik, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_an_estep_compiled_for_its_shape_gives_the_same_bits(monkeypatch, covariance_type,
                                                              dtype):
    params, _ = random_params(covariance_type, 6, 3, seed=7)
    rng = np.random.default_rng(8)
    X = (params.means[rng.integers(0, 6, 700)] + rng.normal(size=(700, 3))).astype(dtype)
    weight = rng.uniform(0.0, 2.0, 700)
    monkeypatch.setattr(kernels, "SPECIALISE_ROWS", 10**9)
    generic = kernels.estep_stats(X, params, sample_weight=weight)
    generic_rows = kernels.per_row_outputs(X, params, ("log_density", "proba"))
    monkeypatch.setattr(kernels, "SPECIALISE_ROWS", 1)
    compiled = kernels.estep_stats(X, params, sample_weight=weight)
    for field in ("nk", "sk", "qk", "loglik"):
        np.testing.assert_array_equal(getattr(compiled, field), getattr(generic, field))
    for a, b in zip(kernels.per_row_outputs(X, params, ("log_density", "proba")), generic_rows,
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert _jit.linear_estep_for(3, 6) is not _jit.linear_estep
    assert _jit.linear_estep_for(_jit.SPECIALISED_FEATURES + 1, 6) is _jit.linear_estep
