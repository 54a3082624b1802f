"""Initialisation: k-means / k-means++ / random starts, restarts, warm start."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.datasets import load_digits
from sklearn.mixture import GaussianMixture as SkGM

from dgmm import GaussianMixture, _init
from dgmm._passes import as_blocks
from tests.helpers import COVARIANCE_TYPES, mixture_data

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def max_mean_error(fitted, true):
    cost = ((fitted[:, None, :] - true[None]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    return np.sqrt(cost[rows, cols]).max()


@pytest.fixture(scope="module")
def eight_in_ten():
    rng = np.random.default_rng(42)
    means = rng.uniform(-12, 12, size=(8, 10))
    labels = rng.integers(0, 8, size=40_000)
    return means[labels] + rng.normal(size=(40_000, 10)), means


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_kmeans_init_recovers_true_means(eight_in_ten, kind, covariance_type):
    X, means = eight_in_ten
    X = X if kind == "numpy" else da.from_array(X, chunks=(3_333, 10))
    gm = GaussianMixture(8, covariance_type=covariance_type, random_state=0).fit(X)
    assert gm.converged_
    assert max_mean_error(gm.means_, means) < 0.15  # ~3 standard errors of a mean


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_every_init_is_reproducible(init_params, data):
    X = da.from_array(data, chunks=512)
    fits = [
        GaussianMixture(3, init_params=init_params, random_state=7, max_iter=5, tol=0).fit(X)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(fits[0].means_, fits[1].means_)
    np.testing.assert_array_equal(fits[0].covariances_, fits[1].covariances_)


def test_digits_no_worse_than_sklearn():
    X = load_digits().data
    ours, ref = [], []
    for seed in range(5):
        ours.append(GaussianMixture(10, covariance_type="diag", random_state=seed).fit(X).score(X))
        ref.append(SkGM(10, covariance_type="diag", random_state=seed).fit(X).score(X))
    assert np.mean(ours) >= np.mean(ref) - 0.01 * abs(np.mean(ref))


@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_more_restarts_never_worse(init_params):
    X, _, _ = mixture_data(n=3000, d=3, k=6, seed=11)
    for seed in range(3):
        kw = dict(init_params=init_params, random_state=seed, covariance_type="diag")
        one = GaussianMixture(6, n_init=1, **kw).fit(X)
        three = GaussianMixture(6, n_init=3, **kw).fit(X)
        assert three.lower_bound_ >= one.lower_bound_


@pytest.fixture
def pass_log(monkeypatch):
    """Names of the per-block kernels of every initialisation data pass."""
    passes = []
    real = _init.block_pass

    def counting(blocks, fn, *args, **kwargs):
        passes.append(fn.__name__)
        return real(blocks, fn, *args, **kwargs)

    monkeypatch.setattr(_init, "block_pass", counting)
    return passes


@pytest.mark.parametrize("n_init", [1, 4])
def test_restarts_share_data_passes(pass_log, data, n_init):
    # N fits in the sample: one sample pass and one labels pass, whatever n_init.
    X = da.from_array(data, chunks=250)
    GaussianMixture(3, n_init=n_init, random_state=0, max_iter=1).fit(X)
    assert pass_log == ["_sample_block", "_hard_block"]


def test_kmeans_pass_count_is_bounded_out_of_core(pass_log, monkeypatch):
    monkeypatch.setattr(_init, "KMEANS_SAMPLE_ROWS", 500)  # force sample << N
    X, _, means = mixture_data(n=20_000, d=3, k=4, seed=2)
    gm = GaussianMixture(4, random_state=0, n_init=2).fit(da.from_array(X, chunks=2000))
    assert pass_log[0] == "_sample_block"
    assert 3 <= len(pass_log) <= 2 + _init.KMEANS_LLOYD_PASSES
    assert set(pass_log[1:]) == {"_hard_block"}
    assert max_mean_error(gm.means_, means) < 0.2


def test_kmeans_plusplus_spreads_seeds():
    rng = np.random.default_rng(0)
    centers_true = np.array([[0, 0], [100, 0], [0, 100], [100, 100]], dtype=float)
    X = np.repeat(centers_true, 50, axis=0) + rng.normal(size=(200, 2))
    seeds = _init.kmeans_plusplus(X, 4, np.random.default_rng(1))
    assert max_mean_error(seeds, centers_true) < 5


def test_sample_kmeans_keeps_the_restart_of_lowest_inertia():
    X, _, _ = mixture_data(n=2000, d=2, k=6, seed=4)
    tol = 1e-4 * X.var(axis=0).mean()

    def inertia(centers):
        return ((X[:, None, :] - centers[None]) ** 2).sum(axis=2).min(axis=1).sum()

    singles = [inertia(_init.lloyd_iterations(
        X, _init.kmeans_plusplus(X, 6, np.random.default_rng([7, 1, r])), tol)[0])
        for r in range(5)]
    sample = _init.Sample(X, np.full(len(X), -1), np.ones(len(X)))
    best = _init.sample_kmeans(sample, 6, seed=7, tol=tol, n_restarts=5)
    np.testing.assert_allclose(inertia(best), min(singles), rtol=1e-10)


def test_sample_rows_is_bounded_and_uniform():
    X = np.arange(100_000, dtype=float).reshape(-1, 1)
    blocks = as_blocks(da.from_array(X, chunks=7_000))
    sample = _init.sample_rows(blocks, 5_000, seed=3).rows
    assert 4_500 < len(sample) < 5_500
    assert abs(sample.mean() - X.mean()) < 0.03 * X.mean()


def test_warm_start_continues():
    X, _, _ = mixture_data(n=2000, d=3, k=3, seed=4)
    kw = dict(init_params="random_from_data", random_state=0, tol=0)
    straight = GaussianMixture(3, max_iter=10, **kw).fit(X)
    warm = GaussianMixture(3, max_iter=4, warm_start=True, **kw).fit(X)
    warm.set_params(max_iter=6).fit(X)
    np.testing.assert_allclose(warm.means_, straight.means_, rtol=1e-12)
    np.testing.assert_allclose(warm.covariances_, straight.covariances_, rtol=1e-12)
    assert warm.n_iter_ == 6


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random"])
def test_init_detects_non_finite_input(init_params, data):
    X = data.copy()
    X[1234, 2] = np.nan
    with pytest.raises(ValueError, match="row 1234, column 2"):
        GaussianMixture(3, init_params=init_params, random_state=0).fit(
            da.from_array(X, chunks=1000))


def test_random_from_data_picks_the_rows_sklearn_picks(data):
    ours = GaussianMixture(3, init_params="random_from_data", random_state=5, max_iter=0).fit(data)
    ref = SkGM(3, init_params="random_from_data", random_state=5, max_iter=0).fit(data)
    np.testing.assert_allclose(ours.means_, ref.means_)


def test_hard_assignment_stats_is_a_lloyd_step():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(300, 2))
    centers = np.array([[-1.0, 0.0], [1.0, 0.0]])
    st = _init.hard_assignment_stats(X, centers, "spherical")
    labels = _init.nearest_center(X, centers)
    np.testing.assert_array_equal(labels, (X[:, 0] > 0).astype(int))
    new = _init.lloyd_update(st)
    np.testing.assert_allclose(new, [X[labels == 0].mean(0), X[labels == 1].mean(0)])
    inertia = sum(((X[labels == j] - centers[j]) ** 2).sum() for j in range(2))
    np.testing.assert_allclose(st.qk.sum(), inertia)
