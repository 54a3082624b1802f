"""Drift reports: how new rows compare with what a fitted mixture expects, in one pass.

Every row block becomes a small :class:`DriftPacket` (row count, summed
log-density, summed responsibilities, rows below the anomaly threshold, and
the sum of the rows about the mixture mean); packets add up in the pass
engine's tree, and :func:`drift_report` turns the total into the report.

The measures, for ``n`` rows ``x_i`` and a mixture with weights ``w_k``:

* **drift** (nats per row) = the model's training mean log-likelihood
  (``lower_bound_``) minus the mean log-likelihood of the new rows. 0: the
  new rows fit the model as well as its training rows did; 0.1: they are on
  average ``e^0.1 ~ 1.1`` times less likely. Sampling noise is about
  ``std(log p(x)) / sqrt(n)``; negative values mean the new rows fit better.
  After ``partial_fit`` (``dgmm update``) the training value is the mean
  log-likelihood of the rows it learnt, each scored before its own step: an
  out-of-sample value, which after a night of drift still holds the
  transition, so the next night's drift is negative.
* **occupancy** ``O_k = sum_i r_ik`` (soft counts) against ``E_k = n w_k``:
  ``chi_square = sum_k (O_k - E_k)^2 / E_k`` with ``K - 1`` degrees of
  freedom. Soft counts vary less than hard ones, so the p-value is
  conservative; with millions of rows any small shift is significant, so the
  total variation distance ``1/2 sum_k |O_k / n - w_k|`` says how large it is.
* **outlier fraction**: the share of rows whose log-density is below the
  model's ``outlier_threshold_`` (when it has one), against the
  contamination it was set at.
* **feature means** of the new rows (of their observed values, for a model
  with ``missing='marginalize'``) against the mixture mean ``m = sum_k w_k
  mu_k``, also in units of the mixture's standard deviation per feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from dgmm import _kernels as kernels
from dgmm._covariance import COVARIANCE
from dgmm._passes import as_blocks, blas_guard, block_pass, scheduler_for
from dgmm.io import as_dask_array


@dataclass(frozen=True)
class DriftPacket:
    """What one row block contributes to a drift report (adds with ``+``).

    Attributes
    ----------
    n_rows : int
    loglik : float
        Sum of the rows' log-densities.
    occupancy : ndarray of shape (K,)
        Sum of the rows' responsibilities.
    below : int
        Rows whose log-density is below the threshold (0 without one).
    shifted_sum : ndarray of shape (d,)
        Sum of the observed ``x - center`` (float64, about the mixture mean,
        so data far from the origin lose no precision).
    observed : ndarray of shape (d,)
        Observed (not NaN) values per feature.
    """

    n_rows: int
    loglik: float
    occupancy: np.ndarray
    below: int
    shifted_sum: np.ndarray
    observed: np.ndarray

    def __add__(self, other: DriftPacket) -> DriftPacket:
        return DriftPacket(self.n_rows + other.n_rows, self.loglik + other.loglik,
                           self.occupancy + other.occupancy, self.below + other.below,
                           self.shifted_sum + other.shifted_sum,
                           self.observed + other.observed)


def _drift_block(rows, row_offset, index, params, missing, threshold, center) -> DriftPacket:
    log_density, proba = kernels.per_row_outputs(rows, params, ("log_density", "proba"),
                                                 row_offset, missing)
    below = 0 if threshold is None else int(np.count_nonzero(log_density < threshold))
    shifted = np.subtract(rows, center, dtype=np.float64)
    observed = ~np.isnan(shifted)  # rows with NaN reach here only with missing='marginalize'
    return DriftPacket(len(rows), float(log_density.sum()), proba.sum(axis=0), below,
                       np.where(observed, shifted, 0.0).sum(axis=0), observed.sum(axis=0))


def mixture_moments(model) -> tuple[np.ndarray, np.ndarray]:
    """Mean and per-feature variance of the mixture distribution of a fitted model."""
    w = np.asarray(model.weights_, dtype=np.float64)
    means = np.asarray(model.means_, dtype=np.float64)
    k, d = means.shape
    dense = COVARIANCE[model.covariance_type].dense(model._covariances64(), k, d)
    mean = w @ means
    within = w @ np.diagonal(dense, axis1=1, axis2=2)
    between = w @ (means - mean) ** 2
    return mean, within + between


def drift_report(model, X) -> dict:
    """Compare rows with a fitted mixture in one pass over them (see the module docstring).

    Parameters
    ----------
    model : GaussianMixture
        Fitted. Its ``lower_bound_`` is the training value the drift is
        measured against; its ``outlier_threshold_`` (and
        ``outlier_contamination_``), if set, give the outlier fraction.
    X : array-like, dask array, zarr.Array or str of shape (n_samples, n_features)
        The rows, in the model's feature space.

    Returns
    -------
    dict of JSON values
        ``n_rows``, ``mean_log_likelihood``, ``training_mean_log_likelihood``,
        ``drift`` (nats/row, None when the model has no ``lower_bound_``),
        ``weights``, ``occupancy``, ``occupancy_share``, ``chi_square``,
        ``chi_square_dof``, ``chi_square_p_value``, ``occupancy_tv``,
        ``outlier_threshold``, ``outlier_contamination``, ``outlier_fraction``
        (None without a threshold), ``feature_means``, ``mixture_means``,
        ``feature_mean_shift_sd``.
    """
    Xd, lazy = as_dask_array(X)
    model._check_fitted_features(Xd.shape[1])
    threshold = getattr(model, "outlier_threshold_", None)
    threshold = None if threshold is None else float(threshold)
    center, variance = mixture_moments(model)
    scheduler = scheduler_for(lazy)
    with blas_guard(scheduler):
        total = block_pass(as_blocks(Xd), _drift_block, model._params(), model._marginalize,
                           threshold, center, scheduler=scheduler)
    n = total.n_rows
    mean_loglik = total.loglik / n
    training = getattr(model, "lower_bound_", None)
    training = None if training is None or not np.isfinite(training) else float(training)
    weights = np.asarray(model.weights_, dtype=np.float64)
    expected = n * weights
    chi_square = float(np.sum((total.occupancy - expected) ** 2 / expected))
    dof = len(weights) - 1
    feature_means = center + total.shifted_sum / np.maximum(total.observed, 1)
    contamination = getattr(model, "outlier_contamination_", None)
    return {
        "n_rows": int(n),
        "mean_log_likelihood": float(mean_loglik),
        "training_mean_log_likelihood": training,
        "drift": None if training is None else float(training - mean_loglik),
        "weights": weights.tolist(),
        "occupancy": total.occupancy.tolist(),
        "occupancy_share": (total.occupancy / n).tolist(),
        "chi_square": chi_square,
        "chi_square_dof": dof,
        "chi_square_p_value": float(scipy_stats.chi2.sf(chi_square, dof)) if dof else None,
        "occupancy_tv": float(0.5 * np.abs(total.occupancy / n - weights).sum()),
        "outlier_threshold": threshold,
        "outlier_contamination": None if contamination is None else float(contamination),
        "outlier_fraction": None if threshold is None else total.below / n,
        "feature_means": feature_means.tolist(),
        "mixture_means": center.tolist(),
        "feature_mean_shift_sd": ((feature_means - center) / np.sqrt(variance)).tolist(),
    }
