"""Out-of-core preprocessing: ``StandardScaler`` and ``PCA`` fitted in one data pass.

Both are fitted from the mean and scatter matrix of the data, which is the
statistics packet of a one-component 'full' mixture with every responsibility
equal to one (:func:`dgmm._kernels.stats_from_resp`): shifted, float64, and
accumulated by the pass engine in one streaming pass. The scaler reads the
variances off its diagonal; PCA eigendecomposes the ``d x d`` covariance in
memory, which suits tall-skinny data (many rows, up to a few thousand
columns). A scaler followed by a PCA is fitted from the same pass
(:func:`fit_preprocessing`): the covariance of standardised data is the
covariance divided by the outer product of the standard deviations.

Transforms are lazy per row block: dask or Zarr input gives a dask array,
NumPy input a NumPy array; float32 input gives float32 output.

Glossary: ``n`` rows, ``d`` features, ``k`` kept components; ``scatter`` is
``sum_n (x_n - mean)(x_n - mean)^T``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import dask
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from dgmm import _kernels as kernels
from dgmm import io
from dgmm._init import read_rows
from dgmm._passes import as_blocks, blas_guard, block_pass, scheduler_for

# --------------------------------------------------------------------------
# The one pass: mean and scatter matrix of the data
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Moments:
    """Row count, mean and scatter matrix of a data set (float64).

    Attributes
    ----------
    n_samples : int
    mean : ndarray of shape (d,)
    scatter : ndarray of shape (d, d)
        ``sum_n (x_n - mean)(x_n - mean)^T``.
    """

    n_samples: int
    mean: np.ndarray
    scatter: np.ndarray

    def affine(self, center: np.ndarray, scale: np.ndarray) -> Moments:
        """The moments of ``(x - center) / scale`` (exact algebra, no pass)."""
        return Moments(self.n_samples, (self.mean - center) / scale,
                       self.scatter / np.outer(scale, scale))


def _moments_block(rows: np.ndarray, row_offset: int, block_index: int, shift: np.ndarray,
                   weight: np.ndarray | None = None):
    """The one-component 'full' packet of a block about ``shift`` (a :class:`BlockFn`)."""
    total = None
    for start, sl in kernels.sub_blocks(len(rows)):
        sub = rows[sl]
        kernels.check_finite_block(sub, row_offset + start)
        resp = np.ones((1, len(sub))) if weight is None else weight[None, sl]
        packet = kernels.stats_from_resp(sub, resp, shift[None], shift, "full")
        total = packet if total is None else total + packet
    return total


def moments(X, sample_weight=None) -> tuple[Moments, np.dtype, bool]:
    """Mean and scatter matrix of ``X`` in one streaming pass.

    The statistics are accumulated about the first row (shifted, so exact
    for data far from the origin). A non-finite value raises ``ValueError``
    naming its row and column. With ``sample_weight`` they are weighted and
    ``n_samples`` is the total weight (integer weights: repeated rows).

    Returns
    -------
    moments : Moments
    dtype : numpy.dtype
        ``X``'s dtype.
    lazy : bool
        Whether ``X`` was lazy (dask, Zarr).
    """
    Xd, lazy = io.as_dask_array(X)
    scheduler = scheduler_for(lazy)
    blocks = as_blocks(Xd, io.row_data(Xd.shape[0], sample_weight, scheduler=scheduler))
    shift = read_rows(blocks, np.array([0]), scheduler=scheduler)[0]
    with blas_guard(scheduler):
        packet = block_pass(blocks, _moments_block, shift, scheduler=scheduler)
    n = float(packet.nk[0])
    mean_shift = packet.sk[0] / n
    scatter = packet.qk[0] - n * np.outer(mean_shift, mean_shift)
    n_samples = int(packet.n_rows) if sample_weight is None else _count(n)
    return Moments(n_samples, shift + mean_shift, scatter), Xd.dtype, lazy


def _count(total_weight: float) -> int | float:
    """A total weight as an int when it is one (integer weights), else as it is."""
    return int(total_weight) if float(total_weight).is_integer() else float(total_weight)


# --------------------------------------------------------------------------
# Fitted parameters from the moments (pure NumPy)
# --------------------------------------------------------------------------


def constant_features(var: np.ndarray, mean: np.ndarray, n_samples: int) -> np.ndarray:
    """Features whose variance is zero up to rounding (as scikit-learn detects them)."""
    eps = np.finfo(np.float64).eps
    return var <= n_samples * eps * var + (n_samples * mean * eps) ** 2


def safe_scale(var: np.ndarray, mean: np.ndarray, n_samples: int) -> np.ndarray:
    """Standard deviations, with 1 for constant features (so they are not divided by 0)."""
    scale = np.sqrt(var)
    scale[constant_features(var, mean, n_samples)] = 1.0
    return scale


def flip_signs(components: np.ndarray) -> np.ndarray:
    """Each row's largest-magnitude entry made positive.

    scikit-learn's ``svd_flip(U, Vt, u_based_decision=False)``, which ``PCA``
    applies to ``components_`` (scikit-learn >= 1.5).
    """
    biggest = components[np.arange(len(components)), np.abs(components).argmax(axis=1)]
    return components * np.where(biggest < 0, -1.0, 1.0)[:, None]


def principal_axes(m: Moments) -> tuple[np.ndarray, np.ndarray]:
    """Principal axes and variances of the data, in decreasing order of variance.

    Returns the ``r = min(n_samples, d)`` axes that an SVD of the centred data
    has: ``components`` (r, d) with scikit-learn's signs and
    ``explained_variance`` (r,) (unbiased, clipped at 0).
    """
    covariance = m.scatter / max(m.n_samples - 1, 1)
    variances, vectors = np.linalg.eigh(covariance)
    rank = min(m.n_samples, len(variances))
    order = np.argsort(variances)[::-1][:rank]
    return flip_signs(vectors[:, order].T), np.clip(variances[order], 0.0, None)


# --------------------------------------------------------------------------
# Block transforms (the functions mapped over row blocks)
# --------------------------------------------------------------------------


def _scale_block(block, center, scale, dtype):
    return ((np.asarray(block, dtype=np.float64) - center) / scale).astype(dtype, copy=False)


def _unscale_block(block, center, scale, dtype):
    return (np.asarray(block, dtype=np.float64) * scale + center).astype(dtype, copy=False)


def _linear_block(block, before, matrix, after, dtype):
    out = (np.asarray(block, dtype=np.float64) - before) @ matrix + after
    return out.astype(dtype, copy=False)


def _apply_block(block, fn, args, dtype, check, block_info=None):
    if check:
        kernels.check_finite_block(block, block_info[0]["array-location"][0][0])
    return fn(block, *args, dtype)


def _map_rows(X, n_features_in: int, name: str, fn, args: tuple, n_out: int,
              check: bool = True):
    """``fn(block, *args, dtype)`` over the row blocks of ``X``: lazy for lazy input.

    With ``check``, a non-finite value raises ``ValueError`` naming its row
    (when the block is computed, for lazy input).
    """
    Xd, lazy = io.as_dask_array(X)
    if Xd.shape[1] != n_features_in:
        raise ValueError(f"X has {Xd.shape[1]} features, but {name} is expecting "
                         f"{n_features_in} features as input.")
    dtype = io.result_dtype(Xd.dtype)
    shared = dask.delayed(args, pure=True, traverse=False)  # one key, not copied per task
    out = Xd.map_blocks(_apply_block, fn, shared, dtype, check, dtype=dtype,
                        chunks=(Xd.chunks[0], (n_out,)))
    if lazy:
        return out
    with blas_guard("threads"):
        return out.compute(scheduler="threads")


def _fitted_shape(name: str, value, shape: tuple) -> None:
    if not isinstance(value, np.ndarray) or value.shape != shape:
        got = getattr(value, "shape", type(value).__name__)
        raise ValueError(f"field {name!r} must have shape {shape}; got {got}")
    if not np.isfinite(value).all():
        raise ValueError(f"field {name!r} contains NaN or infinity")


# --------------------------------------------------------------------------
# The estimators
# --------------------------------------------------------------------------


class StandardScaler(TransformerMixin, BaseEstimator):
    """Standardize features by removing the mean and scaling to unit variance, out of core.

    A drop-in for :class:`sklearn.preprocessing.StandardScaler` that also
    accepts dask arrays, Zarr arrays and paths to Zarr arrays. ``fit`` is one
    streaming pass over the data (shifted float64 statistics);
    ``transform`` is lazy: dask or Zarr input gives a dask array.

    Parameters
    ----------
    with_mean : bool, default=True
        Subtract the mean.
    with_std : bool, default=True
        Divide by the standard deviation (1 for constant features).

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,) or None
        Feature means; None when ``with_mean=False`` and ``with_std=False``.
    var_ : ndarray of shape (n_features,) or None
        Feature variances (``ddof=0``); None when ``with_std=False``.
    scale_ : ndarray of shape (n_features,) or None
        ``sqrt(var_)``, 1 for constant features; None when ``with_std=False``.
    n_samples_seen_ : int
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from dgmm.preprocessing import StandardScaler
    >>> StandardScaler().fit_transform(np.array([[0.0, 1.0], [2.0, 3.0]]))
    array([[-1., -1.],
           [ 1.,  1.]])
    """

    def __init__(self, with_mean: bool = True, with_std: bool = True):
        self.with_mean = with_mean
        self.with_std = with_std

    def fit(self, X, y=None, sample_weight=None) -> StandardScaler:
        """Compute the (weighted) mean and standard deviation of X in one pass."""
        m, _, _ = moments(X, sample_weight)
        return self._fit_moments(m, len(m.mean))

    def _fit_moments(self, m: Moments, n_features: int) -> StandardScaler:
        var = np.diag(m.scatter) / m.n_samples
        self.mean_ = m.mean if (self.with_mean or self.with_std) else None
        self.var_ = var if self.with_std else None
        self.scale_ = safe_scale(var, m.mean, m.n_samples) if self.with_std else None
        self.n_samples_seen_ = m.n_samples
        self.n_features_in_ = int(n_features)
        return self

    def _center_scale(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.n_features_in_
        center = self.mean_ if self.with_mean else np.zeros(d)
        return center, self.scale_ if self.with_std else np.ones(d)

    def transform(self, X):
        """``(X - mean_) / scale_``: a dask array for dask/Zarr input, NumPy otherwise.

        A non-finite value raises ``ValueError`` naming its row (when its
        block is computed); impute missing values first.
        """
        check_is_fitted(self, "n_features_in_")
        return _map_rows(X, self.n_features_in_, type(self).__name__, _scale_block,
                         self._center_scale(), self.n_features_in_)

    def inverse_transform(self, X):
        """``X * scale_ + mean_``: a dask array for dask/Zarr input, NumPy otherwise."""
        check_is_fitted(self, "n_features_in_")
        return _map_rows(X, self.n_features_in_, type(self).__name__, _unscale_block,
                         self._center_scale(), self.n_features_in_, check=False)

    @classmethod
    def _from_saved(cls, params: dict, fitted: dict) -> StandardScaler:
        """A fitted scaler from a model file's hyper-parameters and attributes."""
        model = cls(**params)
        for name, value in fitted.items():
            setattr(model, name, value)
        for name in ("n_samples_seen_", "n_features_in_"):
            if name not in fitted:
                raise ValueError(f"missing field {name!r}")
        for name, needed in (("mean_", model.with_mean or model.with_std),
                             ("var_", model.with_std), ("scale_", model.with_std)):
            if needed:
                _fitted_shape(name, fitted.get(name), (model.n_features_in_,))
            else:
                setattr(model, name, None)
        return model


class PCA(TransformerMixin, BaseEstimator):
    """Principal component analysis of tall-skinny data, out of core.

    A drop-in for :class:`sklearn.decomposition.PCA` with
    ``svd_solver='full'`` (same attributes, same signs) that also accepts
    dask arrays, Zarr arrays and paths to Zarr arrays. ``fit`` is one
    streaming pass that accumulates the ``d x d`` scatter matrix (shifted,
    float64), then an eigendecomposition of the covariance in memory: suited
    to many rows and up to a few thousand features (memory and time grow as
    ``d**2`` and ``d**3``). ``transform`` is lazy: dask or Zarr input gives a
    dask array.

    Parameters
    ----------
    n_components : int or None, default=None
        Components to keep; None keeps ``min(n_samples, n_features)``.
    whiten : bool, default=False
        Divide the projections by the square root of their variance.

    Attributes
    ----------
    components_ : ndarray of shape (n_components_, n_features)
        Principal axes, by decreasing variance; each row's largest-magnitude
        entry is positive (scikit-learn's sign convention).
    explained_variance_ : ndarray of shape (n_components_,)
        Variance along each axis (``ddof=1``).
    explained_variance_ratio_ : ndarray of shape (n_components_,)
    singular_values_ : ndarray of shape (n_components_,)
        Singular values of the centred data.
    mean_ : ndarray of shape (n_features,)
    n_components_ : int
    noise_variance_ : float
        Mean variance of the discarded axes (0 when none is discarded).
    n_samples_ : int
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from dgmm.preprocessing import PCA
    >>> X = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    >>> PCA(n_components=1).fit(X).explained_variance_ratio_
    array([1.])
    """

    def __init__(self, n_components: int | None = None, whiten: bool = False):
        self.n_components = n_components
        self.whiten = whiten

    def _check_n_components(self, n_samples: int, n_features: int) -> int:
        limit = min(n_samples, n_features)
        if self.n_components is None:
            return limit
        k = self.n_components
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not 1 <= k <= limit:
            raise ValueError(
                f"n_components={k!r} must be an integer between 1 and min(n_samples, "
                f"n_features)={limit} (or None for all)"
            )
        return int(k)

    def fit(self, X, y=None, sample_weight=None) -> PCA:
        """Fit the principal axes of X from one pass over it (weighted rows if given)."""
        Xd, _ = io.as_dask_array(X)
        self._check_n_components(*Xd.shape)
        m, dtype, _ = moments(Xd, sample_weight)
        return self._fit_moments(m, dtype)

    def _fit_moments(self, m: Moments, dtype) -> PCA:
        k = self._check_n_components(m.n_samples, len(m.mean))
        components, variance = principal_axes(m)
        out = io.result_dtype(dtype)
        self.n_components_ = k
        self.n_samples_ = m.n_samples
        self.n_features_in_ = len(m.mean)
        self.mean_ = m.mean.astype(out)
        self.components_ = components[:k].astype(out)
        self.explained_variance_ = variance[:k].astype(out)
        self.explained_variance_ratio_ = (variance[:k] / variance.sum()).astype(out)
        self.singular_values_ = np.sqrt(variance[:k] * (m.n_samples - 1)).astype(out)
        self.noise_variance_ = float(variance[k:].mean()) if k < len(variance) else 0.0
        return self

    def _scales(self) -> np.ndarray:
        if not self.whiten:
            return np.ones(self.n_components_)
        return np.sqrt(np.asarray(self.explained_variance_, dtype=np.float64))

    def transform(self, X):
        """Projections on the principal axes: dask for dask/Zarr input, NumPy otherwise.

        A non-finite value raises ``ValueError`` naming its row (when its
        block is computed).
        """
        check_is_fitted(self, "components_")
        matrix = np.asarray(self.components_, dtype=np.float64).T / self._scales()
        args = (np.asarray(self.mean_, dtype=np.float64), matrix, 0.0)
        return _map_rows(X, self.n_features_in_, type(self).__name__, _linear_block, args,
                         self.n_components_)

    def inverse_transform(self, X):
        """Rows mapped back to the feature space: dask for dask/Zarr input, NumPy otherwise."""
        check_is_fitted(self, "components_")
        matrix = self._scales()[:, None] * np.asarray(self.components_, dtype=np.float64)
        args = (0.0, matrix, np.asarray(self.mean_, dtype=np.float64))
        return _map_rows(X, self.n_components_, type(self).__name__, _linear_block, args,
                         self.n_features_in_, check=False)

    @classmethod
    def _from_saved(cls, params: dict, fitted: dict) -> PCA:
        """A fitted PCA from a model file's hyper-parameters and attributes."""
        model = cls(**params)
        for name in ("n_components_", "n_features_in_", "noise_variance_"):
            if name not in fitted:
                raise ValueError(f"missing field {name!r}")
        for name, value in fitted.items():
            setattr(model, name, value)
        k, d = model.n_components_, model.n_features_in_
        for name, shape in (("components_", (k, d)), ("mean_", (d,)),
                            ("explained_variance_", (k,)), ("explained_variance_ratio_", (k,)),
                            ("singular_values_", (k,))):
            _fitted_shape(name, fitted.get(name), shape)
        return model


def fit_preprocessing(X, *, standardize: bool = False, n_components: int | None = None,
                      sample_weight=None) -> list[tuple[str, StandardScaler | PCA]]:
    """A fitted scaler and/or PCA for ``X``, from ONE pass over it.

    PCA after standardising uses the covariance of the standardised data,
    which is the covariance divided by the outer product of the scales, so
    both steps cost the same single pass.

    Parameters
    ----------
    X : array-like, dask array, zarr.Array or str of shape (n_samples, n_features)
    standardize : bool, default=False
        Include a :class:`StandardScaler`.
    n_components : int or None, default=None
        Include a :class:`PCA` keeping that many components (None: no PCA).
    sample_weight : optional
        Per-row weights, as in :meth:`dgmm.GaussianMixture.fit`.

    Returns
    -------
    list of (name, estimator)
        Pipeline steps named as :func:`sklearn.pipeline.make_pipeline` names
        them ('standardscaler', 'pca'); empty if neither step is asked for.
    """
    steps: list[tuple[str, StandardScaler | PCA]] = []
    if not standardize and n_components is None:
        return steps
    Xd, _ = io.as_dask_array(X)
    pca = None if n_components is None else PCA(n_components)
    if pca is not None:
        pca._check_n_components(*Xd.shape)
    m, dtype, _ = moments(Xd, sample_weight)
    if standardize:
        scaler = StandardScaler()._fit_moments(m, Xd.shape[1])
        steps.append(("standardscaler", scaler))
        m = m.affine(*scaler._center_scale())
    if pca is not None:
        steps.append(("pca", pca._fit_moments(m, dtype)))
    return steps
