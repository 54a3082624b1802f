"""Synthetic mixtures: reproducible, chunked, stored with their true parameters."""

import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal

from dgmm import GaussianMixture
from dgmm.datasets import make_mixture, make_mixture_params, make_mixture_zarr

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
SHAPES = {"full": (4, 3, 3), "tied": (3, 3), "diag": (4, 3), "spherical": (4,)}


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_store_equals_in_memory_sample(tmp_path, covariance_type):
    kw = dict(chunk_rows=300, seed=5, covariance_type=covariance_type)
    truth = make_mixture_zarr(tmp_path / "m.zarr", 1000, 3, 4, **kw)
    X, y, same = make_mixture(1000, 3, 4, dtype="float32", **kw)
    group = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    assert group["X"].dtype == np.float32 and group["X"].chunks == (300, 3)
    assert_array_equal(group["X"][:], X)
    assert_array_equal(group["y"][:], y)
    assert group.attrs["covariance_type"] == covariance_type and group.attrs["seed"] == 5
    for name in ("weights", "means", "covariances"):
        assert_array_equal(group[name][:], getattr(truth, name))
        assert_array_equal(getattr(same, name), getattr(truth, name))
    assert truth.covariances.shape == SHAPES[covariance_type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr"]


def test_chunks_are_independent_streams():
    a = make_mixture(1000, 2, 3, chunk_rows=250, seed=1)[0]
    b = make_mixture(500, 2, 3, chunk_rows=250, seed=1)[0]
    assert_array_equal(a[:500], b)  # a chunk does not depend on how many follow it
    assert not np.array_equal(a[:250], a[250:500])
    assert not np.array_equal(a, make_mixture(1000, 2, 3, chunk_rows=250, seed=2)[0])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample_follows_true_parameters(covariance_type):
    X, y, truth = make_mixture(40_000, 3, 4, covariance_type=covariance_type, seed=0)
    assert_allclose(np.bincount(y, minlength=4) / len(y), truth.weights, atol=0.01)
    full = truth._full_cholesky() @ truth._full_cholesky().transpose(0, 2, 1)
    for k in range(4):
        assert_allclose(X[y == k].mean(axis=0), truth.means[k], atol=0.06)
        assert_allclose(np.cov(X[y == k].T), full[k], atol=0.08)


def test_true_parameters_initialise_a_fit():
    X, _, truth = make_mixture(2000, 2, 3, separation=6.0, seed=4)
    gm = GaussianMixture(3, max_iter=0, **truth.as_init()).fit(X)
    assert_allclose(gm.covariances_, truth.covariances, rtol=1e-10)
    fitted = GaussianMixture(3, **truth.as_init()).fit(X)
    assert_allclose(fitted.means_, truth.means, atol=0.15)


def test_params_are_seeded():
    a, b = make_mixture_params(3, 2, seed=0), make_mixture_params(3, 2, seed=1)
    assert_array_equal(a.means, make_mixture_params(3, 2, seed=0).means)
    assert not np.array_equal(a.means, b.means)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_features": 1.5}, "n_features"),
        ({"dtype": "int32"}, "floating"),
        ({"chunk_rows": 0}, "chunk_rows"),
        ({"covariance_type": "banded"}, "covariance_type"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"n_samples": 10, "n_features": 2, "n_components": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        make_mixture_zarr(tmp_path / "m.zarr", **args)
    assert not (tmp_path / "m.zarr").exists()


def test_existing_store_is_kept(tmp_path):
    make_mixture_zarr(tmp_path / "m.zarr", 10, 2, 2, seed=0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_mixture_zarr(tmp_path / "m.zarr", 10, 2, 2, seed=1)
    assert zarr.open_group(str(tmp_path / "m.zarr")).attrs["seed"] == 0
    make_mixture_zarr(tmp_path / "m.zarr", 10, 2, 2, seed=1, overwrite=True)
    assert zarr.open_group(str(tmp_path / "m.zarr")).attrs["seed"] == 1
