"""Pure NumPy maths of the Gaussian mixture: densities, chunk statistics, M-step.

Nothing here knows about Dask. Every function takes in-memory blocks and small
parameter arrays and returns small arrays, so the orchestration layer can map
them over chunks and the estimator can call them on NumPy data directly.

Conventions follow scikit-learn so results compare number for number:
``precisions_cholesky`` holds, per component, a factor ``U`` with
``precision = U @ U.T``; covariance shapes are full ``(K, d, d)``, tied
``(d, d)``, diag ``(K, d)`` and spherical ``(K,)``.

Sections: parameters, log-densities, E-step, chunk statistics, M-step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import linalg

from dgmm._stats import SuffStats

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
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
    """

    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    precisions_cholesky: np.ndarray

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]


def _ill_defined_error(where: str) -> ValueError:
    # The first two sentences are scikit-learn's, which its tests look for.
    return ValueError(
        "Fitting the mixture model failed because some components have ill-defined "
        "empirical covariance (for instance caused by singleton or collapsed samples). "
        "Try to decrease the number of components, increase reg_covar, or scale the "
        f"input data. Here {where} has an ill-defined covariance (not positive definite)."
    )


def _cholesky_lower(matrix: np.ndarray, where: str) -> np.ndarray:
    try:
        return linalg.cholesky(matrix, lower=True)
    except linalg.LinAlgError:
        raise _ill_defined_error(where) from None


def _chol_prec_full(covariances: np.ndarray) -> np.ndarray:
    K, d, _ = covariances.shape
    out = np.empty((K, d, d))
    eye = np.eye(d)
    for k in range(K):
        cov_chol = _cholesky_lower(covariances[k], f"component {k}")
        out[k] = linalg.solve_triangular(cov_chol, eye, lower=True).T
    return out


def _chol_prec_tied(covariance: np.ndarray) -> np.ndarray:
    cov_chol = _cholesky_lower(covariance, "the tied covariance")
    return linalg.solve_triangular(cov_chol, np.eye(covariance.shape[0]), lower=True).T


def _chol_prec_diag(covariances: np.ndarray) -> np.ndarray:
    if np.any(covariances <= 0.0):
        k = int(np.argwhere(covariances <= 0.0)[0][0])
        raise _ill_defined_error(f"component {k}")
    return 1.0 / np.sqrt(covariances)


_CHOL_PREC = {
    "full": _chol_prec_full,
    "tied": _chol_prec_tied,
    "diag": _chol_prec_diag,
    "spherical": _chol_prec_diag,
}


def precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factor ``U`` of the precision (``precision = U U^T``) from covariances.

    Raises ``ValueError`` naming the component whose covariance is not positive
    definite.
    """
    return _CHOL_PREC[covariance_type](np.asarray(covariances, dtype=np.float64))


def precision_cholesky_from_precisions(
    precisions: np.ndarray, covariance_type: str
) -> np.ndarray:
    """Cholesky factor of user-supplied precisions, with a clear error if not PD."""
    precisions = np.asarray(precisions, dtype=np.float64)
    if covariance_type in ("diag", "spherical"):
        if np.any(precisions <= 0.0) or not np.all(np.isfinite(precisions)):
            raise ValueError(f"precisions_init must be positive; got {precisions!r}")
        return np.sqrt(precisions)
    stack = precisions if covariance_type == "full" else precisions[None]
    out = np.empty_like(stack)
    for k, prec in enumerate(stack):
        if not np.allclose(prec, prec.T, rtol=1e-10, atol=0.0):
            raise ValueError(f"precisions_init[{k}] must be symmetric")
        try:
            out[k] = linalg.cholesky(prec, lower=True)
        except linalg.LinAlgError:
            raise ValueError(
                f"precisions_init[{k}] must be positive definite" if covariance_type == "full"
                else "precisions_init must be positive definite"
            ) from None
    return out if covariance_type == "full" else out[0]


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision matrices ``U U^T`` (or ``U**2`` for diag/spherical)."""
    if covariance_type == "full":
        return np.einsum("kij,klj->kil", prec_chol, prec_chol)
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def covariances_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances (inverse precisions) from the precision Cholesky factor."""
    if covariance_type in ("full", "tied"):
        inv = np.linalg.inv(prec_chol)  # precision^-1 = U^-T U^-1
        return np.swapaxes(inv, -1, -2) @ inv
    return 1.0 / prec_chol**2


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
    """log|det U| per component (a scalar for tied)."""
    if covariance_type == "full":
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return np.log(np.diag(prec_chol)).sum()
    if covariance_type == "diag":
        return np.log(prec_chol).sum(axis=1)
    return n_features * np.log(prec_chol)


def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple:
    """Shape of ``covariances_`` (and of precisions) for a covariance type."""
    k, d = n_components, n_features
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]


def n_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Number of free parameters of the mixture (for BIC/AIC)."""
    K, d = n_components, n_features
    cov = {
        "full": K * d * (d + 1) // 2,
        "tied": d * (d + 1) // 2,
        "diag": K * d,
        "spherical": K,
    }[covariance_type]
    return int(cov + K * d + K - 1)


# --------------------------------------------------------------------------
# Log-densities.  A block is centred once at ``center`` (the same point for
# every component and every block of a pass), which keeps the expansions below
# accurate for data far from the origin: what cancellation remains is at the
# scale of the spread between components, not of the data's offset.  Work
# arrays are component-major (K, n) and feature-major (d, n) so that the
# reductions over K and d run along contiguous rows.
# --------------------------------------------------------------------------


def use_outer_features(n_components: int, n_features: int) -> bool:
    """Whether the outer-product route beats per-component GEMMs (full covariance).

    The outer-product features cost d(d+1)/2 products per row to build but
    turn every component's quadratic form and scatter matrix into one GEMM,
    with half the flops thanks to symmetry; with few components the build
    dominates and per-component GEMMs win.
    """
    return 8 * n_components > n_features  # measured on 2 cores: d=16..64, K=1..16


@dataclass(frozen=True)
class CentredBlock:
    """A block of rows centred at ``center``, in the layouts the kernels use.

    Attributes
    ----------
    ZT : ndarray of shape (d, n), C-contiguous
        The centred rows, feature-major (``Z`` is its transposed view).
    phiT : ndarray of shape (d(d+1)/2, n) or None
        Upper triangle of each row's outer product ``z z^T`` (full covariance
        with many components only).
    sqT : ndarray of shape (d, n)
        ``ZT**2``, computed on first use and then shared by the densities and
        the statistics (diag and spherical).
    """

    ZT: np.ndarray
    phiT: np.ndarray | None

    @property
    def Z(self) -> np.ndarray:
        return self.ZT.T

    @cached_property
    def sqT(self) -> np.ndarray:
        return self.ZT * self.ZT

    @classmethod
    def build(cls, X: np.ndarray, center: np.ndarray, covariance_type: str, n_components: int):
        n, d = X.shape
        ZT = np.empty((d, n))
        np.subtract(X.T, center[:, None], out=ZT, casting="unsafe")  # float32 -> float64 here
        phiT = None
        if covariance_type == "full" and use_outer_features(n_components, d):
            phiT = np.empty((d * (d + 1) // 2, n))
            pos = 0
            for i in range(d):
                np.multiply(ZT[i], ZT[i:], out=phiT[pos : pos + d - i])
                pos += d - i
        return cls(ZT, phiT)


# Each covariance type splits its squared Mahalanobis distances into
# coefficients that depend only on the parameters (``_prep_*``, computed once
# per chunk), a per-component constant, and the per-row work (``_sq_maha_*``).


def _prep_full(M, U):
    K, d, _ = U.shape
    if use_outer_features(K, d):
        P = np.einsum("kij,klj->kil", U, U)
        iu = np.triu_indices(d)
        P_tri = (P * (2.0 - np.eye(d)))[:, iu[0], iu[1]]  # off-diagonals count twice
        PM = np.einsum("kij,kj->ki", P, M)
        return (P_tri, -2.0 * PM), np.einsum("ki,ki->k", PM, M)
    # [U_1 ... U_K]^T [Z^T; 1] with the offsets -U_k^T m_k as the last column:
    # one GEMM gives (z - m_k)^T U_k for every component.
    A = np.empty((K * d, d + 1))
    A[:, :d] = U.transpose(0, 2, 1).reshape(K * d, d)
    A[:, d] = -np.einsum("kj,kjl->kl", M, U).reshape(K * d)
    return (A,), np.zeros(K)


def _sq_maha_full(b: CentredBlock, coef):
    if b.phiT is not None:
        P_tri, m2PM = coef
        out = P_tri @ b.phiT
        out += m2PM @ b.ZT
        return out
    (A,) = coef
    d = b.ZT.shape[0]
    Y = (A[:, :d] @ b.ZT + A[:, d:]).reshape(-1, d, b.ZT.shape[1])
    return np.einsum("kdn,kdn->kn", Y, Y)


def _prep_tied(M, U):
    O = M @ U
    return (np.ascontiguousarray(U.T), -2.0 * O), np.einsum("kd,kd->k", O, O)


def _sq_maha_tied(b: CentredBlock, coef):
    UT, m2O = coef
    Y = UT @ b.ZT
    out = m2O @ Y
    out += np.einsum("dn,dn->n", Y, Y)[None, :]
    return out


def _prep_diag(M, U):
    P = U**2
    return (P, -2.0 * M * P), np.einsum("kj,kj->k", M * M, P)


def _sq_maha_diag(b: CentredBlock, coef):
    P, m2MP = coef
    out = P @ b.sqT
    out += m2MP @ b.ZT
    return out


def _prep_spherical(M, U):
    P = U**2
    return (P, -2.0 * M * P[:, None]), P * np.einsum("kj,kj->k", M, M)


def _sq_maha_spherical(b: CentredBlock, coef):
    P, m2MP = coef
    out = m2MP @ b.ZT
    out += np.outer(P, b.sqT.sum(axis=0))
    return out


_PREP = {
    "full": _prep_full,
    "tied": _prep_tied,
    "diag": _prep_diag,
    "spherical": _prep_spherical,
}
_SQ_MAHA = {
    "full": _sq_maha_full,
    "tied": _sq_maha_tied,
    "diag": _sq_maha_diag,
    "spherical": _sq_maha_spherical,
}


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
        ``log w_k + log|det U_k| - d/2 log 2 pi - 1/2 (constant part of the distance)``.
    """

    params: Params
    center: np.ndarray
    coef: tuple
    offset: np.ndarray

    @classmethod
    def of(cls, params: Params) -> Scorer:
        center = center_of(params)
        coef, quad_const = _PREP[params.covariance_type](
            params.means - center, params.precisions_cholesky
        )
        log_det = log_det_cholesky(
            params.precisions_cholesky, params.covariance_type, params.n_features
        )
        offset = (
            log_det - 0.5 * params.n_features * _LOG_2PI + np.log(params.weights)
            - 0.5 * quad_const
        )
        return cls(params, center, coef, offset)

    def block(self, X: np.ndarray) -> CentredBlock:
        p = self.params
        return CentredBlock.build(X, self.center, p.covariance_type, p.n_components)


def _weighted_log_prob_t(b: CentredBlock, scorer: Scorer) -> np.ndarray:
    """log w_k + log N(x_n | mu_k, Sigma_k), component-major shape (K, n)."""
    out = _SQ_MAHA[scorer.params.covariance_type](b, scorer.coef)
    out *= -0.5
    out += scorer.offset[:, None]
    return out


# --------------------------------------------------------------------------
# E-step
# --------------------------------------------------------------------------


def _resp_t(b: CentredBlock, scorer: Scorer):
    """Per-row log-likelihood (n,) and responsibilities (K, n), by log-sum-exp.

    One exp per entry: the exponentials shifted by the row maximum give both
    the normaliser and, divided by it, the responsibilities.
    """
    a = _weighted_log_prob_t(b, scorer)
    amax = a.max(axis=0)
    amax[~np.isfinite(amax)] = 0.0
    a -= amax
    resp = np.exp(a, out=a)
    total = resp.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):  # all -inf: caught by the caller
        log_norm = np.log(total)
        resp /= total
    log_norm += amax
    return log_norm, resp


def log_gaussian_prob(X: np.ndarray, params: Params) -> np.ndarray:
    """log N(x_n | mu_k, Sigma_k) for every row and component, shape (n, K)."""
    scorer = Scorer.of(params)
    a = _weighted_log_prob_t(scorer.block(X), scorer) - np.log(params.weights)[:, None]
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


def _checked_resp_t(X, scorer: Scorer, row_offset: int):
    # Non-finite input is detected from the result (free on clean data), so the
    # arithmetic on it must not warn first.
    with np.errstate(invalid="ignore", over="ignore"):
        b = scorer.block(X)
        log_norm, resp = _resp_t(b, scorer)
    if not np.isfinite(log_norm).all():
        check_finite_block(X, row_offset)
        raise FloatingPointError(
            f"Non-finite log-likelihood in rows {row_offset}..{row_offset + len(X) - 1} "
            "with finite data; increase reg_covar or scale the input data."
        )
    return b, log_norm, resp


# Rows per sub-block inside a chunk: the work arrays of a sub-block stay in
# cache and bounded in size however large the storage chunk is.
SUB_ROWS = 2048


def _sub_blocks(n: int):
    for start in range(0, n, SUB_ROWS):
        yield start, slice(start, min(start + SUB_ROWS, n))


_PER_ROW = {
    "labels": lambda log_norm, resp: resp.argmax(axis=0),
    "proba": lambda log_norm, resp: resp.T,
    "log_density": lambda log_norm, resp: log_norm,
}
PER_ROW_OUTPUTS = tuple(_PER_ROW)


def per_row_outputs(
    X: np.ndarray, params: Params, whats: tuple[str, ...], row_offset: int = 0
) -> list[np.ndarray]:
    """Several per-row outputs of one block from a single E-step.

    ``whats`` names outputs among 'labels' (n,), 'proba' (n, K) and
    'log_density' (n,); the block is processed in sub-blocks of ``SUB_ROWS``.
    """
    scorer = Scorer.of(params)
    parts = []
    for start, sl in _sub_blocks(len(X)):
        _, log_norm, resp = _checked_resp_t(X[sl], scorer, row_offset + start)
        parts.append([_PER_ROW[w](log_norm, resp) for w in whats])
    return [np.concatenate(p) for p in zip(*parts, strict=True)]


def predict_block(X: np.ndarray, params: Params, what: str, row_offset: int = 0) -> np.ndarray:
    """Per-row outputs for one block: 'labels', 'proba' or 'log_density'."""
    return per_row_outputs(X, params, (what,), row_offset)[0]


# --------------------------------------------------------------------------
# Chunk statistics (shifted: S and Q about c_k, the means the pass started
# from; tied Q about the common centre)
# --------------------------------------------------------------------------


def _q_full(b: CentredBlock, R, S0, nk, shift_c):
    K = R.shape[0]
    d = b.Z.shape[1]
    if b.phiT is not None:
        # All scatter matrices about the centre in one GEMM, then moved to each c_k.
        tri = R @ b.phiT.T
        iu = np.triu_indices(d)
        Q = np.empty((K, d, d))
        Q[:, iu[0], iu[1]] = tri
        Q[:, iu[1], iu[0]] = tri
        Q -= S0[:, :, None] * shift_c[:, None, :] + shift_c[:, :, None] * S0[:, None, :]
        Q += nk[:, None, None] * shift_c[:, :, None] * shift_c[:, None, :]
        return Q
    Q = np.empty((K, d, d))
    for k in range(K):  # few components: one GEMM each, about c_k directly
        D = b.ZT - shift_c[k][:, None]
        Q[k] = (D * R[k]) @ D.T
    return Q


def _q_diag(b: CentredBlock, R, S0, nk, shift_c):
    # sum_n r_nk (z - m_k)^2 = R Z^2 - 2 m_k (R Z) + N_k m_k^2, exact algebra
    return R @ b.sqT.T - 2.0 * shift_c * S0 + nk[:, None] * shift_c**2


def _q_spherical(b: CentredBlock, R, S0, nk, shift_c):
    return _q_diag(b, R, S0, nk, shift_c).sum(axis=1)


def _q_tied(b: CentredBlock, R, S0, nk, shift_c):
    return (b.ZT * R.sum(axis=0)) @ b.Z


_Q_STAT = {"full": _q_full, "tied": _q_tied, "diag": _q_diag, "spherical": _q_spherical}


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
    qk = _Q_STAT[covariance_type](block, R, S0, nk, shift_c)
    return SuffStats(
        covariance_type=covariance_type,
        shift=shift,
        center=center,
        n=float(nk.sum()),
        nk=nk,
        sk=S0 - nk[:, None] * shift_c,
        qk=qk,
        loglik=float(loglik),
        n_rows=int(X.shape[0]),
    )


def estep_stats(
    X: np.ndarray,
    params: Params,
    sample_weight: np.ndarray | None = None,
    row_offset: int = 0,
) -> SuffStats:
    """One E-step over a block: its statistics about the current means, plus log-likelihood.

    ``sample_weight`` (n,) multiplies each row's responsibilities and
    log-likelihood. A non-finite value in the block raises ``ValueError``
    naming its row. The block is processed in sub-blocks of ``SUB_ROWS``.
    """
    scorer = Scorer.of(params)
    total = None
    for start, sl in _sub_blocks(len(X)):
        w = None if sample_weight is None else sample_weight[sl]
        st = _estep_sub(X[sl], scorer, w, row_offset + start)
        total = st if total is None else total + st
    return total


def _estep_sub(X, scorer: Scorer, sample_weight, row_offset: int) -> SuffStats:
    block, log_norm, resp = _checked_resp_t(X, scorer, row_offset)
    params = scorer.params
    if sample_weight is not None:
        resp *= sample_weight[None, :]
        log_norm = log_norm * sample_weight
    return stats_from_resp(
        X, resp, params.means, scorer.center, params.covariance_type,
        loglik=log_norm.sum(), block=block,
    )


# --------------------------------------------------------------------------
# k-means (initialisation): nearest-centre assignment, k-means++ seeding and
# Lloyd iterations on an in-memory sample
# --------------------------------------------------------------------------


def _sq_dist_t(b: CentredBlock, centers_c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (K, n) from a centred block to centred centres."""
    coef, const = _prep_spherical(centers_c, np.ones(len(centers_c)))
    out = _sq_maha_spherical(b, coef)
    out += const[:, None]
    return out


def nearest_center(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for every row, shape (n,)."""
    c = centers.mean(axis=0)
    b = CentredBlock.build(X, c, "spherical", len(centers))
    return _sq_dist_t(b, centers - c).argmin(axis=0)


def hard_assignment_stats(
    X: np.ndarray, centers: np.ndarray, covariance_type: str, row_offset: int = 0
) -> SuffStats:
    """Statistics of one-hot responsibilities to the nearest centre, about the centres.

    With ``covariance_type='spherical'`` this is one Lloyd step's worth of work:
    new centres are ``centers + sk / nk`` and ``qk.sum()`` is the inertia.
    """
    total = None
    center = centers.mean(axis=0)
    K = len(centers)
    for start, sl in _sub_blocks(len(X)):
        with np.errstate(invalid="ignore", over="ignore"):
            b = CentredBlock.build(X[sl], center, covariance_type, K)
            dist = _sq_dist_t(b, centers - center)
        if not np.isfinite(dist).all():
            check_finite_block(X[sl], row_offset + start)
        one_hot = (dist.argmin(axis=0) == np.arange(K)[:, None]).astype(np.float64)
        st = stats_from_resp(X[sl], one_hot, centers, center, covariance_type, block=b)
        total = st if total is None else total + st
    return total


def kmeans_plusplus(X: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) on in-memory rows.

    Each new centre is the best, by resulting potential, of ``2 + log(k)``
    candidates drawn with probability proportional to squared distance.
    """
    n = len(X)
    n_trials = 2 + int(np.log(n_clusters))
    centers = np.empty((n_clusters, X.shape[1]))
    centers[0] = X[rng.integers(n)]
    d2 = ((X - centers[0]) ** 2).sum(axis=1)
    potential = d2.sum()
    for c in range(1, n_clusters):
        if potential <= 0.0:  # fewer distinct points than clusters: any row will do
            centers[c] = X[rng.integers(n)]
            continue
        cand = np.searchsorted(np.cumsum(d2), rng.random(n_trials) * potential)
        cand = np.minimum(cand, n - 1)
        cand_d2 = ((X[None, :, :] - X[cand][:, None, :]) ** 2).sum(axis=2)
        np.minimum(cand_d2, d2[None, :], out=cand_d2)
        pots = cand_d2.sum(axis=1)
        best = int(np.argmin(pots))
        centers[c] = X[cand[best]]
        d2, potential = cand_d2[best], pots[best]
    return centers


def lloyd_update(stats: SuffStats) -> np.ndarray:
    """New centres from hard-assignment statistics; an empty cluster keeps its centre."""
    counts = np.maximum(stats.nk, 1.0)[:, None]
    return stats.shift + np.where(stats.nk[:, None] > 0, stats.sk / counts, 0.0)


def lloyd(X: np.ndarray, centers: np.ndarray, tol: float, max_iter: int = 300) -> np.ndarray:
    """Lloyd iterations on in-memory rows until the squared centre shift is <= ``tol``."""
    for _ in range(max_iter):
        new = lloyd_update(hard_assignment_stats(X, centers, "spherical"))
        shift = ((new - centers) ** 2).sum()
        centers = new
        if shift <= tol:
            break
    return centers


# --------------------------------------------------------------------------
# M-step
# --------------------------------------------------------------------------


def _cov_full(st, nk, m, reg):
    cov = st.qk / nk[:, None, None] - m[:, :, None] * m[:, None, :]
    cov += reg * np.eye(m.shape[1])[None]
    return cov


def _cov_tied(st, nk, m, reg):
    # S about the common centre, then (Q - sum_k S_k S_k^T / N_k) / n
    s0 = st.sk + st.nk[:, None] * (st.shift - st.center)
    cov = (st.qk - (s0.T / nk) @ s0) / nk.sum()
    cov += reg * np.eye(m.shape[1])
    return cov


def _cov_diag(st, nk, m, reg):
    return st.qk / nk[:, None] - m**2 + reg


def _cov_spherical(st, nk, m, reg):
    return (st.qk / nk - (m**2).sum(axis=1)) / m.shape[1] + reg


_COV = {"full": _cov_full, "tied": _cov_tied, "diag": _cov_diag, "spherical": _cov_spherical}

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
    covariances = _COV[stats.covariance_type](stats, nk, m, reg_covar)
    weights = nk / nk.sum()
    empty = np.flatnonzero(stats.nk <= EMPTY_COMPONENT_SHARE * max(stats.n, 1e-300))
    return weights, means, covariances, empty


def stats_from_params(params: Params, covariances: np.ndarray, reg_covar: float) -> SuffStats:
    """Normalised statistics (``n = 1``) whose :func:`m_step` gives back ``params``.

    The inverse of the M-step, up to its ``10 * eps`` guard on ``N_k``: the
    starting point of stepwise EM when the model comes from parameters rather
    than from data. Statistics are about the means (so ``S_k = 0``); the tied
    scatter is about :func:`center_of`.
    """
    cov_type, nk, means = params.covariance_type, params.weights, params.means
    d = params.n_features
    cov = np.asarray(covariances, dtype=np.float64)
    center = center_of(params)
    if cov_type == "full":
        qk = nk[:, None, None] * (cov - reg_covar * np.eye(d))
    elif cov_type == "diag":
        qk = nk[:, None] * (cov - reg_covar)
    elif cov_type == "spherical":
        qk = nk * d * (cov - reg_covar)
    else:  # tied: pooled scatter about the centre plus the between-component part
        dm = means - center
        qk = nk.sum() * (cov - reg_covar * np.eye(d)) + (dm.T * nk) @ dm
    return SuffStats(
        covariance_type=cov_type, shift=means, center=center, n=float(nk.sum()),
        nk=nk, sk=np.zeros_like(means), qk=qk, loglik=0.0, n_rows=0,
    )
