"""The estimator: parity with scikit-learn, invariances, numerics and bad input."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import GaussianMixture as SkGM
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dgmm import EmptyComponentWarning, GaussianMixture
from tests.helpers import COVARIANCE_TYPES, as_kind, mixture_data, reference_init

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

FITTED_ARRAYS = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")


def assert_same_fit(a, b, rtol):
    np.testing.assert_allclose(a.weights_, b.weights_, rtol=rtol)
    np.testing.assert_allclose(a.means_, b.means_, rtol=rtol, atol=rtol * np.abs(b.means_).max())
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=rtol,
                               atol=rtol * np.abs(b.covariances_).max())
    np.testing.assert_allclose(a.lower_bound_, b.lower_bound_, rtol=rtol)


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", ["numpy", "dask-uneven", "zarr"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("shape", [(4, 3), (20, 2)], ids=["d4k3", "d20k2"])
def test_parity_with_sklearn(covariance_type, kind, shape):
    d, k = shape
    X, _, _ = mixture_data(n=3000, d=d, k=k, seed=d)
    init = reference_init(X, k, covariance_type)
    kw = dict(covariance_type=covariance_type, tol=0, max_iter=8, **init)
    ref = SkGM(k, **kw).fit(X)
    ours = GaussianMixture(k, **kw).fit(as_kind(X, kind))
    assert_same_fit(ours, ref, rtol=1e-6)
    np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=1e-6)
    assert ours.n_iter_ == ref.n_iter_ == 8
    assert not ours.converged_
    np.testing.assert_allclose(ours.precisions_, ref.precisions_, rtol=1e-6,
                               atol=1e-6 * np.abs(ref.precisions_).max())
    np.testing.assert_allclose(np.asarray(ours.score_samples(X)), ref.score_samples(X), rtol=1e-9)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-9)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_allclose(ours.bic(X), ref.bic(X), rtol=1e-9)
    np.testing.assert_allclose(ours.aic(X), ref.aic(X), rtol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_convergence_matches_sklearn(covariance_type, data):
    init = reference_init(data, 3, covariance_type)
    kw = dict(covariance_type=covariance_type, tol=1e-4, max_iter=200, **init)
    ref = SkGM(3, **kw).fit(data)
    ours = GaussianMixture(3, **kw).fit(da.from_array(data, chunks=500))
    assert ours.converged_ and ref.converged_
    assert ours.n_iter_ == ref.n_iter_
    assert_same_fit(ours, ref, rtol=1e-6)


# ---------------------------------------------------------------- invariances and numerics


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_chunking_invariance(covariance_type):
    X, _, _ = mixture_data(n=600, d=3, k=2, seed=3)
    init = reference_init(X, 2, covariance_type)
    fits = [
        GaussianMixture(2, covariance_type=covariance_type, tol=0, max_iter=4, **init).fit(
            da.from_array(X, chunks=(c, 3))
        )
        for c in (1, 7, 1000, X.shape[0])
    ]
    for other in fits[1:]:
        assert_same_fit(other, fits[0], rtol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_far_from_origin_is_stable(covariance_type):
    X, _, _ = mixture_data(n=4000, d=3, k=3, seed=5)
    init = reference_init(X, 3, covariance_type)
    shifted = dict(init, means_init=init["means_init"] + 1e6)
    kw = dict(covariance_type=covariance_type, tol=0, max_iter=10)
    base = GaussianMixture(3, **kw, **init).fit(X)
    far = GaussianMixture(3, **kw, **shifted).fit(da.from_array(X + 1e6, chunks=999))
    np.testing.assert_allclose(far.covariances_, base.covariances_, rtol=1e-6)
    np.testing.assert_allclose(far.means_ - 1e6, base.means_, atol=1e-6)
    np.testing.assert_allclose(far.lower_bound_, base.lower_bound_, rtol=1e-9)


def test_raw_moments_would_fail_the_stability_test():
    # The test above has teeth: the textbook raw-moment covariance of data at
    # +1e6 is off by far more than its 1e-6 tolerance.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100_000, 3)) + 1e6
    raw = X.T @ X / len(X) - np.outer(X.mean(0), X.mean(0))
    shifted = np.cov(X.T, bias=True)
    assert np.abs(raw - shifted).max() / np.abs(shifted).max() > 1e-6


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_likelihood_never_decreases(covariance_type):
    X, _, _ = mixture_data(n=2000, d=3, k=4, seed=7)
    gm = GaussianMixture(4, covariance_type=covariance_type, tol=0, max_iter=30,
                         init_params="random", random_state=1)
    gm.fit(da.from_array(X, chunks=300))
    lb = np.asarray(gm.lower_bounds_)
    assert len(lb) == 30
    assert np.all(np.diff(lb) >= -1e-10 * np.abs(lb[1:]))


def test_float32_accumulates_in_float64(data):
    """float32 data are fitted in float64 arithmetic; only the attributes are rounded."""
    X32 = data.astype(np.float32)
    init = reference_init(data, 3, "full")
    a = GaussianMixture(3, tol=0, max_iter=5, **init).fit(X32)
    b = GaussianMixture(3, tol=0, max_iter=5, **init).fit(X32.astype(np.float64))
    for name in FITTED_ARRAYS:
        assert getattr(a, name).dtype == np.float32
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name).astype(np.float32))
    assert a.lower_bound_ == b.lower_bound_


def test_integer_input_is_accepted(data):
    Xi = np.round(data * 10).astype(np.int32)
    init = reference_init(Xi.astype(float), 3, "diag")
    a = GaussianMixture(3, covariance_type="diag", tol=0, max_iter=3, **init).fit(Xi)
    b = GaussianMixture(3, covariance_type="diag", tol=0, max_iter=3, **init).fit(Xi.astype(float))
    assert_same_fit(a, b, rtol=1e-12)
    assert all(getattr(a, name).dtype == np.float64 for name in FITTED_ARRAYS)
    assert a.score_samples(Xi).dtype == np.float64


def computed(out):
    return out.compute() if isinstance(out, da.Array) else out


@pytest.mark.parametrize("kind", ["numpy", "dask-uneven", "zarr"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_in_float32_out(data, covariance_type, kind):
    """float32 data: float32 attributes and float outputs, the float64 fit rounded."""
    X32 = data.astype(np.float32)
    params = dict(n_components=3, covariance_type=covariance_type, tol=0, max_iter=4,
                  init_params="random_from_data", random_state=0)
    a = GaussianMixture(**params).fit(as_kind(X32, kind))
    b = GaussianMixture(**params).fit(as_kind(X32.astype(np.float64), kind))
    for name in FITTED_ARRAYS:
        assert getattr(b, name).dtype == np.float64
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name).astype(np.float32))
    assert a.lower_bound_ == b.lower_bound_
    for method in ("predict_proba", "score_samples"):
        out32 = getattr(a, method)(as_kind(X32, kind))
        out64 = getattr(b, method)(as_kind(X32.astype(np.float64), kind))
        assert out32.dtype == np.float32 and out64.dtype == np.float64
        got = computed(out32)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, computed(out64), rtol=1e-6, atol=1e-6)
    labels = computed(a.predict(as_kind(X32, kind)))
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, computed(b.predict(as_kind(X32, kind))))
    # score is a float64 mean whatever the input dtype
    np.testing.assert_allclose(a.score(as_kind(X32, kind)), b.score(X32.astype(np.float64)),
                               rtol=1e-6)
    assert a.sample(10)[0].dtype == np.float64  # as scikit-learn


def test_float32_warm_start_and_stream_continue_from_the_attributes(data):
    """Continuations of a float32 fit start from its float32 attributes (so restored
    attributes resume exactly), compute in float64 and stay float32."""
    X32 = data.astype(np.float32)
    gm = GaussianMixture(3, max_iter=2, warm_start=True, init_params="random_from_data",
                         random_state=0).fit(X32)
    gm.fit(X32)
    assert gm.means_.dtype == np.float32 and np.isfinite(gm.lower_bound_)
    stream = GaussianMixture(3, init_params="random_from_data", random_state=0)
    for batch in np.array_split(X32, 6)[:3]:
        stream.partial_fit(batch)
    assert stream.running_stats_.dtype == np.float64
    restored = clone(stream)
    for name, value in vars(stream).items():
        if name.endswith("_"):
            setattr(restored, name, value.copy() if isinstance(value, np.ndarray) else value)
    for batch in np.array_split(X32, 6)[3:]:
        stream.partial_fit(batch)
        restored.partial_fit(batch)
    for name in (*FITTED_ARRAYS, "running_stats_"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(stream, name))
    assert stream.means_.dtype == np.float32
    float64 = GaussianMixture(3, init_params="random_from_data", random_state=0)
    for batch in np.array_split(data, 6):
        float64.partial_fit(batch)
    assert float64.means_.dtype == np.float64
    np.testing.assert_allclose(stream.means_, float64.means_, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- unknown chunk sizes


def nan_filtered(data):
    """Rows with NaN (including all rows of one 500-row block) and both filtered copies."""
    X = data.copy()
    X[::7, 1] = np.nan
    X[1000:1500, 0] = np.nan
    Xd = da.from_array(X, chunks=500)
    return Xd[~da.isnan(Xd).any(axis=1)], X[~np.isnan(X).any(axis=1)]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_unknown_chunk_sizes_fit_like_numpy(data, covariance_type):
    lazy, eager = nan_filtered(data)
    assert np.isnan(lazy.shape[0])
    params = dict(n_components=3, covariance_type=covariance_type, tol=0, max_iter=5,
                  init_params="random_from_data", random_state=0)
    a = GaussianMixture(**params).fit(lazy)
    b = GaussianMixture(**params).fit(eager)
    assert_same_fit(a, b, rtol=1e-9)
    assert np.isnan(lazy.shape[0])  # the caller's array is left as it was


def test_unknown_chunk_sizes_predict_and_score(data):
    lazy, eager = nan_filtered(data)
    gm = GaussianMixture(3, init_params="random_from_data", random_state=0).fit(eager)
    for method in ("predict", "predict_proba", "score_samples"):
        out = getattr(gm, method)(lazy)
        assert isinstance(out, da.Array), method
        assert not np.isnan(out.shape[0]) and sum(out.chunks[0]) == len(eager)
        np.testing.assert_allclose(out.compute(), getattr(gm, method)(eager), rtol=1e-12)
    for method in ("score", "bic", "aic"):
        np.testing.assert_allclose(getattr(gm, method)(lazy), getattr(gm, method)(eager),
                                   rtol=1e-12)


def test_empty_component_warns_and_stays_finite():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 2))
    means = np.array([[0.0, 0.0], [1e3, 1e3]])  # the second component sees no data
    gm = GaussianMixture(2, means_init=means, weights_init=[0.5, 0.5], tol=0, max_iter=3,
                         precisions_init=np.stack([np.eye(2)] * 2))
    with pytest.warns(EmptyComponentWarning, match=r"Component\(s\) \[1\]"):
        gm.fit(X)
    for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(gm, attr)))
    np.testing.assert_allclose(gm.means_[1], means[1])
    assert gm.weights_[1] < 1e-12


# ---------------------------------------------------------------- outputs and API


def test_dask_input_gives_lazy_outputs(data):
    Xd = da.from_array(data, chunks=700)
    gm = GaussianMixture(3, init_params="random_from_data", random_state=0).fit(Xd)
    for method, shape in (("predict", (3000,)), ("predict_proba", (3000, 3)),
                          ("score_samples", (3000,))):
        out = getattr(gm, method)(Xd)
        assert isinstance(out, da.Array), method
        assert out.shape == shape
        np.testing.assert_allclose(out.compute(), getattr(gm, method)(data))
    labels = gm.fit_predict(Xd)
    assert isinstance(labels, da.Array)
    assert isinstance(gm.score(Xd), float)


def test_zarr_path_input(tmp_path, data):
    path = tmp_path / "x.zarr"
    arr = zarr.create_array(store=str(path), shape=data.shape, chunks=(512, 4), dtype="f8")
    arr[:] = data
    init = reference_init(data, 3, "full")
    a = GaussianMixture(3, tol=0, max_iter=4, **init).fit(str(path))
    b = GaussianMixture(3, tol=0, max_iter=4, **init).fit(data)
    assert_same_fit(a, b, rtol=1e-9)
    assert isinstance(a.predict(str(path)), da.Array)


def test_sklearn_tooling(data):
    gm = GaussianMixture(3, covariance_type="diag", random_state=0, init_params="random_from_data")
    params = gm.get_params()
    assert params["covariance_type"] == "diag" and params["n_components"] == 3
    other = clone(gm).set_params(n_components=2)
    assert other.n_components == 2 and gm.n_components == 3
    pipe = make_pipeline(StandardScaler(), gm).fit(data)
    assert pipe.predict(data).shape == (3000,)
    assert np.isfinite(pipe.score(data))


def test_sample(data):
    gm = GaussianMixture(3, covariance_type="full", random_state=0,
                         init_params="random_from_data").fit(data)
    for cov in COVARIANCE_TYPES:
        gm_c = GaussianMixture(3, covariance_type=cov, random_state=0,
                               init_params="random_from_data").fit(data)
        X, y = gm_c.sample(5000)
        assert X.shape == (5000, 4) and y.shape == (5000,)
        assert set(np.unique(y)) <= {0, 1, 2}
        for k in np.unique(y):
            np.testing.assert_allclose(X[y == k].mean(0), gm_c.means_[k], atol=0.3)
    with pytest.raises(ValueError, match="n_samples"):
        gm.sample(0)


def test_max_iter_zero_returns_initial_parameters(data):
    init = reference_init(data, 3, "full")
    gm = GaussianMixture(3, max_iter=0, **init).fit(data)
    np.testing.assert_allclose(gm.means_, init["means_init"])
    np.testing.assert_allclose(gm.precisions_, init["precisions_init"], rtol=1e-10)
    assert gm.n_iter_ == 0 and not gm.converged_


def test_convergence_warning(data):
    with pytest.warns(ConvergenceWarning):
        warnings.simplefilter("always")
        GaussianMixture(3, max_iter=1, init_params="random", random_state=0).fit(data)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_names_the_row(data, kind, bad):
    X = data.copy()
    X[2345, 1] = bad
    X = X if kind == "numpy" else da.from_array(X, chunks=1000)
    gm = GaussianMixture(3, init_params="random_from_data", random_state=0)
    with pytest.raises(ValueError, match=r"NaN or infinity \(first at row 2345, column 1"):
        gm.fit(X)


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros(10), "must be 2-D"),
        (np.zeros((4, 3, 2)), "must be 2-D"),
        (np.zeros((0, 3)), "0 rows"),
        (np.zeros((5, 0)), "0 features"),
        (np.array([["a", "b"], ["c", "d"]]), "numeric"),
        (np.ones((5, 2), dtype=complex), "Complex data not supported"),
        (np.array([["a", 1.0]] * 5, dtype=object), "could not convert string to float"),
        (np.ones((2, 2)), "n_samples >= n_components"),
    ],
)
def test_bad_input_shapes_and_dtypes(X, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(3).fit(X)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_components": 0}, "n_components must be an integer >= 1"),
        ({"covariance_type": "banana"}, "covariance_type must be one of"),
        ({"init_params": "kmedoids"}, "init_params must be one of"),
        ({"tol": -1.0}, "tol must be a number >= 0"),
        ({"reg_covar": -1e-3}, "reg_covar must be a number >= 0"),
        ({"max_iter": -1}, "max_iter must be an integer >= 0"),
        ({"n_init": 0}, "n_init must be an integer >= 1"),
        # each dgmm message goes on in scikit-learn's words, which its tests look for
        ({"means_init": np.zeros((2, 4))}, r"means_init must have shape \(3, 4\): The "
         r"parameter 'means' should have the shape of \(3, 4\), but got \(2, 4\)"),
        ({"weights_init": [0.5, 0.5]}, r"weights_init must have shape \(3,\): The "
         r"parameter 'weights' should have the shape of \(3,\), but got \(2,\)"),
        ({"weights_init": [0.5, 0.5, 0.5]}, r"weights_init must sum to 1: The parameter "
         r"'weights' should be normalized, but got sum\(weights\) = 1.50000"),
        ({"weights_init": [1.5, -0.25, -0.25]}, r"weights_init must lie in \[0, 1\]: The "
         r"parameter 'weights' should be in the range \[0, 1\], but got min value -0.25000, "
         r"max value 1.50000"),
        ({"precisions_init": -np.stack([np.eye(4)] * 3)},
         "positive definite .*'full precision' should be symmetric, positive-definite"),
        ({"precisions_init": np.stack([np.eye(4)] * 2)}, "precisions_init must have shape .*"
         "The parameter 'full precision' should have the shape of"),
        ({"covariance_type": "spherical", "precisions_init": -np.ones(3)},
         "precisions_init must be positive.*'spherical precision' should be positive"),
    ],
)
def test_bad_parameters(data, params, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**{"n_components": 3, **params}).fit(data)


def test_not_positive_definite_diag_precisions(data):
    with pytest.raises(ValueError, match="precisions_init must be positive"):
        GaussianMixture(3, covariance_type="diag", precisions_init=-np.ones((3, 4))).fit(data)


def test_predict_checks(data):
    gm = GaussianMixture(3, init_params="random_from_data", random_state=0)
    with pytest.raises(NotFittedError):
        gm.predict(data)
    gm.fit(data)
    with pytest.raises(ValueError, match="X has 3 features, but .* expecting 4 features"):
        gm.predict(data[:, :3])
    X = data.copy()
    X[17, 0] = np.nan
    with pytest.raises(ValueError, match="row 17"):
        gm.predict(X)


# ---------------------------------------------------------------- model selection


def test_select_n_components_shares_passes(monkeypatch):
    from dgmm import _em, select_n_components

    X, _, _ = mixture_data(n=4000, d=3, k=4, seed=1)
    calls = []
    real = _em.estep_pass
    monkeypatch.setattr(_em, "estep_pass", lambda b, ps, **kw: calls.append(len(ps)) or real(
        b, ps, **kw))
    best, table = select_n_components(da.from_array(X, chunks=1000), range(1, 7),
                                      random_state=0, n_init=2)
    assert best.n_components == 4
    assert [row["n_components"] for row in table] == [1, 2, 3, 4, 5, 6]
    assert calls[0] == 12  # every candidate and restart scored in the first pass
    assert len(calls) == max(row["n_iter"] for row in table) + 1  # + one final scoring pass
    np.testing.assert_allclose(table[3]["bic"], best.bic(X), rtol=1e-10)
    np.testing.assert_allclose(table[3]["aic"], best.aic(X), rtol=1e-10)


def test_select_n_components_rejects_bad_arguments(data):
    from dgmm import select_n_components

    with pytest.raises(ValueError, match="criterion"):
        select_n_components(data, [1, 2], criterion="hqic")
    with pytest.raises(ValueError, match="means_init cannot be used"):
        select_n_components(data, [1, 2], means_init=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        select_n_components(data[:3], [2, 5])


def test_callback_and_verbose_report_every_iteration(data, capsys):
    seen = []
    gm = GaussianMixture(3, init_params="random_from_data", random_state=0, tol=0, max_iter=6,
                         verbose=2, verbose_interval=2)
    gm.fit(data, callback=seen.append)
    assert [s["iteration"] for s in seen] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([s["lower_bound"] for s in seen], gm.lower_bounds_)
    np.testing.assert_allclose([s["change"] for s in seen[1:]], np.diff(gm.lower_bounds_))
    out = capsys.readouterr().out
    assert out.count("  iteration ") == 3 and "Initialisation 0" in out


# One driver: every candidate of a selection is fitted exactly as a lone fit would be.


def _select_and_fit(X, candidates, **params):
    from dgmm import select_n_components

    best, table = select_n_components(X, candidates, **params)
    return best, table, {k: GaussianMixture(k, **params).fit(X) for k in candidates}


def _assert_same_model(a, b):
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=0)
    assert (a.n_iter_, a.converged_) == (b.n_iter_, b.converged_)
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=1e-12)


@pytest.mark.parametrize("init_params", ["kmeans", "random_from_data"])
def test_select_candidates_equal_lone_fits(init_params):
    X, _, _ = mixture_data(n=3000, d=3, k=3, seed=2)
    best, table, lone = _select_and_fit(X, [2, 3, 4], random_state=0, n_init=2,
                                        init_params=init_params)
    _assert_same_model(best, lone[best.n_components])
    for row in table:
        model = lone[row["n_components"]]
        assert (row["n_iter"], row["converged"]) == (model.n_iter_, model.converged_)
        np.testing.assert_allclose(row["score"], model.score(X), rtol=1e-10)


def test_select_honours_algorithm():
    X, _, _ = mixture_data(n=3000, d=3, k=3, seed=2)
    Xd = da.from_array(X, chunks=250)
    best, table, lone = _select_and_fit(Xd, [2, 3], algorithm="minibatch", batch_size=500,
                                        max_iter=3, random_state=0)
    model = lone[best.n_components]
    _assert_same_model(best, model)
    assert best.n_steps_ == model.n_steps_ > 0
    np.testing.assert_array_equal(best.running_stats_, model.running_stats_)
    batch = GaussianMixture(best.n_components, max_iter=3, random_state=0).fit(Xd)
    assert not np.allclose(best.means_, batch.means_, rtol=1e-9)


def test_select_honours_polish_iter():
    X, _, _ = mixture_data(n=3000, d=3, k=3, seed=2)
    params = dict(algorithm="minibatch", batch_size=500, max_iter=2, polish_iter=3, tol=0.0,
                  random_state=0)
    best, table, lone = _select_and_fit(X, [2, 3], **params)
    assert [row["n_iter"] for row in table] == [5, 5]  # 2 epochs + 3 polish passes
    _assert_same_model(best, lone[best.n_components])


def test_select_honours_warm_start():
    # New candidates have nothing to continue: warm_start starts them as a cold fit does.
    X, _, _ = mixture_data(n=2000, d=3, k=3, seed=2)
    best, _, lone = _select_and_fit(X, [2, 3], warm_start=True, random_state=0)
    _assert_same_model(best, lone[best.n_components])


@pytest.mark.parametrize("cache", [True, False])
def test_select_honours_cache(cache, capsys):
    X, _, _ = mixture_data(n=2000, d=3, k=3, seed=2)
    Xd = da.from_array(X, chunks=500)
    best, _, lone = _select_and_fit(Xd, [3], cache=cache, verbose=1, random_state=0)
    lines = [line for line in capsys.readouterr().out.splitlines() if "cache=" in line]
    choice = "persisting it in memory" if cache else "streaming it from its source"
    assert len(lines) == 2 and all(choice in line for line in lines)
    _assert_same_model(best, lone[3])


def test_select_honours_verbose(capsys):
    import re

    X, _, _ = mixture_data(n=2000, d=3, k=3, seed=2)
    params = dict(verbose=2, verbose_interval=1, random_state=0, n_init=2, max_iter=5, tol=0)
    from dgmm import select_n_components

    select_n_components(X, [3], **params)
    selected = capsys.readouterr().out
    GaussianMixture(3, **params).fit(X)
    fitted = capsys.readouterr().out
    assert selected.count("  iteration ") == 5 and "Initialisation 1" in selected

    def untimed(text):
        return re.sub(r"\d+\.\d+s\b", "", text)

    assert untimed(selected) == untimed(fitted)
    select_n_components(X, [2, 3], **dict(params, verbose=1))
    out = capsys.readouterr().out
    assert "n_components=2, covariance_type='full': Initialisation 1" in out
    assert "n_components=3, covariance_type='full': Initialisation 0" in out


def test_select_checkpoint_resume_equals_uninterrupted(tmp_path):
    from dgmm import select_n_components

    X, _, _ = mixture_data(n=2000, d=3, k=3, seed=2)
    params = dict(random_state=0, n_init=2, tol=0, max_iter=6, init_params="random")
    _, full = select_n_components(X, [2, 3], **params)

    def die_after_three(info):
        if info["iteration"] == 3:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        select_n_components(X, [2, 3], checkpoint=ckpt, callback=die_after_three, **params)
    seen = []
    _, resumed = select_n_components(X, [2, 3], checkpoint=ckpt, resume=True,
                                     callback=seen.append, **params)
    assert seen[0]["iteration"] == 4
    for a, b in zip(full, resumed, strict=True):
        assert a["n_iter"] == b["n_iter"]
        np.testing.assert_allclose(a["bic"], b["bic"], rtol=1e-12)


def test_fit_ignores_labels_explicitly(data):
    # y is accepted for scikit-learn pipelines and never used: the same model either way.
    a = GaussianMixture(3, random_state=0).fit(data)
    b = GaussianMixture(3, random_state=0).fit(data, np.arange(len(data)) % 3)
    np.testing.assert_array_equal(a.means_, b.means_)
