"""The pure NumPy kernels against independent references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture as SkGM

from dgmm import _jit
from dgmm import _kernels as kernels
from dgmm._covariance import COVARIANCE, use_outer_features
from tests.helpers import COVARIANCE_TYPES, dense_cov, random_params

# Both full-covariance routes: outer-product features (many components) and
# per-component GEMMs (few components).
SHAPES = [(3, 4), (2, 17), (6, 5)]


@pytest.mark.parametrize("k, d", SHAPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_gaussian_prob_matches_scipy(covariance_type, k, d):
    params, cov = random_params(covariance_type, k, d)
    X = np.random.default_rng(1).normal(scale=4.0, size=(300, d)) + 50.0
    params = kernels.Params(covariance_type, params.weights, params.means + 50.0,
                      params.precisions_cholesky)
    dense = dense_cov(cov, covariance_type, k, d)
    expected = np.column_stack(
        [multivariate_normal(params.means[j], dense[j]).logpdf(X) for j in range(k)]
    )
    np.testing.assert_allclose(kernels.log_gaussian_prob(X, params), expected, rtol=1e-10)


def test_outer_feature_route_switches():
    assert use_outer_features(8, 16)
    assert not use_outer_features(2, 16)


@pytest.mark.parametrize("k, d", SHAPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_stats_from_resp_match_definitions(covariance_type, k, d):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, d)) + 1e3
    R = rng.dirichlet(np.ones(k), size=500).T  # (k, n)
    shift = X[:k] + rng.normal(size=(k, d))
    center = X.mean(axis=0) + 1.0
    st = kernels.stats_from_resp(X, R, shift, center, covariance_type)
    np.testing.assert_allclose(st.nk, R.sum(axis=1))
    for j in range(k):
        D = X - shift[j]
        np.testing.assert_allclose(st.sk[j], R[j] @ D, rtol=1e-9, atol=1e-9)
        outer = (D * R[j][:, None]).T @ D
        if covariance_type == "full":
            np.testing.assert_allclose(st.qk[j], outer, rtol=1e-9)
        elif covariance_type == "diag":
            np.testing.assert_allclose(st.qk[j], np.diag(outer), rtol=1e-9)
        elif covariance_type == "spherical":
            np.testing.assert_allclose(st.qk[j], np.trace(outer), rtol=1e-9)
    if covariance_type == "tied":
        Dc = X - center
        np.testing.assert_allclose(st.qk, Dc.T @ Dc, rtol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_matches_weighted_moments(covariance_type):
    k, d = 3, 4
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, d)) * [1, 2, 3, 4] + 7.0
    R = rng.dirichlet(np.ones(k), size=400).T
    st = kernels.stats_from_resp(X, R, rng.normal(size=(k, d)) + 7, X.mean(0), covariance_type)
    weights, means, cov, empty = kernels.m_step(st, reg_covar=1e-3)
    assert empty.size == 0
    nk = R.sum(axis=1)
    np.testing.assert_allclose(weights, nk / 400, rtol=1e-12)
    mu = (R @ X) / nk[:, None]
    np.testing.assert_allclose(means, mu, rtol=1e-10)
    full = np.stack([((X - mu[j]) * R[j][:, None]).T @ (X - mu[j]) / nk[j] for j in range(k)])
    expected = {
        "full": full + 1e-3 * np.eye(d),
        "tied": (full * nk[:, None, None]).sum(0) / nk.sum() + 1e-3 * np.eye(d),
        "diag": np.diagonal(full, axis1=1, axis2=2) + 1e-3,
        "spherical": np.trace(full, axis1=1, axis2=2) / d + 1e-3,
    }[covariance_type]
    np.testing.assert_allclose(cov, expected, rtol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precision_round_trips(covariance_type):
    params, cov = random_params(covariance_type, 3, 4)
    prec = kernels.precisions_from_cholesky(params.precisions_cholesky, covariance_type)
    back = kernels.covariances_from_cholesky(
        kernels.precision_cholesky_from_precisions(prec, covariance_type), covariance_type
    )
    np.testing.assert_allclose(back, cov, rtol=1e-10)


def test_not_positive_definite_covariance_names_the_component():
    cov = np.stack([np.eye(2), -np.eye(2)])
    with pytest.raises(ValueError, match="component 1 has an ill-defined"):
        kernels.precision_cholesky(cov, "full")


def test_estep_rows_sum_to_one_and_sub_blocks_add_up():
    params, _ = random_params("full", 4, 3)
    X = np.random.default_rng(4).normal(scale=3, size=(kernels.SUB_ROWS * 2 + 17, 3))
    whole = kernels.estep_stats(X, params)
    proba = kernels.predict_block(X, params, "proba")
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(whole.nk, proba.sum(axis=0), rtol=1e-10)
    np.testing.assert_allclose(whole.loglik, kernels.predict_block(X, params, "log_density").sum())
    assert whole.n_rows == len(X)


def test_sample_weight_equals_repeated_rows():
    params, _ = random_params("diag", 3, 2)
    X = np.random.default_rng(5).normal(size=(50, 2))
    w = np.arange(50) % 3
    weighted = kernels.estep_stats(X, params, sample_weight=w.astype(float))
    repeated = kernels.estep_stats(np.repeat(X, w, axis=0), params)
    for field in ("nk", "sk", "qk"):
        np.testing.assert_allclose(getattr(weighted, field), getattr(repeated, field), rtol=1e-10)
    np.testing.assert_allclose(weighted.loglik, repeated.loglik, rtol=1e-12)


def test_far_away_component_has_finite_responsibility():
    params, _ = random_params("spherical", 2, 2)
    X = np.array([[1e4, 1e4]])  # astronomically unlikely under both components
    log_norm = kernels.predict_block(X, params, "log_density")
    proba = kernels.predict_block(X, params, "proba")
    assert np.isfinite(log_norm).all() and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(), 1.0)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_covariance_table_entry_is_complete_and_consistent(covariance_type):
    k, d, reg = 3, 4, 1e-3
    kind = COVARIANCE[covariance_type]
    assert kind.name == covariance_type
    assert set(kernels.COVARIANCE_TYPES) == set(COVARIANCE) == set(COVARIANCE_TYPES)
    # The linear route's functions are optional, all together.
    optional = {"lin_coef", "lin_scatter"}
    assert all(getattr(kind, f.name) is not None for f in dataclasses.fields(kind)
               if f.name not in optional)
    assert len({getattr(kind, name) is None for name in optional}) == 1
    # ... and the compiled feature fill exists exactly for the types that have them
    assert (covariance_type in _jit.FILL) == (kind.lin_coef is not None)
    shape = kind.shape(k, d)
    assert kernels.covariance_shape(covariance_type, k, d) == shape

    params, cov = random_params(covariance_type, k, d)
    U = params.precisions_cholesky
    assert cov.shape == U.shape == kind.precisions(U).shape == shape
    np.testing.assert_allclose(kind.covariances(U), cov, rtol=1e-10)
    P = kind.precisions(U)  # another factor of the same precisions
    np.testing.assert_allclose(kind.precisions(kind.precision_cholesky_from_precisions(P)), P,
                               rtol=1e-10)
    dense = kind.dense(cov, k, d)
    np.testing.assert_array_equal(dense, dense_cov(cov, covariance_type, k, d))
    np.testing.assert_allclose(
        np.broadcast_to(kind.log_det(U, d), (k,)), -0.5 * np.linalg.slogdet(dense)[1], rtol=1e-10
    )
    sk_model = SkGM(k, covariance_type=covariance_type)
    sk_model.means_ = params.means
    assert kernels.n_parameters(k, d, covariance_type) == sk_model._n_parameters()

    # Statistics from data and from parameters have the shapes the table gives.
    rng = np.random.default_rng(7)
    X = rng.normal(size=(200, d)) + 5.0
    R = rng.dirichlet(np.ones(k), size=200).T
    st = kernels.stats_from_resp(X, R, params.means, X.mean(axis=0), covariance_type)
    assert st.qk.shape == shape
    assert kernels.m_step(st, reg)[2].shape == shape
    back = st.unpack(st.pack(), covariance_type, k, d)
    np.testing.assert_array_equal(back.qk, st.qk)

    # M-step(stats_from_params(p)) gives p back, also after re-shifting the statistics.
    from_params = kernels.stats_from_params(params, cov, reg)
    assert from_params.qk.shape == shape
    moved = from_params.shifted(params.means + 1.0, from_params.center - 2.0)
    for stats in (from_params, moved):
        weights, means, covariances, empty = kernels.m_step(stats, reg)
        assert empty.size == 0
        np.testing.assert_allclose(weights, params.weights, rtol=1e-12)
        np.testing.assert_allclose(means, params.means, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(covariances, cov, rtol=1e-10)

    random_cov = kind.random(np.random.default_rng(8), k, d)
    assert random_cov.shape == shape
    np.linalg.cholesky(kind.dense(random_cov, k, d))  # positive definite
    counts = np.array([2, 0, 5])
    draws = kind.sample(np.random.default_rng(9), params.means, cov, counts)
    assert draws.shape == (counts.sum(), d)


@pytest.mark.parametrize("covariance_type,k,d", [
    ("full", 4, 3), ("full", 1, 12), ("tied", 3, 4), ("diag", 5, 3), ("spherical", 3, 4),
])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_route_equals_reference_route(monkeypatch, covariance_type, k, d, dtype):
    # Small work arrays: many sub-blocks per chunk, and a last one that is short.
    monkeypatch.setattr(kernels, "LINEAR_WORK_BYTES", 1)
    params, _ = random_params(covariance_type, k, d, seed=3)
    rng = np.random.default_rng(6)
    n = 3 * 128 + 41
    X = (params.means[rng.integers(0, k, n)]
         + rng.normal(scale=2.0, size=(n, d))).astype(dtype)
    X[:40] = params.means.mean(axis=0)  # rows shared by several components (soft)
    weight = rng.uniform(0.0, 2.0, n)
    label = np.where(rng.random(n) < 0.3, rng.integers(0, k, n), -1)
    for kw in ({}, {"sample_weight": weight}, {"label": label},
               {"sample_weight": weight, "label": label, "row_offset": 7}):
        fast = kernels.estep_stats(X, params, **kw)
        ref = kernels.estep_stats(X, params, reference=True, **kw)
        for field in ("nk", "sk", "qk"):
            a, b = getattr(fast, field), getattr(ref, field)
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * np.abs(b).max())
        np.testing.assert_allclose(fast.loglik, ref.loglik, rtol=1e-12)
        assert fast.n_rows == ref.n_rows == n
    scorer = kernels.Scorer.of(params)
    assert (scorer.lin is None) == (COVARIANCE[covariance_type].lin_rows(k, d) is None)
    # per-row outputs (linear route where there is one) against the reference route
    ref = list(kernels._responsibilities(X, scorer, 0))
    log_density, proba = kernels.per_row_outputs(X, params, ("log_density", "proba"))
    np.testing.assert_allclose(log_density, np.concatenate([r[2] for r in ref]), rtol=1e-12)
    np.testing.assert_allclose(proba, np.concatenate([r[3].T for r in ref]), atol=1e-12)


def test_normalise_matches_logsumexp_for_hard_soft_and_impossible_rows():
    from scipy.special import logsumexp

    rng = np.random.default_rng(0)
    a = rng.normal(scale=200.0, size=(6, 400))  # mostly one-hot rows
    a[:, :50] = rng.normal(size=(6, 50))  # soft rows
    a[2, 50:60] = -np.inf  # an empty component
    for cols in (slice(None), slice(0, 60)):  # few soft rows, then mostly soft
        block = a[:, cols].copy()
        log_norm = kernels._normalise_t(block)
        np.testing.assert_allclose(log_norm, logsumexp(a[:, cols], axis=0), rtol=1e-13)
        expected = np.exp(a[:, cols] - logsumexp(a[:, cols], axis=0))
        np.testing.assert_allclose(block, expected, rtol=1e-12, atol=1e-16)
        assert (block[expected < 1e-17] == 0.0).all()  # whichever route a row took
    bad = np.array([[0.0, -np.inf, np.nan], [1.0, -np.inf, 0.0]])
    log_norm = kernels._normalise_t(bad)
    assert np.isfinite(log_norm[0]) and not np.isfinite(log_norm[1:]).any()


@pytest.mark.parametrize("covariance_type,k,d", [("full", 6, 4), ("diag", 5, 3),
                                                 ("spherical", 3, 4)])
def test_a_rows_densities_do_not_depend_on_its_block(covariance_type, k, d):
    # A row at the outlier threshold must land on the same side whichever rows
    # it is predicted with (scikit-learn's check_methods_subset_invariance).
    params, _ = random_params(covariance_type, k, d, seed=9)
    X = np.random.default_rng(10).normal(scale=3.0, size=(20, d))
    assert kernels.Scorer.of(params).lin is not None
    whole = kernels.predict_block(X, params, "log_density")
    alone = np.concatenate([kernels.predict_block(X[i : i + 1], params, "log_density")
                            for i in range(len(X))])
    np.testing.assert_array_equal(alone, whole)
