"""Pure NumPy maths of the Gaussian mixture: densities, chunk statistics, M-step.

Nothing here knows about Dask. Every function takes in-memory blocks and small
parameter arrays and returns small arrays, so the orchestration layer can map
them over chunks and the estimator can call them on NumPy data directly. The
E-step's fast (linear) route hands its elementwise loops to the compiled
functions of :mod:`dgmm._jit`; the NumPy reference route here computes the
same numbers.

Conventions follow scikit-learn so results compare number for number:
``precisions_cholesky`` holds, per component, a factor ``U`` with
``precision = U @ U.T``; covariance shapes are full ``(K, d, d)``, tied
``(d, d)``, diag ``(K, d)`` and spherical ``(K,)``. What differs between
covariance types lives in the table :data:`dgmm._covariance.COVARIANCE`;
this module looks entries up and never branches on the type.

Sections: parameters, log-densities, E-step, chunk statistics, M-step.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from dgmm import _marginal
from dgmm._covariance import COVARIANCE, CentredBlock
from dgmm._covariance import COVARIANCE_TYPES as COVARIANCE_TYPES  # read from here by the CLI
from dgmm._stats import SuffStats

_LOG_2PI = np.log(2.0 * np.pi)


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """One parameter set of a mixture, in float64.

    Attributes
    ----------
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, d)
    precisions_cholesky : ndarray
        Shape depends on ``covariance_type`` as in scikit-learn.
    log_weights : ndarray of shape (K,) or None
        The per-component term the E-step adds to ``log N(x | mu_k, Sigma_k)``
        when it is not ``log(weights)``: the variational mixture puts there its
        expected log-weights and degrees-of-freedom corrections (kept as logs,
        which would underflow as weights). None: ``log(weights)``.
    """

    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    precisions_cholesky: np.ndarray
    log_weights: np.ndarray | None = None

    def __post_init__(self):
        # Fitted attributes may be float32 (float32 input); the maths is float64.
        for name in ("weights", "means", "precisions_cholesky"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        if self.log_weights is not None:
            object.__setattr__(self, "log_weights",
                               np.asarray(self.log_weights, dtype=np.float64))

    @property
    def weight_terms(self) -> np.ndarray:
        """What the E-step adds per component: ``log_weights``, or ``log(weights)``."""
        return np.log(self.weights) if self.log_weights is None else self.log_weights

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]


def precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factor ``U`` of the precision (``precision = U U^T``) from covariances.

    Raises ``ValueError`` naming the component whose covariance is not positive
    definite.
    """
    return COVARIANCE[covariance_type].precision_cholesky(
        np.asarray(covariances, dtype=np.float64)
    )


def precision_cholesky_from_precisions(
    precisions: np.ndarray, covariance_type: str
) -> np.ndarray:
    """Cholesky factor of user-supplied precisions, with a clear error if not PD."""
    return COVARIANCE[covariance_type].precision_cholesky_from_precisions(
        np.asarray(precisions, dtype=np.float64)
    )


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision matrices ``U U^T`` (or ``U**2`` for diag/spherical)."""
    return COVARIANCE[covariance_type].precisions(prec_chol)


def covariances_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances (inverse precisions) from the precision Cholesky factor."""
    return COVARIANCE[covariance_type].covariances(prec_chol)


def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple:
    """Shape of ``covariances_`` (and of precisions) for a covariance type."""
    return COVARIANCE[covariance_type].shape(n_components, n_features)


def n_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Number of free parameters of the mixture (for BIC/AIC)."""
    K, d = n_components, n_features
    return int(COVARIANCE[covariance_type].n_parameters(K, d) + K * d + K - 1)


# --------------------------------------------------------------------------
# Log-densities.  A block is centred once at ``center`` (the same point for
# every component and every block of a pass), which keeps the expansions of
# :mod:`dgmm._covariance` accurate for data far from the origin: what
# cancellation remains is at the scale of the spread between components, not
# of the data's offset.  Work arrays are component-major (K, n) and
# feature-major (d, n) so that the reductions over K and d run along
# contiguous rows.  Local names as in the glossary of :mod:`dgmm._covariance`.
# --------------------------------------------------------------------------


def center_of(params: Params) -> np.ndarray:
    """A point near the data, known before a pass: the weighted mean of the means."""
    return params.weights @ params.means / params.weights.sum()


@dataclass(frozen=True)
class Scorer:
    """What a parameter set contributes to every row's densities, computed once per chunk.

    Attributes
    ----------
    params : Params
    center : ndarray of shape (d,)
        The point every block is centred at (:func:`center_of`).
    coef : tuple of ndarray
        Parameter-only coefficients of the squared Mahalanobis distances.
    offset : ndarray of shape (K,)
        ``log w_k + log|det U_k| - d/2 log 2 pi - 1/2 (constant part of the distance)``
        (``log w_k``: :attr:`Params.weight_terms`).
    lin : ndarray of shape (K, m + 1) or None
        ``[-1/2 lin_coef | offset]``: the weighted log-densities as one matrix
        against the linear features ``[z; extra; 1]`` (None: the covariance
        type has no linear route for this K and d).
    """

    params: Params
    center: np.ndarray
    coef: tuple
    offset: np.ndarray
    lin: np.ndarray | None = None

    @classmethod
    def of(cls, params: Params) -> Scorer:
        center = center_of(params)
        kind = COVARIANCE[params.covariance_type]
        coef, quad_const = kind.prep(params.means - center, params.precisions_cholesky)
        log_det = kind.log_det(params.precisions_cholesky, params.n_features)
        offset = (
            log_det - 0.5 * params.n_features * _LOG_2PI + params.weight_terms
            - 0.5 * quad_const
        )
        lin = None
        if kind.lin_rows(params.n_components, params.n_features) is not None:
            lin = np.hstack([-0.5 * kind.lin_coef(coef), offset[:, None]])
        return cls(params, center, coef, offset, lin)

    def block(self, X: np.ndarray) -> CentredBlock:
        p = self.params
        return CentredBlock.build(X, self.center, p.covariance_type, p.n_components)


def _weighted_log_prob_t(b: CentredBlock, scorer: Scorer) -> np.ndarray:
    """log w_k + log N(x_n | mu_k, Sigma_k), component-major shape (K, n)."""
    out = COVARIANCE[scorer.params.covariance_type].sq_maha(b, scorer.coef)
    out *= -0.5
    out += scorer.offset[:, None]
    return out


# --------------------------------------------------------------------------
# E-step
# --------------------------------------------------------------------------


# Entries this far below their row's maximum (log scale) get responsibility 0
# (in every row, so results do not depend on how rows are grouped): e^-37 =
# 8.5e-17 is below half an ulp of the maximum's 1 in the row sum, so it can
# change a row's log-likelihood by rounding only, and a component fed only
# such entries holds less than 1e-16 of the data, far below what the M-step
# treats as empty (EMPTY_COMPONENT_SHARE). A row with a single entry above
# it is one-hot and needs no exponential (the costliest step of the E-step);
# on separated data most rows are such.
_LOG_NEGLIGIBLE = -37.0


def _normalise_t(a: np.ndarray, label: np.ndarray | None = None) -> np.ndarray:
    """Turn log-probabilities ``a`` (K, n) into responsibilities in place; return log-norms (n,).

    Log-sum-exp about each row's maximum, whose exponentials give both the
    normaliser and, scaled by its inverse, the responsibilities; one-hot rows
    (see ``_LOG_NEGLIGIBLE``) skip the exponentials. Rows whose ``label`` is a
    component (>= 0) get that one-hot responsibility and the complete-data
    log-likelihood ``log w_y + log N(x | y)``. A row with a non-finite maximum
    (bad input, or no component able to explain it) gets a non-finite
    log-norm, for the caller to report.
    """
    known = None
    if label is not None:
        known = np.flatnonzero(label >= 0)
        known_label = label[known]
        known_loglik = a[known_label, known]
    log_norm = a.max(axis=0)  # becomes the log-norm: max + log(sum of exp)
    a -= np.where(np.isfinite(log_norm), log_norm, 0.0)
    keep = a > _LOG_NEGLIGIBLE  # False for NaN: the log-norm is NaN already
    # entries kept per row, summed over the K rows of the mask as bytes (fast)
    count = np.add.reduce(keep.view(np.uint8), axis=0,
                          dtype=np.uint8 if a.shape[0] < 256 else np.intp)
    soft = np.flatnonzero(count != 1)
    if 2 * soft.size > a.shape[1]:
        log_norm += _soft_normalise(a, keep)
    elif soft.size:
        part = np.take(a, soft, axis=1, out=_WORK.get("soft", (a.shape[0], soft.size)))
        np.copyto(a, keep)  # one-hot rows: exp(0) = 1, the rest negligible
        log_norm[soft] += _soft_normalise(part, np.take(keep, soft, axis=1))
        a[:, soft] = part
    else:
        np.copyto(a, keep)
    if known is not None and known.size:
        a[:, known] = 0.0
        a[known_label, known] = 1.0
        log_norm[known] = known_loglik
    return log_norm


def _soft_normalise(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Normalise ``exp(a)`` (max 0 per row) over ``keep`` in place; return log row sums."""
    np.exp(a, out=a)
    a *= keep  # NaN stays NaN
    total = a.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):  # all -inf: caught by the caller
        log_total = np.log(total)
        np.divide(1.0, total, out=total)
        a *= total
    return log_total


def _resp_t(b: CentredBlock, scorer: Scorer, label: np.ndarray | None = None):
    """Per-row log-likelihood (n,) and responsibilities (K, n) (:func:`_normalise_t`)."""
    a = _weighted_log_prob_t(b, scorer)
    return _normalise_t(a, label), a


def log_gaussian_prob(X: np.ndarray, params: Params) -> np.ndarray:
    """log N(x_n | mu_k, Sigma_k) for every row and component, shape (n, K)."""
    scorer = Scorer.of(params)
    a = _weighted_log_prob_t(scorer.block(X), scorer) - params.weight_terms[:, None]
    return a.T


def check_finite_block(X: np.ndarray, row_offset: int = 0) -> None:
    """Raise a ValueError naming the first non-finite entry of a block, if any."""
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"Input X contains NaN or infinity (first at row {row_offset + int(row)}, "
            f"column {int(col)}: {X[row, col]!r}). Remove or impute those values."
        )


def _checked_resp_t(X, scorer: Scorer, row_offset: int, label: np.ndarray | None = None):
    # Non-finite input is detected from the result (free on clean data), so the
    # arithmetic on it must not warn first.
    with np.errstate(invalid="ignore", over="ignore"):
        b = scorer.block(X)
        log_norm, resp = _resp_t(b, scorer, label)
    _check_log_norm(log_norm, X, row_offset)
    return b, log_norm, resp


def _check_log_norm(log_norm: np.ndarray, X: np.ndarray, row_offset: int) -> None:
    """Raise if some row's log-likelihood is not finite, naming bad input if that is why."""
    if not np.isfinite(log_norm).all():
        check_finite_block(X, row_offset)
        raise FloatingPointError(
            f"Non-finite log-likelihood in rows {row_offset}..{row_offset + len(X) - 1} "
            "with finite data; increase reg_covar or scale the input data."
        )


# Rows per sub-block inside a chunk on the reference route: the work arrays
# of a sub-block stay in cache and bounded in size however large the chunk is.
SUB_ROWS = 2048
# Bytes of the linear route's per-thread work arrays (features and
# log-probabilities of one sub-block): small enough that each sub-block's
# features are still in the core's cache (512 KiB of L2 here) when the
# second GEMM reads them. With the whole block in one compiled call a
# sub-block costs no Python; 512 KiB measured best of 0.25-4 MiB on 2
# threads (medians of 7: d=16 diag 11% and d=8, K=4 full 5% faster than
# 1 MiB, d=16 and d=64 full within 2%).
LINEAR_WORK_BYTES = 2**19
# Share of nonzero responsibilities up to which the statistics' product R F
# is summed by rows (:func:`dgmm._jit.add_sparse_products`) rather than by a
# GEMM: measured on 2 cores, it is as fast at half of them, and faster when
# the threads of a pass run side by side (d=16..64, K=8..16).
SPARSE_SHARE = 0.5


def sub_blocks(n: int, rows: int = SUB_ROWS):
    """``(start, slice)`` of consecutive sub-blocks of at most ``rows`` of ``n`` rows."""
    for start in range(0, n, rows):
        yield start, slice(start, min(start + rows, n))


# Blocks of at least this many rows use an E-step compiled for their shape
# (:func:`dgmm._jit.linear_estep_for`): its one-off compilation (about 2 s
# per install and shape) is repaid only on large data.
SPECIALISE_ROWS = 32768


def linear_sub_rows(n_lin: int, n_components: int) -> int:
    """Rows per sub-block of the linear route with ``n_lin`` features (ones included)."""
    rows = int(np.clip(LINEAR_WORK_BYTES // (8 * (n_lin + n_components)), 128, 16384))
    tile = _compiled().ROW_TILE  # the sub-blocks' row padding
    return rows // tile * tile


class _Work(threading.local):
    """Work arrays of the linear route, one set per thread, reused from block to block.

    Fresh arrays of a few MB per sub-block would be mapped and faulted in anew
    each time under some allocator settings (a dask nanny's
    ``MALLOC_TRIM_THRESHOLD_``); reused ones cost nothing after the first.
    """

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """A C-contiguous float64 array of ``shape`` on this thread's buffer ``name``."""
        size = shape[0] * shape[1]
        buf = self.arrays.get(name)
        if buf is None or buf.size < size:
            buf = self.arrays[name] = np.empty(size)
        return buf[:size].reshape(shape)


_WORK = _Work()
_NO_LABEL = np.empty(0, dtype=np.int64)
_NO_WEIGHT = np.empty(0)


@functools.cache
def _compiled():
    """The compiled loops (:mod:`dgmm._jit`), loaded on first use: numba takes ~0.5 s to import."""
    from dgmm import _jit

    return _jit


def _responsibilities(X: np.ndarray, scorer: Scorer, row_offset: int,
                      label: np.ndarray | None = None):
    """Responsibilities of the rows of ``X`` on the reference route, sub-block by sub-block.

    Yields ``(slice, block, log_norm, resp)``: the sub-block's
    :class:`CentredBlock`, its rows' log-likelihoods and responsibilities
    (K, rows).
    """
    for start, sl in sub_blocks(len(X)):
        lab = None if label is None else label[sl]
        b, log_norm, resp = _checked_resp_t(X[sl], scorer, row_offset + start, lab)
        yield sl, b, log_norm, resp


def _linear_estep(X: np.ndarray, scorer: Scorer, row_offset: int,
                  label: np.ndarray | None = None, weight: np.ndarray | None = None,
                  resp: bool = False, stats: bool = True):
    """The linear route over a block in one compiled call (:func:`dgmm._jit.linear_estep`).

    Returns the rows' log-likelihoods (n,), their responsibilities (n, K) if
    ``resp`` (else None) and, if ``stats``, ``G = R^T F`` (K, m + 1) with the
    responsibilities multiplied by ``weight``. Raises, naming the row, if a
    log-likelihood is not finite.
    """
    jit = _compiled()
    W = scorer.lin
    (K, m1), n = W.shape, len(X)
    rows = min(linear_sub_rows(m1, K), -(-max(n, 1) // jit.ROW_TILE) * jit.ROW_TILE)
    log_norm = np.empty(n)
    R = np.empty((n if resp else 0, K))
    G = np.zeros((K if stats else 0, m1))
    kind = scorer.params.covariance_type
    estep = jit.linear_estep_for(X.shape[1], K) if n >= SPECIALISE_ROWS else jit.linear_estep
    bad = estep(
        X, scorer.center, W, jit.KIND[kind],
        _NO_LABEL if label is None else np.asarray(label, dtype=np.int64),
        _NO_WEIGHT if weight is None else np.asarray(weight, dtype=np.float64),
        _LOG_NEGLIGIBLE, SPARSE_SHARE, _WORK.get("features", (rows, m1)),
        _WORK.get("log_prob", (rows, K)), log_norm, R, G)
    if bad >= 0:
        sl = slice(bad // rows * rows, min(bad // rows * rows + rows, n))
        _check_log_norm(log_norm[sl], X[sl], row_offset + sl.start)
    return log_norm, (R if resp else None), (G if stats else None)


_PER_ROW = {
    "labels": lambda log_norm, resp: resp.argmax(axis=0),
    "proba": lambda log_norm, resp: np.ascontiguousarray(resp.T),
    "log_density": lambda log_norm, resp: log_norm,
}
PER_ROW_OUTPUTS = tuple(_PER_ROW)


def per_row_outputs(
    X: np.ndarray, params: Params, whats: tuple[str, ...], row_offset: int = 0,
    missing: bool = False,
) -> list[np.ndarray]:
    """Several per-row outputs of one block from a single E-step.

    ``whats`` names outputs among 'labels' (n,), 'proba' (n, K) and
    'log_density' (n,). With ``missing``, rows with NaN are evaluated under
    the marginal densities of their observed coordinates (:mod:`dgmm._marginal`).
    """
    scorer = Scorer.of(params)
    gaps = incomplete_rows(X, row_offset) if missing else None
    if gaps is None and scorer.lin is not None:
        log_norm, R, _ = _linear_estep(X, scorer, row_offset, resp=True, stats=False)
        return [_PER_ROW[w](log_norm, R.T) for w in whats]
    if gaps is None:
        parts = [[_PER_ROW[w](log_norm, resp) for w in whats]
                 for _, _, log_norm, resp in _responsibilities(X, scorer, row_offset)]
        if not parts:
            return [_PER_ROW[w](np.empty(0), np.empty((params.n_components, 0)))
                    for w in whats]
        return [np.concatenate(p) for p in zip(*parts, strict=True)]
    outs = [np.empty((len(X), params.n_components) if w == "proba" else len(X),
                     dtype=np.int64 if w == "labels" else np.float64) for w in whats]
    if not gaps.all():
        # Rows keep their global numbers in errors only up to the first gap.
        done = per_row_outputs(X[~gaps], params, whats, row_offset)
        for out, value in zip(outs, done, strict=True):
            out[~gaps] = value
    # One call for all the block's incomplete rows: _marginal groups them by
    # pattern and bounds its own work arrays; per-call overheads then count once.
    p = params
    found = _marginal.incomplete_outputs(X[gaps], p.covariance_type, p.weights, p.means,
                                         p.precisions_cholesky, whats, row_offset)
    for out, value in zip(outs, found, strict=True):
        out[gaps] = value
    return outs


def predict_block(X: np.ndarray, params: Params, what: str, row_offset: int = 0,
                  missing: bool = False) -> np.ndarray:
    """Per-row outputs for one block: 'labels', 'proba' or 'log_density'."""
    return per_row_outputs(X, params, (what,), row_offset, missing)[0]


def incomplete_rows(X: np.ndarray, row_offset: int = 0) -> np.ndarray | None:
    """Which rows of a block have NaN (None if none), when missing values are allowed.

    Raises ``ValueError`` naming the first infinite entry, or the first row
    with no observed value.
    """
    nan = np.isnan(X)
    if not nan.any():
        return None
    if np.isinf(X).any():
        check_finite_block(np.where(nan, 0.0, X), row_offset)
    empty = nan.all(axis=1)
    if empty.any():
        row = row_offset + int(np.argmax(empty))
        raise ValueError(f"Row {row} of X has no observed value (every feature is NaN); "
                         "remove it, since missing='marginalize' needs at least one.")
    return nan.any(axis=1)


# --------------------------------------------------------------------------
# Chunk statistics (shifted: S and Q about c_k, the means the pass started
# from; tied Q about the common centre)
# --------------------------------------------------------------------------


def stats_from_resp(
    X: np.ndarray,
    resp_t: np.ndarray,
    shift: np.ndarray,
    center: np.ndarray,
    covariance_type: str,
    loglik: float = 0.0,
    block: CentredBlock | None = None,
) -> SuffStats:
    """Sufficient statistics of a block for given (weighted) responsibilities.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    resp_t : ndarray of shape (K, n)
        Responsibilities, component-major, already multiplied by any per-row
        sample weight (zero for rows that must not count).
    shift : ndarray of shape (K, d)
        Per-component shifts ``c_k`` about which S and Q are accumulated.
    center : ndarray of shape (d,)
        Common shift; the tied Q is accumulated about it.
    block : CentredBlock, optional
        ``X`` already centred at ``center`` (reused from the E-step).
    """
    if block is None:
        block = CentredBlock.build(X, center, covariance_type, shift.shape[0])
    R = np.asarray(resp_t, dtype=np.float64)
    shift_c = shift - center
    nk = R.sum(axis=1)
    S0 = R @ block.Z
    qk = COVARIANCE[covariance_type].scatter(block, R, S0, nk, shift_c)
    return _packet(covariance_type, shift, center, nk, S0, qk, loglik, X.shape[0])


def _packet(covariance_type, shift, center, nk, S0, qk, loglik, n_rows) -> SuffStats:
    """The packet from statistics about the centre (``S0``) and ``qk`` about the shifts."""
    return SuffStats(
        covariance_type=covariance_type,
        shift=shift,
        center=center,
        n=float(nk.sum()),
        nk=nk,
        sk=S0 - nk[:, None] * (shift - center),
        qk=qk,
        loglik=float(loglik),
        n_rows=int(n_rows),
    )


def estep_stats(
    X: np.ndarray,
    params: Params,
    sample_weight: np.ndarray | None = None,
    row_offset: int = 0,
    label: np.ndarray | None = None,
    missing: bool = False,
    reference: bool = False,
) -> SuffStats:
    """One E-step over a block: its statistics about the current means, plus log-likelihood.

    ``sample_weight`` (n,) multiplies each row's responsibilities and
    log-likelihood. ``label`` (n,) fixes the responsibilities of rows whose
    component is known (>= 0; -1: unknown) to one-hot. A non-finite value in
    the block raises ``ValueError`` naming its row, except that with
    ``missing`` rows with NaN enter through their observed coordinates (the
    statistics of :mod:`dgmm._marginal`); complete rows cost what they always
    do. The block is processed in sub-blocks, on the linear route where the
    covariance type has one (one GEMM for the densities, one for all the
    statistics), else, or with ``reference``, on the reference route.
    """
    scorer = Scorer.of(params)
    gaps = incomplete_rows(X, row_offset) if missing else None
    if gaps is None:
        return _estep_complete(X, scorer, sample_weight, label, row_offset, reference)

    def part(rows):
        return (None if sample_weight is None else sample_weight[rows],
                None if label is None else label[rows])

    p = scorer.params
    w, lab = part(gaps)
    total = _marginal.incomplete_stats(X[gaps], p.covariance_type, p.weights, p.means,
                                       p.precisions_cholesky, scorer.center, w, lab,
                                       row_offset)
    if not gaps.all():
        # Rows keep their global numbers in errors only up to the first gap.
        w, lab = part(~gaps)
        total = total + _estep_complete(X[~gaps], scorer, w, lab, row_offset, reference)
    return total


def _estep_complete(X, scorer: Scorer, sample_weight, label, row_offset: int,
                    reference: bool = False) -> SuffStats:
    """The packet of rows without missing values.

    On the linear route (:func:`_linear_estep`), nk, S0 and the extra
    statistics of every component come as one product ``R^T F`` and are
    turned into a packet once; on the reference route
    (:func:`_responsibilities`), sub-block by sub-block.
    """
    p = scorer.params
    if reference or scorer.lin is None:
        total = None
        for sl, block, log_norm, resp in _responsibilities(X, scorer, row_offset, label):
            if sample_weight is not None:
                resp *= sample_weight[sl]
                log_norm *= sample_weight[sl]
            st = stats_from_resp(X[sl], resp, p.means, scorer.center, p.covariance_type,
                                 loglik=log_norm.sum(), block=block)
            total = st if total is None else total + st
        return total
    log_norm, _, G = _linear_estep(X, scorer, row_offset, label, sample_weight)
    loglik = log_norm.sum() if sample_weight is None else log_norm @ sample_weight
    d, m = p.n_features, G.shape[1] - 1
    nk, S0 = G[:, m].copy(), G[:, :d]
    qk = COVARIANCE[p.covariance_type].lin_scatter(G[:, d:m], S0, nk, p.means - scorer.center)
    return _packet(p.covariance_type, p.means, scorer.center, nk, S0, qk, loglik, len(X))


# --------------------------------------------------------------------------
# M-step
# --------------------------------------------------------------------------


# Below this share of the total weight a component is treated as empty.
EMPTY_COMPONENT_SHARE = 1e-12


def m_step(stats: SuffStats, reg_covar: float):
    """New (weights, means, covariances) from summed statistics.

    A component with (near-)zero responsibility keeps its previous mean, and its
    covariance falls to about ``reg_covar * I``; it is reported in the returned
    ``empty`` index array so the caller can warn.
    """
    nk = stats.nk + 10.0 * np.finfo(np.float64).eps  # as scikit-learn, avoids 0/0
    m = stats.sk / nk[:, None]
    means = stats.shift + m
    covariances = COVARIANCE[stats.covariance_type].m_step(stats, nk, m, reg_covar)
    weights = nk / nk.sum()
    empty = np.flatnonzero(stats.nk <= EMPTY_COMPONENT_SHARE * max(stats.n, 1e-300))
    return weights, means, covariances, empty


class Estimate(NamedTuple):
    """What an M-step gives the driver.

    Attributes
    ----------
    params : Params
        The parameters the next E-step uses.
    covariances : ndarray
        The fitted ``covariances_``.
    posterior : object or None
        The model's further state (the variational posterior), None for EM.
    lower_bound : float or None
        The bound the driver tests for convergence (None when the M-step had
        no previous parameters, at initialisation).
    """

    params: Params
    covariances: np.ndarray
    posterior: object = None
    lower_bound: float | None = None


class MStep(Protocol):
    """The part of a mixture model that differs between EM and variational inference.

    The driver (:mod:`dgmm._em`) runs every model the same way: a pass of
    :func:`estep_stats` under ``Params``, then ``m_step(stats, reg_covar,
    previous)`` with the ``Params`` that pass used (None at initialisation).
    """

    def __call__(self, stats: SuffStats, reg_covar: float,
                 previous: Params | None) -> Estimate:
        """The M-step from summed statistics, and the bound of this iteration."""

    def running(self, stats: SuffStats) -> SuffStats:
        """Running normalised statistics (stepwise EM) as this M-step takes them."""

    def restore(self, record: dict) -> object:
        """The ``posterior`` of a run from its checkpoint record (None for EM)."""

    def identity(self) -> list:
        """What a checkpoint records of the model, beyond the group (plain values)."""


def stats_from_params(params: Params, covariances: np.ndarray, reg_covar: float) -> SuffStats:
    """Normalised statistics (``n = 1``) whose :func:`m_step` gives back ``params``.

    The inverse of the M-step, up to its ``10 * eps`` guard on ``N_k``: the
    starting point of stepwise EM when the model comes from parameters rather
    than from data. Statistics are about the means (so ``S_k = 0``); the tied
    scatter is about :func:`center_of`.
    """
    cov_type, nk, means = params.covariance_type, params.weights, params.means
    cov = np.asarray(covariances, dtype=np.float64)
    center = center_of(params)
    qk = COVARIANCE[cov_type].scatter_of(cov, nk, means, center, reg_covar)
    return SuffStats(
        covariance_type=cov_type, shift=means, center=center, n=float(nk.sum()),
        nk=nk, sk=np.zeros_like(means), qk=qk, loglik=0.0, n_rows=0,
    )
