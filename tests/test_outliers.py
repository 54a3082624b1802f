"""Anomaly detection: the exact two-pass quantile and the scikit-learn outlier API."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from dgmm import GaussianMixture, outliers
from dgmm.outliers import (
    Candidates,
    GaussianMixtureOutlierDetector,
    KeyHistogram,
    bins_of,
    key_shift,
    keys_to_floats,
    monotone_keys,
    target_rank,
)
from tests.helpers import as_kind, mixture_data

KINDS = ["numpy", "dask-uneven", "zarr"]


@pytest.fixture(scope="module")
def fitted():
    X, _, _ = mixture_data(n=3000, d=3, k=3, seed=5)
    return X, GaussianMixture(3, random_state=0).fit(X)


def _exact(scores, q):
    return np.quantile(scores, q, method=outliers.QUANTILE_METHOD)


# ------------------------------------------------------------- keys and selection


def test_keys_sort_like_the_floats_and_map_back():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.normal(size=500) * 1e-300, -rng.exponential(50, 500), rng.exponential(50, 500),
        [0.0, 5e-324, -5e-324, np.inf, -np.inf, np.finfo(float).max, -np.finfo(float).max],
    ])
    keys = monotone_keys(x)
    order = np.argsort(x, kind="stable")
    assert np.all(keys[order][1:] > keys[order][:-1])  # distinct values: strictly increasing
    np.testing.assert_array_equal(keys_to_floats(keys), x)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 999, 1000, 100_001])
def test_target_rank_is_numpys_order_statistic(n):
    for q in [0.0, 1e-6, 0.001, 0.01, 0.05, 1 / 3, 0.5, 0.99, 1.0]:
        assert target_rank(n, q) == np.quantile(np.arange(n), q, method="higher"), q


@pytest.mark.parametrize(("n", "bits"), [(1, 8), (3000, 8), (10**6, 10), (10**9, 15), (10**15, 20)])
def test_bins_split_a_binade_in_about_sqrt_n(n, bits):
    assert outliers.mantissa_bits(n) == bits
    # equal-width bins: 2**bits per binade, here [1, 2)
    x = np.array([1.0, 1.0 + 0.99 * 2.0**-bits, 1.0 + 2.0**-bits, np.nextafter(2.0, 0), 2.0])
    bins = bins_of(x, key_shift(n))
    assert (bins - bins[0]).tolist() == [0, 0, 1, 2**bits - 1, 2**bits]


def _two_pass_select(parts, q):
    """The selection of :func:`dgmm.outliers.score_quantile` on in-memory parts."""
    shift = key_shift(sum(map(len, parts)))
    hist = KeyHistogram.merge(*[KeyHistogram.of(p, shift) for p in parts])
    rank = target_rank(hist.n, q)
    bin_, below, m = hist.locate(rank)
    t = rank - below
    need, from_bottom = (t, True) if t < m - t else (m - 1 - t, False)
    picked = [p[bins_of(p, shift) == np.uint64(bin_)] for p in parts]
    found = Candidates.merge(*[Candidates.of(p, need, from_bottom) for p in picked])
    assert len(found.values) <= need + 1  # the memory bound of pass 2
    return found.select()


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: rng.normal(-10, 3, 20_000),
        lambda rng: np.round(rng.normal(-10, 3, 20_000), 1),  # many ties
        lambda rng: 1.0 + 1e-9 * rng.integers(0, 5000, 20_000),  # all in one bin
        lambda rng: np.full(20_000, -7.25),
        lambda rng: rng.standard_cauchy(20_000),  # both signs, huge range
    ],
    ids=["normal", "ties", "one-bin", "constant", "cauchy"],
)
@pytest.mark.parametrize("q", [0.0001, 0.01, 0.3, 0.5, 0.97])
def test_histogram_then_candidates_select_numpys_quantile(make, q):
    x = make(np.random.default_rng(1))
    parts = np.array_split(x, 13)
    assert _two_pass_select(parts, q) == _exact(x, q)


# ------------------------------------------------------------- the estimator


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("contamination", [0.001, 0.01, 0.25, 0.5])
def test_threshold_equals_the_quantile_of_in_memory_scores(fitted, kind, contamination):
    X, gm = fitted
    det = GaussianMixtureOutlierDetector(gm, contamination=contamination).fit(as_kind(X, kind))
    scores = gm.score_samples(X)
    assert det.threshold_ == _exact(scores, contamination)
    assert det.offset_ == det.threshold_
    assert (scores < det.threshold_).sum() == target_rank(len(X), contamination)


def test_threshold_takes_at_most_two_passes(fitted, monkeypatch):
    X, gm = fitted
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1].__name__)
        return block_pass(*args, **kwargs)

    block_pass = outliers.block_pass
    monkeypatch.setattr(outliers, "block_pass", counting)
    GaussianMixtureOutlierDetector(gm).fit(as_kind(X, "dask-uneven"))
    assert calls == ["_histogram_block", "_candidates_block"]


@pytest.mark.parametrize("kind", ["numpy", "dask-uneven"])
def test_planted_far_outliers_are_found(kind):
    rng = np.random.default_rng(3)
    X, _, _ = mixture_data(n=19_800, d=3, k=3, seed=3)
    far = rng.uniform(-1, 1, (200, 3))
    far = 40 * far / np.linalg.norm(far, axis=1, keepdims=True)  # 40 from the origin
    Xo = np.vstack([X, far])
    det = GaussianMixtureOutlierDetector(GaussianMixture(3, random_state=0), contamination=0.01)
    labels = np.asarray(det.fit_predict(as_kind(Xo, kind)))
    recall = (labels[-200:] == -1).mean()
    assert recall >= 0.9
    assert set(np.unique(labels)) == {-1, 1}
    assert (labels == -1).sum() == target_rank(len(Xo), 0.01)


def test_outputs_are_lazy_for_dask_and_numpy_otherwise(fitted):
    X, gm = fitted
    det = GaussianMixtureOutlierDetector(gm, contamination=0.05).fit(X)
    Xd = as_kind(X, "dask-uneven")
    for method in ("predict", "decision_function", "score_samples"):
        lazy, eager = getattr(det, method)(Xd), getattr(det, method)(X)
        assert isinstance(lazy, da.Array) and isinstance(eager, np.ndarray)
        # GEMMs over other block shapes may round the last bit differently
        np.testing.assert_allclose(lazy.compute(), eager, rtol=1e-13)
    np.testing.assert_array_equal(det.predict(X), np.where(det.decision_function(X) < 0, -1, 1))
    assert det.score_samples(X.astype(np.float32)).dtype == np.float64


def test_a_fitted_mixture_is_used_as_is_and_an_unfitted_one_is_fitted(fitted):
    X, gm = fitted
    assert GaussianMixtureOutlierDetector(gm).fit(X).mixture_ is gm
    fresh = GaussianMixture(3, random_state=0)
    det = GaussianMixtureOutlierDetector(fresh).fit(X)
    assert not hasattr(fresh, "means_") and det.mixture_ is not fresh
    np.testing.assert_allclose(det.mixture_.means_, gm.means_)
    assert GaussianMixtureOutlierDetector().fit(X).mixture_.n_components == 1


@pytest.mark.parametrize("contamination", [0, -0.1, 0.6, "auto", True, np.nan])
def test_bad_contamination_is_refused(fitted, contamination):
    X, gm = fitted
    with pytest.raises(ValueError, match=r"contamination must be a number in \(0, 0.5\]"):
        GaussianMixtureOutlierDetector(gm, contamination=contamination).fit(X)


def test_wrong_features_and_unfitted_use_are_refused(fitted):
    X, gm = fitted
    with pytest.raises(ValueError, match="X has 2 features"):
        GaussianMixtureOutlierDetector(gm).fit(X[:, :2])
    with pytest.raises(NotFittedError):
        GaussianMixtureOutlierDetector(gm).predict(X)


@parametrize_with_checks(
    [GaussianMixtureOutlierDetector(GaussianMixture(random_state=0), contamination=0.1)]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)

