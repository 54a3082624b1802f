"""BayesianGaussianMixture: parity with scikit-learn, invariances, the CLI, model files."""

from __future__ import annotations

import json
import warnings

import dask.array as da
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture as SkBGM

import dgmm
from dgmm import BayesianGaussianMixture
from dgmm.cli import main
from tests.helpers import COVARIANCE_TYPES, as_kind, mixture_data

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
PRIOR_TYPES = ["dirichlet_process", "dirichlet_distribution"]

# Every fitted attribute scikit-learn sets, compared number for number.
ATTRIBUTES = (
    "weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_",
    "weight_concentration_", "mean_precision_", "degrees_of_freedom_",
    "weight_concentration_prior_", "mean_precision_prior_", "mean_prior_",
    "degrees_of_freedom_prior_", "covariance_prior_", "lower_bound_", "lower_bounds_",
)
# What a variational fit's state is (what a warm start continues from).
STATE = ("weights_", "means_", "covariances_", "precisions_cholesky_", "weight_concentration_",
         "mean_precision_", "degrees_of_freedom_", "weight_concentration_prior_",
         "mean_precision_prior_", "mean_prior_", "degrees_of_freedom_prior_",
         "covariance_prior_", "n_features_in_", "lower_bound_")


@pytest.fixture(scope="module")
def small():
    X, _, _ = mixture_data(n=300, d=3, k=3, seed=1)
    return X


def assert_same_fit(ours, ref, rtol=1e-6):
    for name in ATTRIBUTES:
        mine, theirs = getattr(ours, name), getattr(ref, name)
        # scikit-learn's tied lower bound is a 1-element array; ours a float
        np.testing.assert_allclose(np.asarray(mine, dtype=float).ravel(),
                                   np.asarray(theirs, dtype=float).ravel(), rtol=rtol,
                                   atol=0, err_msg=name)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.converged_ == ref.converged_


def sklearn_start(X, kw):
    """scikit-learn's model after its initialisation only, and ours set to it."""
    ref = SkBGM(**kw, max_iter=0, warm_start=True).fit(X)
    ours = BayesianGaussianMixture(**kw, max_iter=0, warm_start=True)
    for name in STATE:
        setattr(ours, name, getattr(ref, name))
    return ours, ref


@pytest.mark.parametrize("kind", ["numpy", "dask-uneven"])
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_matches_sklearn_attribute_for_attribute(small, covariance_type, prior_type, kind):
    kw = dict(n_components=4, covariance_type=covariance_type,
              weight_concentration_prior_type=prior_type, init_params="random_from_data",
              random_state=0, tol=0)
    X = as_kind(small, kind) if kind == "numpy" else da.from_array(
        small, chunks=((100, 7, 150, 43), 3))
    if covariance_type == "tied":
        # scikit-learn's tied covariance assumes each row's responsibilities sum
        # to one, which its random_from_data start (one row per component) breaks:
        # it counts every row's scatter. Ours counts the chosen rows only, so the
        # tied runs start from scikit-learn's initial posterior, then both iterate.
        ours, ref = sklearn_start(small, kw)
        ours.set_params(max_iter=8).fit(X)
        ref.set_params(max_iter=8).fit(small)
    else:
        ref = SkBGM(**kw, max_iter=8).fit(small)
        ours = BayesianGaussianMixture(**kw, max_iter=8).fit(X)
    assert_same_fit(ours, ref)
    assert isinstance(ours.weight_concentration_, tuple) == (prior_type == "dirichlet_process")
    np.testing.assert_allclose(ours.score_samples(small), ref.score_samples(small), rtol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(small), ref.predict_proba(small),
                               rtol=1e-6, atol=1e-12)


def test_given_priors_match_sklearn(small):
    kw = dict(n_components=3, covariance_type="diag", init_params="random_from_data",
              random_state=2, tol=0, max_iter=5, weight_concentration_prior=0.5,
              mean_precision_prior=0.3, mean_prior=[1.0, 2.0, 3.0], degrees_of_freedom_prior=4.5,
              covariance_prior=[2.0, 1.0, 0.5])
    assert_same_fit(BayesianGaussianMixture(**kw).fit(small), SkBGM(**kw).fit(small))


def test_fits_are_the_same_for_any_chunking():
    X, _, _ = mixture_data(n=150, d=2, k=3, seed=3)
    kw = dict(n_components=3, init_params="random_from_data", random_state=1, tol=0,
              max_iter=4)
    base = BayesianGaussianMixture(**kw).fit(X)
    for rows in (1, 7, 1000, len(X)):
        fit = BayesianGaussianMixture(**kw).fit(da.from_array(X, chunks=(rows, 2)))
        for name in ("weights_", "means_", "covariances_", "lower_bound_"):
            np.testing.assert_allclose(getattr(fit, name), getattr(base, name), rtol=1e-10,
                                       err_msg=f"{name}, chunks of {rows} rows")


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_data_far_from_the_origin_keep_their_digits(covariance_type):
    X, _, _ = mixture_data(n=2000, d=3, k=3, seed=4)
    kw = dict(n_components=4, covariance_type=covariance_type, init_params="random_from_data",
              random_state=0, tol=0, max_iter=10)
    base = BayesianGaussianMixture(**kw).fit(X)
    far = BayesianGaussianMixture(**kw).fit(da.from_array(X + 1e6, chunks=(999, 3)))
    np.testing.assert_allclose(far.means_ - 1e6, base.means_, atol=1e-6)
    np.testing.assert_allclose(far.covariances_, base.covariances_, rtol=1e-6)
    np.testing.assert_allclose(far.weights_, base.weights_, rtol=1e-6)
    np.testing.assert_allclose(far.lower_bound_, base.lower_bound_, rtol=1e-6)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_lower_bound_never_decreases(covariance_type, prior_type):
    X, _, _ = mixture_data(n=600, d=3, k=3, seed=5)
    model = BayesianGaussianMixture(6, covariance_type=covariance_type,
                                    weight_concentration_prior_type=prior_type, tol=0,
                                    max_iter=40, random_state=0).fit(X)
    bounds = np.asarray(model.lower_bounds_)
    assert len(bounds) == 40
    assert np.all(np.diff(bounds) >= -1e-9 * np.abs(bounds[1:])), np.diff(bounds).min()


def test_twelve_components_through_the_cli_keep_what_the_data_need(tmp_path):
    rng = np.random.default_rng(0)
    true_means = np.array([[0, 0], [6, 0], [0, 6], [6, 6]], dtype=float)
    X = true_means[rng.integers(0, 4, 2000)] + rng.normal(size=(2000, 2))
    store = tmp_path / "four.zarr"
    zarr.create_array(store=str(store), shape=X.shape, chunks=(700, 2), dtype=X.dtype)[:] = X
    model_path = tmp_path / "bayes.npz"
    settings = ["--n-components", 12, "--max-iter", 500, "--seed", 0]
    fit = _cli("fit", store, *settings, "--bayesian", "--out", model_path)
    assert "lower bound" in fit.stderr and "saved" in fit.stderr
    model = dgmm.load(model_path)
    assert isinstance(model, BayesianGaussianMixture)
    kept = model.weights_ > 0.01
    distances = np.linalg.norm(model.means_[kept][None] - true_means[:, None], axis=2)
    assert distances.min(axis=1).max() < 0.3
    ref = SkBGM(n_components=12, max_iter=500, random_state=0).fit(X)
    assert kept.sum() <= (ref.weights_ > 0.01).sum()

    info = _cli("info", model_path).stdout
    effective = int(np.sum(model.weights_ > 1 / 1200))
    assert f"effective         {effective} of 12 components" in info
    assert info.count("  weight ") == effective

    out = tmp_path / "pred.zarr"
    _cli("predict", model_path, store, "--out", out, "--proba")
    written = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(written["labels"][:], model.predict(X))
    np.testing.assert_allclose(written["proba"][:], model.predict_proba(X), rtol=1e-10,
                               atol=1e-14)
    scores = json.loads(_cli("score", model_path, store, "--json").stdout)
    np.testing.assert_allclose(scores["mean_log_likelihood"], model.score(X), rtol=1e-12)


def test_plot_fades_switched_off_components(small):
    pytest.importorskip("matplotlib")
    from dgmm import plot

    model = BayesianGaussianMixture(8, random_state=0, max_iter=200).fit(small)
    inactive = int(np.sum(model.weights_ <= 0.01 / 8))
    assert inactive > 0
    fig = plot.ellipses(model, small, features=(0, 1), n_points=200)
    alphas = [p.get_alpha() for p in fig.axes[0].patches]
    assert alphas.count(plot.INACTIVE_ALPHA) == len(plot.SIGMAS) * inactive
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_prior_options_need_bayesian(tmp_path):
    proc = _cli("fit", tmp_path / "none.zarr", "--n-components", 2, "--out", tmp_path / "m.npz",
                "--weight-concentration-prior", 0.1, check=False)
    assert proc.returncode == 2


def test_model_file_round_trip(tmp_path, small):
    model = BayesianGaussianMixture(3, covariance_type="tied", random_state=0, max_iter=20,
                                    mean_prior=np.zeros(3)).fit(small)
    path = tmp_path / "bgm.npz"
    dgmm.save(model, path)
    np.load(path, allow_pickle=False)  # no pickle inside
    loaded = dgmm.load(path)
    assert type(loaded) is BayesianGaussianMixture
    assert loaded.get_params() == {**model.get_params(), "mean_prior": loaded.mean_prior}
    np.testing.assert_array_equal(loaded.mean_prior, model.mean_prior)
    for name in (*ATTRIBUTES, "n_iter_", "converged_"):
        np.testing.assert_array_equal(np.asarray(getattr(loaded, name), dtype=float),
                                      np.asarray(getattr(model, name), dtype=float), name)
    assert isinstance(loaded.weight_concentration_, tuple)
    np.testing.assert_array_equal(loaded.predict_proba(small), model.predict_proba(small))


def test_methods_follow_sklearn(small):
    model = BayesianGaussianMixture(4, random_state=0, max_iter=30)
    labels = model.fit_predict(small)
    np.testing.assert_array_equal(labels, model.predict(small))
    assert model.score(small) == pytest.approx(model.score_samples(small).mean(), rel=1e-12)
    Xs, ys = model.sample(50)
    assert Xs.shape == (50, 3) and ys.shape == (50,)
    lazy = model.predict_proba(da.from_array(small, chunks=(100, 3)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), model.predict_proba(small), rtol=1e-12)
    assert clone(model).get_params() == model.get_params()
    with pytest.raises(ValueError, match="degrees_of_freedom_prior"):
        BayesianGaussianMixture(2, degrees_of_freedom_prior=1.0).fit(small)
    with pytest.raises(ValueError, match="weight_concentration_prior_type"):
        BayesianGaussianMixture(2, weight_concentration_prior_type="beta").fit(small)


def test_checkpoint_resume_equals_uninterrupted(tmp_path, small):
    kw = dict(n_components=4, init_params="random_from_data", random_state=0, tol=0, max_iter=6)
    straight = BayesianGaussianMixture(**kw).fit(small)

    def die_after_three(info):
        if info["iteration"] == 3:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        BayesianGaussianMixture(**kw).fit(small, checkpoint=ckpt, callback=die_after_three)
    resumed = BayesianGaussianMixture(**kw).fit(small, checkpoint=ckpt, resume=True)
    for name in ATTRIBUTES:
        np.testing.assert_allclose(np.asarray(getattr(resumed, name), dtype=float),
                                   np.asarray(getattr(straight, name), dtype=float),
                                   rtol=1e-12, err_msg=name)


def test_minibatch_and_partial_fit_find_the_components():
    X, _, means = mixture_data(n=6000, d=2, k=3, seed=6)
    model = BayesianGaussianMixture(6, algorithm="minibatch", batch_size=500, max_iter=15,
                                    random_state=0).fit(da.from_array(X, chunks=(1000, 2)))
    assert model.n_steps_ > 0 and np.isclose(model.weights_.sum(), 1.0)
    _assert_near(model, means, within=1.5)

    stream = BayesianGaussianMixture(6, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for batch in np.array_split(X, 12):
            stream.partial_fit(batch)
    assert stream.n_samples_seen_ == len(X)
    assert np.isclose(stream.weights_.sum(), 1.0)
    _assert_near(stream, means, within=1.5)


def test_one_minibatch_of_all_rows_is_one_batch_iteration():
    """Stochastic variational inference scales the running statistics to the data size."""
    X, _, _ = mixture_data(n=1000, d=2, k=3, seed=7)
    kw = dict(n_components=4, random_state=0, init_params="random_from_data", max_iter=1)
    batch = BayesianGaussianMixture(**kw).fit(X)
    step = BayesianGaussianMixture(algorithm="minibatch", batch_size=len(X), **kw).fit(X)
    for name in ("weights_", "means_", "covariances_", "degrees_of_freedom_",
                 "mean_precision_"):
        np.testing.assert_allclose(getattr(step, name), getattr(batch, name), rtol=1e-10)


def _assert_near(model, true_means, within):
    """Every true mean has a fitted one near it, and every weighty fitted mean a true one.

    A short stochastic run keeps components split in two (its steps shrink
    before the split ones are switched off), hence the slack.
    """
    kept = model.means_[model.weights_ > 0.05]
    distances = np.linalg.norm(kept[None] - true_means[:, None], axis=2)
    assert distances.min(axis=0).max() < within and distances.min(axis=1).max() < within


def _cli(*args, check=True):
    """The ``dgmm`` command line in this process (as tests/test_cli.py's CliRunner cases)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if check and result.exit_code != 0:
        raise AssertionError(f"dgmm {args} exited {result.exit_code}: {result.stderr}")
    result.returncode = result.exit_code
    return result
