"""Out-of-core StandardScaler and PCA: parity with scikit-learn, laziness, pipelines, files."""

from __future__ import annotations

import json

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask.callbacks import Callback
from sklearn import decomposition as skd
from sklearn import preprocessing as skp
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import dgmm
from dgmm import GaussianMixture, preprocessing
from dgmm.preprocessing import PCA, StandardScaler, fit_preprocessing
from tests.helpers import as_kind, mixture_data

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
KINDS = ["numpy", "dask-uneven", "zarr-path"]
PCA_ATTRIBUTES = ("components_", "explained_variance_", "explained_variance_ratio_",
                  "singular_values_", "mean_")


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(3)
    X, _, _ = mixture_data(n=3000, d=5, k=3, seed=3)
    return X * rng.uniform(0.1, 10.0, size=5) + 50.0  # unequal scales, off the origin


def assert_close(ours, ref, rtol=1e-9):
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=rtol, atol=rtol * np.abs(ref).max())


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kw", [{}, {"with_mean": False}, {"with_std": False},
                                {"with_mean": False, "with_std": False}])
def test_standard_scaler_matches_sklearn(X, kind, kw, tmp_path):
    ours = StandardScaler(**kw).fit(as_kind(X, kind, tmp_path))
    ref = skp.StandardScaler(**kw).fit(X)
    for name in ("mean_", "var_", "scale_"):
        if getattr(ref, name) is None:
            assert getattr(ours, name) is None, name
        else:
            assert_close(getattr(ours, name), getattr(ref, name))
    assert ours.n_samples_seen_ == ref.n_samples_seen_ and ours.n_features_in_ == 5
    assert_close(ours.transform(X), ref.transform(X))
    assert_close(ours.inverse_transform(ref.transform(X)), X)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_components", [None, 2])
@pytest.mark.parametrize("whiten", [False, True])
def test_pca_matches_sklearn_full_solver_with_its_signs(X, kind, n_components, whiten,
                                                        tmp_path):
    ours = PCA(n_components, whiten=whiten).fit(as_kind(X, kind, tmp_path))
    ref = skd.PCA(n_components, whiten=whiten, svd_solver="full").fit(X)
    for name in PCA_ATTRIBUTES:  # components_ compared as they are: the same signs
        assert_close(getattr(ours, name), getattr(ref, name))
    assert ours.n_components_ == ref.n_components_
    np.testing.assert_allclose(ours.noise_variance_, ref.noise_variance_, rtol=1e-9)
    assert_close(ours.transform(X), ref.transform(X))
    assert_close(ours.inverse_transform(ref.transform(X)), ref.inverse_transform(ref.transform(X)))


def test_pca_signs_follow_the_largest_entry_of_each_axis():
    # Data whose eigenvectors come out of eigh with mixed signs: each axis is made
    # to have its largest-magnitude entry positive, as scikit-learn's svd_flip does.
    rng = np.random.default_rng(0)
    for seed in range(5):
        X = rng.normal(size=(400, 4)) @ np.random.default_rng(seed).normal(size=(4, 4))
        axes = PCA().fit(X).components_
        biggest = axes[np.arange(4), np.abs(axes).argmax(axis=1)]
        assert (biggest > 0).all()
        np.testing.assert_allclose(axes, skd.PCA(svd_solver="full").fit(X).components_,
                                   atol=1e-9)


def test_more_features_than_rows_keeps_the_data_rank(X):
    wide = X[:3]
    ours, ref = PCA().fit(wide), skd.PCA(svd_solver="full").fit(wide)
    assert ours.n_components_ == ref.n_components_ == 3
    assert_close(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-7)


def test_far_from_the_origin_is_exact():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(20_000, 3)) * [1.0, 2.0, 3.0]
    big = da.from_array(Z + 1e6, chunks=(1_000, 3))
    scaler = StandardScaler().fit(big)
    np.testing.assert_allclose(scaler.var_, Z.var(axis=0), rtol=1e-9)
    np.testing.assert_allclose(scaler.mean_ - 1e6, Z.mean(axis=0), atol=1e-9)
    pca = PCA().fit(big)
    assert_close(pca.explained_variance_, skd.PCA(svd_solver="full").fit(Z).explained_variance_)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_in_float32_out(X, kind, tmp_path):
    X32 = X.astype(np.float32)
    data = as_kind(X32, kind, tmp_path)
    scaler, pca = StandardScaler().fit(data), PCA(2).fit(data)
    ref_scaler, ref_pca = skp.StandardScaler().fit(X32), skd.PCA(2, svd_solver="full").fit(X32)
    for ours, ref in ((scaler, ref_scaler), (pca, ref_pca)):
        out = ours.transform(data)
        assert out.dtype == ref.transform(X32).dtype == np.float32
        assert ours.inverse_transform(out).dtype == np.float32
        assert_close(np.asarray(out), ref.transform(X32), rtol=1e-4)
    assert scaler.mean_.dtype == ref_scaler.mean_.dtype == np.float64
    assert pca.components_.dtype == ref_pca.components_.dtype == np.float32


@parametrize_with_checks([StandardScaler(), PCA(2)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- lazy transforms


@pytest.mark.parametrize("kind", KINDS)
def test_transforms_follow_the_input_kind(X, kind, tmp_path):
    data = as_kind(X, kind, tmp_path)
    for est in (StandardScaler().fit(data), PCA().fit(data)):  # all axes: invertible
        out = est.transform(data)
        back = est.inverse_transform(out)
        want = np.ndarray if kind == "numpy" else da.Array
        assert isinstance(out, want) and isinstance(back, want)
        if kind != "numpy":
            assert out.chunks[0] == dgmm.io.as_dask_array(data)[0].chunks[0]
        assert_close(np.asarray(back), X)


def test_standardized_pca_costs_one_pass(X, monkeypatch):
    passes = []
    real = preprocessing.block_pass
    monkeypatch.setattr(preprocessing, "block_pass",
                        lambda *a, **k: passes.append(1) or real(*a, **k))
    steps = fit_preprocessing(da.from_array(X, chunks=500), standardize=True, n_components=3)
    assert len(passes) == 1 and [name for name, _ in steps] == ["standardscaler", "pca"]
    ref = make_pipeline(skp.StandardScaler(), skd.PCA(3, svd_solver="full")).fit(X)
    for name in PCA_ATTRIBUTES[:-1]:
        assert_close(getattr(steps[1][1], name), getattr(ref[1], name))
    assert_close(np.asarray(Pipeline(steps).transform(X)), ref.transform(X))


# ---------------------------------------------------------------- errors


def test_clear_errors(X):
    for est in (StandardScaler(), PCA()):
        with pytest.raises(NotFittedError):
            est.transform(X)
        est.fit(X)
        with pytest.raises(ValueError, match="X has 4 features, but .* expecting 5 features"):
            est.transform(X[:, :4])
    with pytest.raises(ValueError, match=r"n_components=6 must be .* min\(n_samples, "
                                         r"n_features\)=5"):
        PCA(6).fit(X)
    with pytest.raises(ValueError, match=r"n_components=6"):
        fit_preprocessing(X, n_components=6)
    bad = X.copy()
    bad[2345, 1] = np.nan
    for est in (StandardScaler(), PCA()):
        with pytest.raises(ValueError, match="row 2345, column 1"):
            est.fit(da.from_array(bad, chunks=1000))
        with pytest.raises(ValueError, match="row 2345, column 1"):
            est.fit(X).transform(da.from_array(bad, chunks=1000)).compute()


# ---------------------------------------------------------------- pipelines


class LargestArray(Callback):
    """Records the largest array any Dask task returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        if isinstance(result, np.ndarray):
            self.largest = max(self.largest, result.nbytes)


def test_pipeline_on_a_zarr_path_never_materialises_the_data(tmp_path):
    X, _, _ = mixture_data(n=120_000, d=3, k=3, seed=5)
    path = str(tmp_path / "big.zarr")
    store = zarr.create_array(store=path, shape=X.shape, chunks=(4_000, 3), dtype="f8")
    store[:] = X
    pipe = make_pipeline(StandardScaler(), PCA(2),
                         GaussianMixture(3, cache=False, max_iter=5, random_state=0))
    with dask.config.set({"dgmm.read-chunk-bytes": 4_000 * 3 * 8}), LargestArray() as seen:
        pipe.fit(path)
        labels = pipe.predict(path)
        assert isinstance(labels, da.Array)
        labels.sum().compute()
    # No task made anything near the data's size (the k-means sample of the
    # mixture's initialisation, 20 000 rows at most, is the largest array).
    assert 0 < seen.largest <= X.nbytes / 4
    # The measure can fail: materialising the transformed data is caught.
    with LargestArray() as control:
        pipe[:-1].transform(path).compute()
    assert control.largest >= 120_000 * 2 * 8
    ref = make_pipeline(skp.StandardScaler(), skd.PCA(2, svd_solver="full")).fit(X)
    assert_close(pipe[1].components_, ref[1].components_)


def test_pipeline_model_file_round_trip_without_pickle(X, tmp_path):
    pipe = make_pipeline(StandardScaler(), PCA(3, whiten=True),
                         GaussianMixture(3, random_state=0)).fit(X)
    path = tmp_path / "pipe.npz"
    dgmm.save(pipe, path)
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["metadata.json"][()]))
        assert "steps/1/fitted/components_" in npz.files
    assert meta["schema_version"] == 2 and meta["estimator"] == "Pipeline"
    assert [s["name"] for s in meta["steps"]] == ["standardscaler", "pca", "gaussianmixture"]
    loaded = dgmm.load(path)
    assert isinstance(loaded, Pipeline)
    assert [type(s) for _, s in loaded.steps] == [StandardScaler, PCA, GaussianMixture]
    assert loaded[1].get_params() == pipe[1].get_params()
    np.testing.assert_array_equal(loaded.predict(X), pipe.predict(X))
    np.testing.assert_array_equal(loaded.score_samples(X), pipe.score_samples(X))
    with pytest.raises(FileExistsError):
        dgmm.save(pipe, path, overwrite=False)


@pytest.mark.parametrize("est", [StandardScaler(with_std=False), PCA(2)])
def test_a_transformer_alone_round_trips(X, est, tmp_path):
    est.fit(X)
    dgmm.save(est, tmp_path / "t.npz")
    loaded = dgmm.load(tmp_path / "t.npz")
    assert type(loaded) is type(est) and loaded.get_params() == est.get_params()
    np.testing.assert_array_equal(loaded.transform(X), est.transform(X))


def test_a_mixture_file_keeps_schema_version_1(X, tmp_path):
    model = GaussianMixture(2, random_state=0).fit(X)
    dgmm.save(model, tmp_path / "a.npz")
    model.save(tmp_path / "b.npz")
    for name in ("a.npz", "b.npz"):
        with np.load(tmp_path / name, allow_pickle=False) as npz:
            meta = json.loads(str(npz["metadata.json"][()]))
        assert meta["schema_version"] == 1 and "steps" not in meta
        assert isinstance(dgmm.load(tmp_path / name), GaussianMixture)


def test_only_dgmm_steps_are_saved(X, tmp_path):
    pipe = make_pipeline(skp.StandardScaler(), GaussianMixture(2)).fit(X)
    with pytest.raises(TypeError, match="Cannot save a StandardScaler.*dgmm estimators"):
        dgmm.save(pipe, tmp_path / "p.npz")
    assert not (tmp_path / "p.npz").exists()


def test_a_bad_step_in_a_file_is_named(X, tmp_path):
    pipe = make_pipeline(PCA(2), GaussianMixture(2)).fit(X)
    path = tmp_path / "p.npz"
    dgmm.save(pipe, path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["steps/0/fitted/components_"] = arrays["steps/0/fitted/components_"][:1]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"p.npz.*'components_' must have shape \(2, 5\)"):
        dgmm.load(path)
