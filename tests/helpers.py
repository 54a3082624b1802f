"""Test helpers: synthetic mixtures, random parameters, reference initial parameters.

Imported by the test modules (``from tests.helpers import ...``); fixtures live in
``conftest.py``.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from dgmm import _kernels as K

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


def mixture_data(n=3000, d=4, k=3, seed=0, offset=0.0):
    """A well-separated anisotropic Gaussian mixture (rows shuffled) and its labels."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=6.0, size=(k, d))
    labels = rng.integers(0, k, size=n)
    mix = np.stack([np.eye(d) + 0.3 * rng.normal(size=(d, d)) for _ in range(k)])
    X = means[labels] + np.einsum("nij,nj->ni", mix[labels], rng.normal(size=(n, d)))
    return X + offset, labels, means


def as_kind(X, kind, tmp_path=None):
    """X as 'numpy', 'dask-uneven' (ragged row chunks), 'zarr' (in memory) or 'zarr-path'."""

    if kind == "numpy":
        return X
    if kind == "dask-uneven":
        n = X.shape[0]
        return da.from_array(X, chunks=((n // 3, 7, n - n // 3 - 7 - 500, 500), X.shape[1]))
    if kind in ("zarr", "zarr-path"):
        store = {} if kind == "zarr" else str(tmp_path / "X.zarr")
        arr = zarr.create_array(store=store, shape=X.shape, chunks=(701, X.shape[1]),
                                dtype=X.dtype)
        arr[:] = X
        return arr if kind == "zarr" else store
    raise AssertionError(kind)


def reference_init(X, k, covariance_type, seed=0):
    """Starting parameters from a short scikit-learn run, as *_init keyword arguments."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkGM(
            k, covariance_type=covariance_type, init_params="random_from_data",
            max_iter=2, tol=0, random_state=seed,
        ).fit(X)
    return {
        "weights_init": ref.weights_,
        "means_init": ref.means_,
        "precisions_init": ref.precisions_,
    }


def random_params(covariance_type, k, d, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(k, d))
    weights = rng.dirichlet(np.ones(k))
    if covariance_type == "full":
        A = rng.normal(size=(k, d, d))
        cov = A @ A.transpose(0, 2, 1) + d * np.eye(d)
    elif covariance_type == "tied":
        A = rng.normal(size=(d, d))
        cov = A @ A.T + d * np.eye(d)
    elif covariance_type == "diag":
        cov = rng.uniform(0.5, 2.0, size=(k, d))
    else:
        cov = rng.uniform(0.5, 2.0, size=k)
    prec_chol = K.precision_cholesky(cov, covariance_type)
    return K.Params(covariance_type, weights, means, prec_chol), cov


def dense_cov(cov, covariance_type, k, d):
    return {
        "full": lambda: cov,
        "tied": lambda: np.stack([cov] * k),
        "diag": lambda: np.stack([np.diag(c) for c in cov]),
        "spherical": lambda: np.stack([c * np.eye(d) for c in cov]),
    }[covariance_type]()


def tree_digest(path) -> str:
    """SHA-256 of a file, or of every name and file's bytes under a directory."""
    path = Path(path)
    digest = hashlib.sha256()
    for entry in [path] if path.is_file() else sorted(path.rglob("*")):
        digest.update(str(entry.relative_to(path)).encode() + b"\0")
        if entry.is_file():
            digest.update(entry.read_bytes())
    return digest.hexdigest()
