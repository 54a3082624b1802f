"""Shared fixtures: synthetic mixtures and reference initial parameters."""

from __future__ import annotations

import numpy as np
import pytest

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


def mixture_data(n=3000, d=4, k=3, seed=0, offset=0.0):
    """A well-separated anisotropic Gaussian mixture (rows shuffled) and its labels."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=6.0, size=(k, d))
    labels = rng.integers(0, k, size=n)
    mix = np.stack([np.eye(d) + 0.3 * rng.normal(size=(d, d)) for _ in range(k)])
    X = means[labels] + np.einsum("nij,nj->ni", mix[labels], rng.normal(size=(n, d)))
    return X + offset, labels, means


@pytest.fixture
def data():
    X, _, _ = mixture_data()
    return X


def reference_init(X, k, covariance_type, seed=0):
    """Starting parameters from a short scikit-learn run, as *_init keyword arguments."""
    import warnings

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
