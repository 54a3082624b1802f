"""Sample weights and partial labels: per-row data that travel with the rows of every pass."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import dgmm
from dgmm import GaussianMixture, select_n_components
from dgmm.outliers import GaussianMixtureOutlierDetector
from dgmm.preprocessing import PCA, StandardScaler
from tests.helpers import COVARIANCE_TYPES, as_kind, mixture_data, reference_init

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def weighted():
    """Data, integer weights (with zeros), and the data with each row repeated that often."""
    X, _, _ = mixture_data(n=1500, d=3, k=3, seed=5)
    w = np.random.default_rng(1).integers(0, 4, len(X))
    return X, w, np.repeat(X, w, axis=0)


def assert_same_model(a, b, rtol=1e-9):
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_allclose(a.lower_bound_, b.lower_bound_, rtol=rtol)


# --------------------------------------------------------------------------
# Sample weights
# --------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("kind", ["numpy", "dask-uneven"])
def test_integer_weights_equal_repeated_rows(weighted, covariance_type, kind):
    X, w, repeated = weighted
    init = reference_init(X, 3, covariance_type)
    kw = dict(covariance_type=covariance_type, tol=0, max_iter=8, **init)
    w_in = w if kind == "numpy" else da.from_array(w, chunks=400)  # not X's chunks
    fitted = GaussianMixture(3, **kw).fit(as_kind(X, kind), sample_weight=w_in)
    assert_same_model(fitted, GaussianMixture(3, **kw).fit(repeated))


def test_zero_weight_removes_the_row(weighted):
    X, w, _ = weighted
    init = reference_init(X, 3, "full")
    kw = dict(tol=0, max_iter=8, **init)
    fitted = GaussianMixture(3, **kw).fit(X, sample_weight=(w > 0).astype(float))
    assert_same_model(fitted, GaussianMixture(3, **kw).fit(X[w > 0]))


def test_weighted_kmeans_start_counts_each_row_by_its_weight(weighted):
    # N below the k-means sample size: the whole data are the sample, so the
    # start equals the start of the repeated rows up to the random seeding,
    # and the fit reaches the same optimum.
    X, w, repeated = weighted
    a = GaussianMixture(3, random_state=0).fit(X, sample_weight=w)
    b = GaussianMixture(3, random_state=0).fit(repeated)
    order = np.argsort(a.means_[:, 0]), np.argsort(b.means_[:, 0])
    np.testing.assert_allclose(a.means_[order[0]], b.means_[order[1]], rtol=1e-5)


@pytest.mark.parametrize("weights, message", [
    (lambda n: -np.ones(n), "row 0 has -1.0"),
    (lambda n: np.r_[np.ones(n - 1), np.nan], f"row {1500 - 1} has nan"),
    (lambda n: np.r_[np.ones(n - 1), np.inf], "finite and non-negative"),
    (lambda n: np.zeros(n), "every weight is zero"),
    (lambda n: np.ones(n - 1), "one value per row of X, shape (1500,)"),
    (lambda n: np.ones((n, 2)), "one value per row"),
])
def test_bad_weights_are_refused_before_any_pass(weighted, weights, message):
    X, _, _ = weighted
    model = GaussianMixture(3)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model.fit(X, sample_weight=weights(len(X)))
    assert not hasattr(model, "means_")


def test_partial_fit_weights_equal_repeated_rows(weighted):
    X, w, _ = weighted
    init = reference_init(X, 3, "diag")
    kw = dict(covariance_type="diag", **init)
    a, b = GaussianMixture(3, **kw), GaussianMixture(3, **kw)
    for part in np.array_split(np.arange(len(X)), 3):
        a.partial_fit(X[part], sample_weight=w[part])
        b.partial_fit(np.repeat(X[part], w[part], axis=0))
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-9)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-9)


def test_minibatch_weights_equal_repeated_rows_when_unshuffled():
    # One block per row group, repeated rows kept in their block: the same minibatches.
    X, _, _ = mixture_data(n=1200, d=2, k=2, seed=3)
    w = np.random.default_rng(0).integers(1, 3, len(X))
    init = reference_init(X, 2, "full")
    kw = dict(algorithm="minibatch", batch_size=400, shuffle=False, max_iter=2, tol=0, **init)
    a = GaussianMixture(2, **kw).fit(da.from_array(X, chunks=400), sample_weight=w)
    reps = [np.repeat(X[i:i + 400], w[i:i + 400], axis=0) for i in range(0, 1200, 400)]
    Xr = da.concatenate([da.from_array(r, chunks=len(r)) for r in reps])
    b = GaussianMixture(2, **{**kw, "batch_size": max(len(r) for r in reps)}).fit(Xr)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-9)


def test_score_and_criteria_use_the_weighted_count(weighted):
    X, w, repeated = weighted
    model = GaussianMixture(3, random_state=0).fit(X)
    assert model.score(X, sample_weight=w) == pytest.approx(model.score(repeated), rel=1e-12)
    assert model.bic(X, sample_weight=w) == pytest.approx(model.bic(repeated), rel=1e-12)
    assert model.aic(da.from_array(X, chunks=500), sample_weight=w) == pytest.approx(
        model.aic(repeated), rel=1e-12)


def test_selection_with_weights_scores_like_single_fits(weighted):
    X, w, _ = weighted
    result = select_n_components(X, [2, 3], sample_weight=w, random_state=0)
    for row in result.table:
        single = GaussianMixture(row["n_components"], random_state=0).fit(X, sample_weight=w)
        assert row["score"] == pytest.approx(single.score(X, sample_weight=w), rel=1e-9)
        assert row["bic"] == pytest.approx(single.bic(X, sample_weight=w), rel=1e-9)


def test_preprocessing_weights_equal_repeated_rows(weighted):
    X, w, repeated = weighted
    a, b = StandardScaler().fit(X, sample_weight=w), StandardScaler().fit(repeated)
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=1e-12)
    assert a.n_samples_seen_ == b.n_samples_seen_ == w.sum()
    p, q = PCA(2).fit(X, sample_weight=w), PCA(2).fit(repeated)
    np.testing.assert_allclose(p.explained_variance_, q.explained_variance_, rtol=1e-10)


@pytest.mark.parametrize("contamination", [0.02, 0.3])
def test_outlier_threshold_is_the_weighted_quantile(weighted, contamination):
    X, w, repeated = weighted
    mixture = GaussianMixture(3, random_state=0).fit(X)
    a = GaussianMixtureOutlierDetector(mixture, contamination=contamination)
    a.fit(da.from_array(X, chunks=300), sample_weight=w)
    expected = np.quantile(mixture.score_samples(repeated), contamination, method="higher")
    assert a.threshold_ == expected


# --------------------------------------------------------------------------
# Partial labels
# --------------------------------------------------------------------------


def ambiguous(n=6000, seed=0):
    """Two overlapping elongated clusters that unsupervised EM splits the wrong way."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 2)) * [4.0, 0.5]
    X[:, 1] += np.where(y == 1, 1.2, -1.2)
    return X, y


def accuracy(pred, y):
    return max(np.mean(pred == y), np.mean(pred == 1 - y))


@pytest.mark.parametrize("kind", ["numpy", "dask-uneven"])
def test_five_percent_of_labels_beat_the_unlabelled_fit(kind):
    X, y = ambiguous()
    labels = np.where(np.random.default_rng(1).random(len(y)) < 0.05, y, -1)
    unlabelled = GaussianMixture(2, random_state=0).fit(X)
    semi = GaussianMixture(2, random_state=0).fit(as_kind(X, kind), labels=labels)
    assert accuracy(semi.predict(X), y) > accuracy(unlabelled.predict(X), y) + 0.1
    assert np.mean(semi.predict(X) == y) > 0.75  # and the components keep the labels' order


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fully_labelled_data_give_the_class_estimates(covariance_type):
    X, y, _ = mixture_data(n=900, d=3, k=3, seed=2)
    model = GaussianMixture(3, covariance_type=covariance_type, max_iter=1, reg_covar=0.0)
    model.fit(X, labels=y)
    counts = np.bincount(y)
    np.testing.assert_allclose(model.weights_, counts / len(y), rtol=1e-12)
    means = np.stack([X[y == k].mean(axis=0) for k in range(3)])
    np.testing.assert_allclose(model.means_, means, rtol=1e-10)
    covs = np.stack([np.cov(X[y == k].T, bias=True) for k in range(3)])
    expected = {
        "full": covs,
        "tied": np.einsum("k,kij->ij", counts, covs) / len(y),
        "diag": np.diagonal(covs, axis1=1, axis2=2),
        "spherical": np.diagonal(covs, axis1=1, axis2=2).mean(axis=1),
    }[covariance_type]
    np.testing.assert_allclose(model.covariances_, expected, rtol=1e-10)


@pytest.mark.parametrize("labels, message", [
    (lambda n: np.full(n, 3), "labels must be a component index in -1 .. 2"),
    (lambda n: np.full(n, -2), "row 0 has -2"),
    (lambda n: np.full(n, 0.5), "labels must be integers"),
])
def test_bad_labels_are_refused(labels, message):
    X, _, _ = mixture_data(n=300, d=2, k=3)
    model = GaussianMixture(3)
    with pytest.raises(ValueError, match=message):
        model.fit(X, labels=labels(len(X)))
    assert not hasattr(model, "means_")


def test_y_is_still_ignored():
    # scikit-learn pipelines pass y to fit: it must not act as labels.
    X, y, _ = mixture_data(n=600, d=2, k=3)
    a = GaussianMixture(3, random_state=0).fit(X, y)
    b = GaussianMixture(3, random_state=0).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)


# --------------------------------------------------------------------------
# Checkpoints and model files
# --------------------------------------------------------------------------


def test_resume_with_weights_and_labels(tmp_path, weighted):
    X, w, _ = weighted
    labels = np.where(np.arange(len(X)) % 20 == 0, np.arange(len(X)) % 3, -1)
    kw = dict(random_state=0, tol=0)
    straight = GaussianMixture(3, max_iter=6, **kw).fit(X, sample_weight=w, labels=labels)
    ckpt = tmp_path / "ckpt"

    def stop(info):
        if info["iteration"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        GaussianMixture(3, max_iter=6, **kw).fit(X, sample_weight=w, labels=labels,
                                                 checkpoint=ckpt, callback=stop)
    resumed = GaussianMixture(3, max_iter=6, **kw).fit(X, sample_weight=w, labels=labels,
                                                        checkpoint=ckpt, resume=True)
    assert_same_model(resumed, straight, rtol=1e-12)
    with pytest.raises(ValueError, match="checkpoint"):
        GaussianMixture(3, max_iter=6, **kw).fit(X, sample_weight=w + 1, labels=labels,
                                                 checkpoint=ckpt, resume=True)


def test_weighted_model_round_trips(tmp_path, weighted):
    X, w, _ = weighted
    model = GaussianMixture(3, random_state=0, missing="marginalize").fit(X, sample_weight=w)
    model.save(tmp_path / "m.npz")
    loaded = dgmm.load(tmp_path / "m.npz")
    assert loaded.missing == "marginalize"
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_no_warning_leaks_from_the_validation_pass(weighted):
    X, w, _ = weighted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConvergenceWarning)
        GaussianMixture(3, random_state=0, max_iter=3).fit(da.from_array(X, chunks=500),
                                                           sample_weight=w)


# --------------------------------------------------------------------------
# Missing values
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gappy():
    """A mixture with 20% of entries removed completely at random (no empty row)."""
    X, y, _ = mixture_data(n=3000, d=4, k=3, seed=1)
    rng = np.random.default_rng(0)
    Xm = X.copy()
    Xm[rng.random(X.shape) < 0.2] = np.nan
    empty = np.isnan(Xm).all(axis=1)
    Xm[empty, 0] = X[empty, 0]
    return X, Xm


def parameter_error(model, reference) -> float:
    """Max over components of |mean error| + |covariance error| (Frobenius), after matching.

    Components are matched to the reference by their nearest means.
    """
    order = [int(np.argmin(((model.means_ - m) ** 2).sum(axis=1))) for m in reference.means_]
    mean_err = np.linalg.norm(model.means_[order] - reference.means_, axis=1)
    cov_err = np.linalg.norm(model.covariances_[order] - reference.covariances_, axis=(1, 2))
    return float((mean_err + cov_err).max())


def test_marginal_em_beats_deletion_and_mean_imputation(gappy):
    # The truth: the fit on the complete data. Parameter error as defined above.
    X, Xm = gappy
    kw = dict(random_state=0)
    truth = GaussianMixture(3, **kw).fit(X)
    marginal = GaussianMixture(3, missing="marginalize", **kw).fit(Xm)
    listwise = GaussianMixture(3, **kw).fit(Xm[~np.isnan(Xm).any(axis=1)])
    imputed = GaussianMixture(3, **kw).fit(np.where(np.isnan(Xm), np.nanmean(Xm, axis=0), Xm))
    err = parameter_error(marginal, truth)
    assert err < parameter_error(listwise, truth)
    assert err < parameter_error(imputed, truth)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_marginalize_without_nan_is_the_ordinary_fit(covariance_type):
    X, _, _ = mixture_data(n=1000, d=3, k=3, seed=4)
    kw = dict(covariance_type=covariance_type, random_state=0)
    a = GaussianMixture(3, missing="marginalize", **kw).fit(X)
    assert_same_model(a, GaussianMixture(3, **kw).fit(X), rtol=0)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("kind", ["numpy", "dask-uneven", "zarr"])
def test_predictions_on_rows_with_nan_are_the_marginal_densities(gappy, covariance_type, kind):
    from scipy.stats import multivariate_normal

    _, Xm = gappy
    model = GaussianMixture(3, covariance_type=covariance_type, missing="marginalize",
                            random_state=0, max_iter=5).fit(as_kind(Xm, kind))
    covs = kernels_dense(model)
    rows = [i for i in range(60) if np.isnan(Xm[i]).any()] + [i for i in range(5)]
    expected = np.array([np.log(sum(
        model.weights_[k] * multivariate_normal(model.means_[k][o], covs[k][np.ix_(o, o)]).pdf(
            Xm[i][o]) for k in range(3))) for i in rows for o in [~np.isnan(Xm[i])]])
    got = np.asarray(model.score_samples(as_kind(Xm, kind)))[rows]
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    proba = np.asarray(model.predict_proba(Xm[rows]))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(model.predict(Xm[rows])), proba.argmax(axis=1))


def kernels_dense(model):
    from dgmm._covariance import COVARIANCE

    K, d = model.n_components, model.n_features_in_
    return COVARIANCE[model.covariance_type].dense(model.covariances_, K, d)


def test_nan_is_refused_by_default_and_an_empty_row_is_named(gappy):
    _, Xm = gappy
    with pytest.raises(ValueError, match="NaN or infinity"):
        GaussianMixture(3).fit(Xm)
    empty = Xm.copy()
    empty[123] = np.nan
    with pytest.raises(ValueError, match="Row 123 of X has no observed value"):
        GaussianMixture(3, missing="marginalize").fit(da.from_array(empty, chunks=100))


def test_missing_values_in_minibatch_outliers_and_written_predictions(gappy, tmp_path):
    _, Xm = gappy
    model = GaussianMixture(3, missing="marginalize", algorithm="minibatch", batch_size=500,
                            random_state=0).fit(Xm)
    assert np.isfinite(model.means_).all()
    det = GaussianMixtureOutlierDetector(model, contamination=0.05).fit(Xm)
    assert det.threshold_ == np.quantile(model.score_samples(Xm), 0.05, method="higher")
    group = dgmm.io.write_predictions(model, Xm, tmp_path / "p.zarr", log_density=True)
    np.testing.assert_array_equal(group["log_density"][:], model.score_samples(Xm))


def test_resume_with_missing_values(gappy, tmp_path):
    _, Xm = gappy
    kw = dict(missing="marginalize", random_state=0, tol=0, max_iter=5)
    straight = GaussianMixture(3, **kw).fit(Xm)

    def stop(info):
        if info["iteration"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        GaussianMixture(3, **kw).fit(Xm, checkpoint=tmp_path / "c", callback=stop)
    resumed = GaussianMixture(3, **kw).fit(Xm, checkpoint=tmp_path / "c", resume=True)
    assert_same_model(resumed, straight, rtol=1e-12)
