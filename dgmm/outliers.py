"""Anomaly detection with a Gaussian mixture: an exact log-density quantile, out of core.

A row is an outlier when its log-density under the mixture falls below
``threshold_``, the ``contamination`` quantile of the log-densities of the
training rows. The threshold is exact (the order statistic that
``np.quantile(scores, contamination, method='higher')`` gives) and costs two
passes over the data in bounded memory, whatever the number of rows:

1. **Histogram.** Every float64 score maps to a ``uint64`` key with the same
   order (its IEEE-754 bit pattern, sign-corrected: :func:`monotone_keys`), so
   no range is needed in advance. A block counts its scores per *bin*, the top
   bits of the key: sign, exponent and the first ``mantissa_bits(n)`` bits of
   the mantissa, about half of ``log2(n)`` for ``n`` rows (8 to 20), so a
   binade (the floats between two powers of two) splits into about ``sqrt(n)``
   bins of equal width. Counts are sparse (occupied bins only); blocks merge by
   adding them. The cumulative counts give the bin holding the target rank,
   and the rank within that bin.
2. **Selection.** Every block keeps the distinct scores of that bin, with
   their counts, and only those that can still be the answer: the ``t + 1``
   smallest when the target is the ``t``-th of ``m`` in the bin and
   ``t < m - t``, else the ``m - t`` largest. Merges prune the same way, so
   the final packet holds the answer.

Memory
------
Per packet, and at most ``dgmm.split-every`` packets per merge. Pass 1: 16
bytes per occupied bin, at most ``min(n, b * 2**mantissa_bits(n))`` for scores
spanning ``b`` binades: log-densities in [-1e6, -1e-3] span 30 binades, so
1e9 rows (15 bits) need at most 15 MiB, 1e6 rows (10 bits) 0.5 MiB, and
log-densities in [-40, -5] (3 binades) a tenth of that. Pass 2: 16 bytes per
distinct kept score, at most ``min(t + 1, m - t)`` for the ``t``-th of the
``m`` scores in the target bin. ``m`` is about ``n / 2**mantissa_bits(n)``,
so ``O(sqrt(n))``, times the share of the scores in the bin's binade, unless
the scores crowd into a bin (many rows with log-densities equal to about
``2**-mantissa_bits`` relative; equal scores count once): the finer the bins,
the more of them pass 1 holds and the fewer scores pass 2 keeps. ``O(sqrt(n))``
is the least memory that any exact selection in two passes can do with in
general (Munro and Paterson, 1980).

Sections: keys and histograms, selection, passes, the estimator.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.utils.validation import check_is_fitted

from dgmm import _kernels as kernels
from dgmm import _xarray, io
from dgmm._passes import as_blocks, blas_guard, block_pass, scheduler_for
from dgmm.io import as_dask_array
from dgmm.mixture import GaussianMixture

QUANTILE_METHOD = "higher"
_SIGN = np.uint64(1 << 63)
_SIGN_AND_EXPONENT_BITS = 12


# --------------------------------------------------------------------------
# Keys and histograms
# --------------------------------------------------------------------------


def monotone_keys(scores: np.ndarray) -> np.ndarray:
    """``uint64`` keys in the order of the float64 ``scores`` (``a < b`` iff ``key(a) < key(b)``).

    The IEEE-754 bit pattern orders non-negative floats as integers; for
    negative ones every bit is flipped, which reverses their order and puts
    them below the non-negative ones. (-0.0 sorts just below 0.0.)
    """
    bits = np.ascontiguousarray(scores, dtype=np.float64).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def keys_to_floats(keys: np.ndarray) -> np.ndarray:
    """The float64 values of :func:`monotone_keys`' keys (its inverse)."""
    keys = np.asarray(keys, dtype=np.uint64)
    return np.where(keys & _SIGN, keys & ~_SIGN, ~keys).view(np.float64)


def mantissa_bits(n: int) -> int:
    """Mantissa bits in the bins of the first pass over n rows: ``ceil(log2(n) / 2)`` in [8, 20]."""
    return int(np.clip(np.ceil(np.log2(max(n, 2)) / 2), 8, 20))


def key_shift(n: int) -> int:
    """Right shift of :func:`monotone_keys` that leaves the bin of a score, for n rows."""
    return 64 - _SIGN_AND_EXPONENT_BITS - mantissa_bits(n)


def bins_of(scores: np.ndarray, shift: int) -> np.ndarray:
    """The bin of every score: the top ``64 - shift`` bits of its key."""
    return monotone_keys(scores) >> np.uint64(shift)


def target_rank(n: int, q: float) -> int:
    """0-based rank of the order statistic ``np.quantile(x, q, method='higher')`` of n values."""
    return min(int(np.ceil((n - 1) * q)), n - 1)


def _tally(keys: np.ndarray, weight: np.ndarray | None = None):
    """Distinct ``keys`` (ascending) and their counts: int64, or summed weights with ``weight``."""
    if weight is None:
        values, counts = np.unique(keys, return_counts=True)
        return values, counts.astype(np.int64)
    values, index = np.unique(keys, return_inverse=True)
    return values, np.bincount(index, weights=weight, minlength=len(values))


def _merge_tallies(values: list[np.ndarray], counts: list[np.ndarray]):
    """The tally of several tallies (:func:`_tally`), keys ascending."""
    merged, index = np.unique(np.concatenate(values), return_inverse=True)
    weights = np.concatenate(counts)
    total = np.zeros(len(merged), dtype=weights.dtype)
    np.add.at(total, index, weights)
    return merged, total


@dataclass(frozen=True)
class KeyHistogram:
    """Counts of scores per bin (:func:`bins_of`), sparse.

    Attributes
    ----------
    bins : ndarray of uint64, shape (n_bins,)
        Occupied bins, ascending.
    counts : ndarray of int64 (float64 with sample weights), shape (n_bins,)
        Scores per bin (their total weight with sample weights).
    low, high : float
        Smallest and largest score.
    shift : int
        The :func:`bins_of` shift of the bins.
    """

    bins: np.ndarray
    counts: np.ndarray
    low: float
    high: float
    shift: int

    @classmethod
    def of(cls, scores: np.ndarray, shift: int, weight: np.ndarray | None = None) -> KeyHistogram:
        if weight is not None:  # rows of zero weight are not in the data
            scores, weight = scores[weight > 0], weight[weight > 0]
        bins, counts = _tally(bins_of(scores, shift), weight)
        if not len(scores):
            return cls(bins, counts, np.inf, -np.inf, shift)
        return cls(bins, counts, float(scores.min()), float(scores.max()), shift)

    @classmethod
    def merge(cls, *parts: KeyHistogram) -> KeyHistogram:
        bins, counts = _merge_tallies([p.bins for p in parts], [p.counts for p in parts])
        return cls(bins, counts, min(p.low for p in parts), max(p.high for p in parts),
                   parts[0].shift)

    @property
    def n(self) -> int | float:
        """Number of scores (their total weight with sample weights)."""
        total = self.counts.sum()
        return int(total) if self.counts.dtype.kind == "i" else float(total)

    def locate(self, rank: float) -> tuple[int, float, float]:
        """The bin holding the ``rank``-th smallest score, the scores below it, and its count."""
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, rank, side="right"))
        below = cum[i - 1] if i else 0
        return int(self.bins[i]), below, self.counts[i]

    def lower_edges(self) -> np.ndarray:
        """The smallest score each bin can hold, clipped to [low, high] (for plotting)."""
        return np.clip(keys_to_floats(self.bins << np.uint64(self.shift)), self.low, self.high)


# --------------------------------------------------------------------------
# Selection: the distinct scores of one bin that can still be the t-th
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """Distinct scores of the target bin (ascending) and their counts, pruned.

    ``need`` counts from the bottom (``from_bottom``) or the top of the bin: the
    answer is the value with ``need`` scores of the bin before it on that side,
    so values with more than ``need`` before them on that side are dropped.
    """

    values: np.ndarray
    counts: np.ndarray
    need: int
    from_bottom: bool

    @classmethod
    def build(cls, values, counts, need: int, from_bottom: bool) -> Candidates:
        side = counts if from_bottom else counts[::-1]
        before = np.cumsum(side) - side
        keep = before <= need if from_bottom else (before <= need)[::-1]
        return cls(values[keep], counts[keep], need, from_bottom)

    @classmethod
    def of(cls, scores: np.ndarray, need: float, from_bottom: bool,
           weight: np.ndarray | None = None) -> Candidates:
        if weight is not None:
            scores, weight = scores[weight > 0], weight[weight > 0]
        return cls.build(*_tally(scores, weight), need, from_bottom)

    @classmethod
    def merge(cls, *parts: Candidates) -> Candidates:
        values, counts = _merge_tallies([p.values for p in parts], [p.counts for p in parts])
        return cls.build(values, counts, parts[0].need, parts[0].from_bottom)

    def select(self) -> float:
        """The value with ``need`` scores before it (all of the bin merged)."""
        side = self.counts if self.from_bottom else self.counts[::-1]
        i = int(np.searchsorted(np.cumsum(side), self.need, side="right"))
        return float(self.values[i] if self.from_bottom else self.values[::-1][i])


# --------------------------------------------------------------------------
# Passes
# --------------------------------------------------------------------------


def _scores(rows, params, row_offset, missing) -> np.ndarray:
    return kernels.per_row_outputs(rows, params, ("log_density",), row_offset, missing)[0]


def _histogram_block(rows, row_offset, index, params, missing, shift,
                     weight=None) -> KeyHistogram:
    return KeyHistogram.of(_scores(rows, params, row_offset, missing), shift, weight)


def _candidates_block(rows, row_offset, index, params, missing, shift, bin_, need,
                      from_bottom, weight=None) -> Candidates:
    scores = _scores(rows, params, row_offset, missing)
    in_bin = bins_of(scores, shift) == np.uint64(bin_)
    return Candidates.of(scores[in_bin], need, from_bottom,
                         None if weight is None else weight[in_bin])


def score_quantile(
    X, params: kernels.Params, q: float, sample_weight=None, missing: bool = False
) -> tuple[float, KeyHistogram]:
    """Exact ``np.quantile(scores, q, method='higher')`` of the log-densities of X's rows.

    Two passes over X (one when the answer is the smallest or largest score);
    memory as in the module docstring. With ``sample_weight`` the quantile is
    of the weighted scores: integer weights give the quantile of the repeated
    rows, and rows of zero weight do not count.

    Parameters
    ----------
    X : array-like, dask array, zarr.Array or str of shape (n_samples, n_features)
    params : Params
    q : float in [0, 1]
    sample_weight : array-like, dask array, zarr.Array or str of shape (n_samples,), optional
    missing : bool, default=False
        Score rows with NaN by the marginal density of their observed features.

    Returns
    -------
    threshold : float
    histogram : KeyHistogram
        The first pass's histogram of the scores.
    """
    Xd, lazy = as_dask_array(X)
    scheduler = scheduler_for(lazy)
    blocks = as_blocks(Xd, io.row_data(Xd.shape[0], sample_weight, scheduler=scheduler))
    with blas_guard(scheduler):
        shift = key_shift(blocks.n_rows)
        hist = block_pass(blocks, _histogram_block, params, missing, shift,
                          combine=KeyHistogram.merge,
                          scheduler=scheduler)
        rank = target_rank(hist.n, q)
        if rank in (0, hist.n - 1):
            return (hist.low if rank == 0 else hist.high), hist
        bin_, below, m = hist.locate(rank)
        t = rank - below
        # Counting from the top relies on integer counts: weighted, count up.
        from_bottom = t < m - t or sample_weight is not None
        need = t if from_bottom else m - 1 - t
        found = block_pass(blocks, _candidates_block, params, missing, shift, bin_, need,
                           from_bottom, combine=Candidates.merge, scheduler=scheduler)
    return found.select(), hist


# --------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------


class GaussianMixtureOutlierDetector(OutlierMixin, BaseEstimator):
    """Outlier detection by the log-density of a Gaussian mixture.

    The ``contamination`` share of the training rows with the lowest
    log-density under the mixture are outliers, and so is any new row whose
    log-density is below the same ``threshold_``. The threshold is
    found exactly in two passes over data of any size (see
    :mod:`dgmm.outliers`). The API is scikit-learn's for outlier detectors
    (as :class:`sklearn.covariance.EllipticEnvelope`).

    Parameters
    ----------
    mixture : GaussianMixture, default=None
        A fitted mixture is used as it is (``fit`` only finds the threshold); an
        unfitted one is cloned and fitted first. None means
        ``GaussianMixture()`` (one component).
    contamination : float, default=0.01
        Share of outliers in the training data, in (0, 0.5].

    Attributes
    ----------
    mixture_ : GaussianMixture
        The fitted mixture.
    threshold_ : float
        ``np.quantile(score_samples(X), contamination, method='higher')`` over
        the training rows X: one of their log-densities.
    offset_ : float
        Equal to ``threshold_``; ``decision_function = score_samples - offset_``,
        as in scikit-learn.
    histogram_ : KeyHistogram
        Counts of the training log-densities in narrow bins (the first pass),
        which :func:`dgmm.plot.log_density_histogram` draws without another pass.
    n_features_in_ : int
    feature_names_in_ : ndarray of str objects, shape (n_features_in_,)
        Set by a fit on xarray input with string feature names.

    Notes
    -----
    With ``method='higher'`` the rows flagged in the training data are those
    strictly below the ``ceil((n - 1) * contamination)``-th smallest score
    (0-based): that many when scores are distinct, which is ``n *
    contamination`` rounded, as scikit-learn's detectors flag.

    Examples
    --------
    >>> import numpy as np
    >>> from dgmm import GaussianMixture
    >>> from dgmm.outliers import GaussianMixtureOutlierDetector
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 1, (990, 2)), rng.uniform(8, 10, (10, 2))])
    >>> det = GaussianMixtureOutlierDetector(GaussianMixture(random_state=0)).fit(X)
    >>> int((det.predict(X) == -1).sum())
    10
    """

    def __init__(self, mixture: GaussianMixture | None = None, *, contamination: float = 0.01):
        self.mixture = mixture
        self.contamination = contamination

    def fit(self, X, y=None, sample_weight=None) -> GaussianMixtureOutlierDetector:
        """Fit the mixture if needed, then find the threshold (two passes over X).

        Parameters
        ----------
        X : array-like, dask array, zarr.Array or str of shape (n_samples, n_features)
            Or an ``xarray.Dataset``/``DataArray``, as in
            :meth:`GaussianMixture.fit`: points NaN in every feature count
            neither in the fit nor in the threshold, and a fitted mixture
            with feature names gets its features by name.
        y : Ignored
        sample_weight : array-like, dask array, zarr.Array or str of shape (n_samples,), optional
            Row weights, for the mixture's fit and the threshold: the
            ``contamination`` share of the total weight lies below it.

        Returns
        -------
        self : GaussianMixtureOutlierDetector
        """
        if _xarray.is_xarray(X):
            _xarray.fit(self, X, sample_weight=sample_weight,
                        features=_xarray.fitted_names(self.mixture))
            if self.mixture_ is not self.mixture and hasattr(self, "feature_names_in_"):
                self.mixture_.feature_names_in_ = self.feature_names_in_  # a clone fitted here
            return self
        self.__dict__.pop("feature_names_in_", None)  # names come with xarray input only
        c = self.contamination
        if not isinstance(c, numbers.Real) or isinstance(c, bool) or not 0 < c <= 0.5:
            raise ValueError(f"contamination must be a number in (0, 0.5]; got {c!r}")
        mixture = GaussianMixture() if self.mixture is None else self.mixture
        if hasattr(mixture, "means_"):
            mixture._check_fitted_features(as_dask_array(X)[0].shape[1])
        else:
            mixture = clone(mixture).fit(X, sample_weight=sample_weight)
        self.mixture_ = mixture
        self.threshold_, self.histogram_ = score_quantile(X, mixture._params(), float(c),
                                                          sample_weight, mixture._marginalize)
        self.offset_ = self.threshold_
        self.n_features_in_ = mixture.n_features_in_
        return self

    def score_samples(self, X):
        """Log-density of every row under the mixture, float64, shape (n_samples,).

        A dask array for lazy input, NumPy otherwise; for xarray input a
        DataArray on its sample dimensions, NaN where every feature is NaN.
        """
        check_is_fitted(self, "threshold_")
        if _xarray.is_xarray(X):
            return _xarray.per_row(self, X, "score_samples", "log_density", np.nan)
        return self.mixture_._per_row(X, "log_density", float_dtype=np.float64)

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for inliers, -1 for outliers (log-density below ``threshold_``), (n_samples,).

        For xarray input a DataArray on its sample dimensions, 0 where every
        feature is NaN.
        """
        if _xarray.is_xarray(X):
            return _xarray.per_row(self, X, "predict", "outlier", 0)
        scores = self.score_samples(X)
        where = da.where if isinstance(scores, da.Array) else np.where
        return where(scores < self.threshold_, -1, 1)
