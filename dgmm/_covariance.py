"""One table entry per covariance type: everything the maths needs to know about it.

Each entry of :data:`COVARIANCE` gathers the small pure NumPy functions that
differ between 'full', 'tied', 'diag' and 'spherical' (shapes and parameter
count, precision Cholesky factors, log-determinant, squared Mahalanobis
distances, scatter statistics, M-step and its inverse, re-shifting of the
statistics, sampling, random covariances), so adding a covariance type means
adding one entry here. The generic code (:mod:`dgmm._kernels`,
:mod:`dgmm._stats`, the estimator and the datasets) looks entries up by name
and never branches on the type.

Conventions follow scikit-learn: ``precisions_cholesky`` holds, per
component, a factor ``U`` with ``precision = U @ U.T``; covariance shapes are
full ``(K, d, d)``, tied ``(d, d)``, diag ``(K, d)`` and spherical ``(K,)``.

This module imports nothing from the package, so both :mod:`dgmm._stats` and
:mod:`dgmm._kernels` can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np
from scipy import linalg


class SuffStats(Protocol):
    """The fields of a statistics packet that the table reads (:class:`dgmm._stats.SuffStats`).

    Declared here so this bottom module imports nothing from dgmm.
    """

    shift: np.ndarray
    center: np.ndarray
    n: float
    nk: np.ndarray
    sk: np.ndarray
    qk: np.ndarray

# --------------------------------------------------------------------------
# Local names of the numeric code below (and of :mod:`dgmm._kernels`):
#
#   K, d, n   components, features, rows of a block
#   U         precision Cholesky factors (precision = U U^T), shape per type
#   P         precisions (U U^T, or U**2 for diag and spherical)
#   M         means relative to the block centre, (K, d)
#   ZT        a block's rows minus the centre, feature-major (d, n); Z = ZT.T
#   sqT       ZT**2, (d, n)
#   phiT      upper triangle of each row's outer product z z^T, (d(d+1)/2, n)
#   coef      parameter-only coefficients of the squared Mahalanobis distances
#   P_tri     upper triangle of P with off-diagonals doubled, (K, d(d+1)/2)
#   m2PM      -2 P_k m_k per component, (K, d); m2MP the same for diag and
#             spherical; m2O is -2 m_k^T U for tied, (K, d)
#   A         stacked [U_k^T | -U_k^T m_k] of the per-component GEMM route
#   R         responsibilities, component-major (K, n)
#   nk        sum_n r_nk, (K,)
#   S0        R Z: first moments about the centre, (K, d)
#   shift_c   the shifts c_k relative to the centre, (K, d)
#   Q         scatter statistic (qk), shape per type (see SuffStats)
#   m         sk / nk: new means relative to the shifts, (K, d)
#   reg       reg_covar, added to the diagonal of every covariance
#   F         linear features of a block, (m + 1, n): ZT, then the type's m - d
#             extra rows (sqT, |z|^2 or phiT), then a row of ones
#   extra     R @ (extra rows of F)^T, (K, m - d): what the scatter needs beyond S0
# --------------------------------------------------------------------------


def use_outer_features(n_components: int, n_features: int) -> bool:
    """Whether the outer-product route beats per-component GEMMs (full covariance).

    The outer-product features cost d(d+1)/2 products per row to build but
    turn every component's quadratic form and scatter matrix into one GEMM,
    with half the flops thanks to symmetry; with few components the build
    dominates and per-component GEMMs win.
    """
    return 8 * n_components > n_features  # measured on 2 cores: d=16..64, K=1..16


def _outer_rows(ZT: np.ndarray, out: np.ndarray) -> None:
    """Write the upper triangle of each row's outer product ``z z^T`` into ``out``."""
    d = ZT.shape[0]
    pos = 0
    for i in range(d):
        np.multiply(ZT[i], ZT[i:], out=out[pos : pos + d - i])
        pos += d - i


@dataclass(frozen=True)
class CentredBlock:
    """A block of rows centred at ``center``, in the layouts the kernels use.

    Attributes
    ----------
    ZT : ndarray of shape (d, n), C-contiguous
        The centred rows, feature-major (``Z`` is its transposed view).
    phiT : ndarray of shape (d(d+1)/2, n) or None
        Upper triangle of each row's outer product ``z z^T`` (covariance types
        with an outer-product route, with many components only).
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
    def build(
        cls, X: np.ndarray, center: np.ndarray, covariance_type: str, n_components: int
    ) -> CentredBlock:
        """Centre ``X`` (n, d) at ``center`` (d,), in float64."""
        n, d = X.shape
        ZT = np.empty((d, n))
        np.subtract(X.T, center[:, None], out=ZT, casting="unsafe")  # float32 -> float64 here
        phiT = None
        if COVARIANCE[covariance_type].outer_route and use_outer_features(n_components, d):
            phiT = np.empty((d * (d + 1) // 2, n))
            _outer_rows(ZT, phiT)
        return cls(ZT, phiT)


# --------------------------------------------------------------------------
# Precision Cholesky factors, precisions, covariances, log-determinants
# --------------------------------------------------------------------------


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


def _precision_matrix_cholesky(precision: np.ndarray, name: str) -> np.ndarray:
    """Lower Cholesky factor of one user-supplied precision matrix called ``name``."""
    if not np.allclose(precision, precision.T, rtol=1e-10, atol=0.0):
        raise ValueError(f"{name} must be symmetric")
    try:
        return linalg.cholesky(precision, lower=True)
    except linalg.LinAlgError:
        raise ValueError(f"{name} must be positive definite") from None


def _chol_of_precisions_full(precisions: np.ndarray) -> np.ndarray:
    return np.stack([_precision_matrix_cholesky(p, f"precisions_init[{k}]")
                     for k, p in enumerate(precisions)])


def _chol_of_precisions_tied(precision: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(_precision_matrix_cholesky(precision, "precisions_init"))


def _chol_of_precisions_diag(precisions: np.ndarray) -> np.ndarray:
    if np.any(precisions <= 0.0) or not np.all(np.isfinite(precisions)):
        raise ValueError(f"precisions_init must be positive; got {precisions!r}")
    return np.sqrt(precisions)


def _precisions_full(U: np.ndarray) -> np.ndarray:
    return np.einsum("kij,klj->kil", U, U)


def _precisions_tied(U: np.ndarray) -> np.ndarray:
    return U @ U.T


def _precisions_diag(U: np.ndarray) -> np.ndarray:
    return U**2


def _covariances_matrix(U: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(U)  # precision^-1 = U^-T U^-1
    return np.swapaxes(inv, -1, -2) @ inv


def _covariances_diag(U: np.ndarray) -> np.ndarray:
    return 1.0 / U**2


def _log_det_full(U: np.ndarray, d: int) -> np.ndarray:
    return np.log(np.diagonal(U, axis1=1, axis2=2)).sum(axis=1)


def _log_det_tied(U: np.ndarray, d: int) -> np.ndarray:
    return np.log(np.diag(U)).sum()


def _log_det_diag(U: np.ndarray, d: int) -> np.ndarray:
    return np.log(U).sum(axis=1)


def _log_det_spherical(U: np.ndarray, d: int) -> np.ndarray:
    return d * np.log(U)


# --------------------------------------------------------------------------
# Squared Mahalanobis distances.  Each type splits them into coefficients that
# depend only on the parameters (``_prep_*``, computed once per chunk, with a
# per-component constant) and the per-row work (``_sq_maha_*``, shape (K, n)).
# --------------------------------------------------------------------------


def _prep_full(M: np.ndarray, U: np.ndarray) -> tuple[tuple, np.ndarray]:
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


def _sq_maha_full(b: CentredBlock, coef: tuple) -> np.ndarray:
    if b.phiT is not None:
        P_tri, m2PM = coef
        out = P_tri @ b.phiT
        out += m2PM @ b.ZT
        return out
    (A,) = coef
    d = b.ZT.shape[0]
    Y = (A[:, :d] @ b.ZT + A[:, d:]).reshape(-1, d, b.ZT.shape[1])
    return np.einsum("kdn,kdn->kn", Y, Y)


def _prep_tied(M: np.ndarray, U: np.ndarray) -> tuple[tuple, np.ndarray]:
    O = M @ U
    return (np.ascontiguousarray(U.T), -2.0 * O), np.einsum("kd,kd->k", O, O)


def _sq_maha_tied(b: CentredBlock, coef: tuple) -> np.ndarray:
    UT, m2O = coef
    Y = UT @ b.ZT
    out = m2O @ Y
    out += np.einsum("dn,dn->n", Y, Y)[None, :]
    return out


def _prep_diag(M: np.ndarray, U: np.ndarray) -> tuple[tuple, np.ndarray]:
    P = U**2
    return (P, -2.0 * M * P), np.einsum("kj,kj->k", M * M, P)


def _sq_maha_diag(b: CentredBlock, coef: tuple) -> np.ndarray:
    P, m2MP = coef
    out = P @ b.sqT
    out += m2MP @ b.ZT
    return out


def _prep_spherical(M: np.ndarray, U: np.ndarray) -> tuple[tuple, np.ndarray]:
    P = U**2
    return (P, -2.0 * M * P[:, None]), P * np.einsum("kj,kj->k", M, M)


def _sq_maha_spherical(b: CentredBlock, coef: tuple) -> np.ndarray:
    P, m2MP = coef
    out = m2MP @ b.ZT
    out += np.outer(P, b.sqT.sum(axis=0))
    return out


# --------------------------------------------------------------------------
# Scatter statistic Q of a block: about the shifts c_k (tied: about the centre)
# --------------------------------------------------------------------------


def _q_full_of(tri, S0, nk, shift_c) -> np.ndarray:
    """Scatter matrices about each c_k from ``tri = R phi`` (about the centre)."""
    K, d = S0.shape
    iu = np.triu_indices(d)
    Q = np.empty((K, d, d))
    Q[:, iu[0], iu[1]] = tri
    Q[:, iu[1], iu[0]] = tri
    Q -= S0[:, :, None] * shift_c[:, None, :] + shift_c[:, :, None] * S0[:, None, :]
    Q += nk[:, None, None] * shift_c[:, :, None] * shift_c[:, None, :]
    return Q


def _q_full(b: CentredBlock, R, S0, nk, shift_c) -> np.ndarray:
    K = R.shape[0]
    d = b.Z.shape[1]
    if b.phiT is not None:
        # All scatter matrices about the centre in one GEMM, then moved to each c_k.
        return _q_full_of(R @ b.phiT.T, S0, nk, shift_c)
    Q = np.empty((K, d, d))
    for k in range(K):  # few components: one GEMM each, about c_k directly
        D = b.ZT - shift_c[k][:, None]
        Q[k] = (D * R[k]) @ D.T
    return Q


def _q_tied(b: CentredBlock, R, S0, nk, shift_c) -> np.ndarray:
    return (b.ZT * R.sum(axis=0)) @ b.Z


def _q_diag_of(RZ2, S0, nk, shift_c) -> np.ndarray:
    # sum_n r_nk (z - m_k)^2 = R Z^2 - 2 m_k (R Z) + N_k m_k^2, exact algebra
    return RZ2 - 2.0 * shift_c * S0 + nk[:, None] * shift_c**2


def _q_spherical_of(RZ2, S0, nk, shift_c) -> np.ndarray:
    # RZ2: R |z|^2, (K,) or (K, 1); the trace of the diag statistic
    return (RZ2.reshape(-1) - 2.0 * np.einsum("kd,kd->k", shift_c, S0)
            + nk * np.einsum("kd,kd->k", shift_c, shift_c))


def _q_diag(b: CentredBlock, R, S0, nk, shift_c) -> np.ndarray:
    return _q_diag_of(R @ b.sqT.T, S0, nk, shift_c)


def _q_spherical(b: CentredBlock, R, S0, nk, shift_c) -> np.ndarray:
    return _q_spherical_of(R @ b.sqT.sum(axis=0), S0, nk, shift_c)


def _shift_q_full(st: SuffStats, delta: np.ndarray, center: np.ndarray) -> np.ndarray:
    nk = st.nk[:, None, None]
    return (
        st.qk
        - st.sk[:, :, None] * delta[:, None, :]
        - delta[:, :, None] * st.sk[:, None, :]
        + nk * delta[:, :, None] * delta[:, None, :]
    )


def _shift_q_tied(st: SuffStats, delta: np.ndarray, center: np.ndarray) -> np.ndarray:
    # Q is about the common centre, which moves to ``center``.
    s0 = (st.sk + st.nk[:, None] * (st.shift - st.center)).sum(axis=0)
    dc = center - st.center
    return st.qk - np.outer(s0, dc) - np.outer(dc, s0) + st.n * np.outer(dc, dc)


def _shift_q_diag(st: SuffStats, delta: np.ndarray, center: np.ndarray) -> np.ndarray:
    return st.qk - 2.0 * st.sk * delta + st.nk[:, None] * delta**2


def _shift_q_spherical(st: SuffStats, delta: np.ndarray, center: np.ndarray) -> np.ndarray:
    return st.qk - 2.0 * (st.sk * delta).sum(axis=1) + st.nk * (delta**2).sum(axis=1)


# --------------------------------------------------------------------------
# M-step covariances from statistics (``nk`` guarded against 0, ``m = sk / nk``),
# and the inverse: the scatter Q about the means that gives back covariances.
# --------------------------------------------------------------------------


def _cov_full(st: SuffStats, nk, m, reg) -> np.ndarray:
    cov = st.qk / nk[:, None, None] - m[:, :, None] * m[:, None, :]
    cov += reg * np.eye(m.shape[1])[None]
    return cov


def _cov_tied(st: SuffStats, nk, m, reg) -> np.ndarray:
    # S about the common centre, then (Q - sum_k S_k S_k^T / N_k) / n
    s0 = st.sk + st.nk[:, None] * (st.shift - st.center)
    cov = (st.qk - (s0.T / nk) @ s0) / nk.sum()
    cov += reg * np.eye(m.shape[1])
    return cov


def _cov_diag(st: SuffStats, nk, m, reg) -> np.ndarray:
    return st.qk / nk[:, None] - m**2 + reg


def _cov_spherical(st: SuffStats, nk, m, reg) -> np.ndarray:
    return (st.qk / nk - (m**2).sum(axis=1)) / m.shape[1] + reg


def _scatter_full(cov, nk, means, center, reg) -> np.ndarray:
    return nk[:, None, None] * (cov - reg * np.eye(means.shape[1]))


def _scatter_tied(cov, nk, means, center, reg) -> np.ndarray:
    # pooled scatter about the centre plus the between-component part
    dm = means - center
    return nk.sum() * (cov - reg * np.eye(means.shape[1])) + (dm.T * nk) @ dm


def _scatter_diag(cov, nk, means, center, reg) -> np.ndarray:
    return nk[:, None] * (cov - reg)


def _scatter_spherical(cov, nk, means, center, reg) -> np.ndarray:
    return nk * means.shape[1] * (cov - reg)


# --------------------------------------------------------------------------
# Dense covariances, random covariances, sampling
# --------------------------------------------------------------------------


def _dense_full(cov: np.ndarray, k: int, d: int) -> np.ndarray:
    return cov


def _dense_tied(cov: np.ndarray, k: int, d: int) -> np.ndarray:
    return np.broadcast_to(cov, (k, d, d))


def _dense_diag(cov: np.ndarray, k: int, d: int) -> np.ndarray:
    return cov[:, :, None] * np.eye(d)


def _dense_spherical(cov: np.ndarray, k: int, d: int) -> np.ndarray:
    return cov[:, None, None] * np.eye(d)


def _random_spd(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    """``k`` matrices ``0.5 I + A A^T / 2``, ``A`` standard normal scaled by ``1/sqrt(d)``."""
    A = rng.standard_normal((k, d, d)) / np.sqrt(d)
    return 0.5 * np.eye(d) + 0.5 * A @ A.transpose(0, 2, 1)


def _random_full(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    return _random_spd(rng, k, d)


def _random_tied(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    return _random_spd(rng, 1, d)[0]


def _random_diag(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    return rng.uniform(0.5, 1.5, (k, d))


def _random_spherical(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    return rng.uniform(0.5, 1.5, k)


def _sample_full(rng, mean: np.ndarray, covariances: np.ndarray, k: int, n: int) -> np.ndarray:
    return rng.multivariate_normal(mean, covariances[k], n)


def _sample_tied(rng, mean: np.ndarray, covariances: np.ndarray, k: int, n: int) -> np.ndarray:
    return rng.multivariate_normal(mean, covariances, n)


def _sample_scaled(rng, mean: np.ndarray, covariances: np.ndarray, k: int, n: int) -> np.ndarray:
    return mean + rng.standard_normal(size=(n, mean.shape[0])) * np.sqrt(covariances[k])


# --------------------------------------------------------------------------
# Linear route (the fast kernel): for full (many components), diag and
# spherical, the log-densities and all statistics are linear in per-row
# features [z | extra | 1], so a sub-block costs one GEMM for the densities
# of every component (the offsets ride on the column of ones) and one product
# for nk, S0 and the scatter together. ``lin_rows`` gives m, the feature
# columns before the ones (None: no linear route); the compiled loop
# ``dgmm._jit.FILL[name]`` writes the features of a block of rows;
# ``lin_coef`` turns ``prep``'s coefficients into the (K, m) matrix with
# ``sq_maha = coef @ F[:, :m]^T``, and ``lin_scatter`` the extra statistics
# into Q.  The table's ``sq_maha``/``scatter`` stay the reference.
# --------------------------------------------------------------------------


def _lin_rows_full(k: int, d: int) -> int | None:
    return d + d * (d + 1) // 2 if use_outer_features(k, d) else None


def _lin_coef(coef: tuple) -> np.ndarray:
    # prep's (quadratic, linear) pair of full/diag/spherical: [linear | quadratic]
    quad, lin = coef
    return np.hstack([lin, quad.reshape(lin.shape[0], -1)])


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CovarianceType:
    """Everything one covariance type needs, as small pure NumPy functions.

    ``covariances`` below always have the scikit-learn shape of the type
    (:attr:`shape`), ``U`` the same shape (precision Cholesky factors).

    Attributes
    ----------
    name : str
    shape : callable (K, d) -> tuple
        Shape of ``covariances_``, of precisions and of ``U``.
    n_parameters : callable (K, d) -> int
        Free parameters of the covariances (for BIC/AIC).
    precision_cholesky : callable (covariances) -> U
        Raises ``ValueError`` naming a component whose covariance is not
        positive definite.
    precision_cholesky_from_precisions : callable (precisions) -> U
        For user-supplied precisions; raises ``ValueError`` saying what is wrong.
    precisions : callable (U) -> precisions
    covariances : callable (U) -> covariances
    log_det : callable (U, d) -> ndarray
        ``log|det U_k|`` per component (a scalar for tied).
    outer_route : bool
        Whether :meth:`CentredBlock.build` provides the outer-product features
        (when :func:`use_outer_features` says they pay).
    prep : callable (M, U) -> (coef, const)
        Parameter-only coefficients of the squared Mahalanobis distances and
        their per-component constant part, shape (K,).
    sq_maha : callable (CentredBlock, coef) -> ndarray of shape (K, n)
        Squared Mahalanobis distances less their constant part.
    scatter : callable (CentredBlock, R, S0, nk, shift_c) -> Q
        A block's scatter statistic (``SuffStats.qk``).
    shift_scatter : callable (SuffStats, delta, center) -> Q
        ``qk`` expressed about the shifts ``shift + delta`` and ``center``.
    m_step : callable (SuffStats, nk, m, reg) -> covariances
    scatter_of : callable (covariances, nk, means, center, reg) -> Q
        Inverse of ``m_step``: the scatter, about the means (tied: about
        ``center``), of normalised statistics giving back ``covariances``.
    dense : callable (covariances, K, d) -> ndarray of shape (K, d, d)
        Every component's covariance matrix (possibly a broadcast view).
    random : callable (Generator, K, d) -> covariances
        Random covariances with eigenvalues of order 1 (synthetic data).
    sample_component : callable (rng, mean, covariances, k, n) -> ndarray of shape (n, d)
        ``n`` draws from component ``k``.
    lin_rows : callable (K, d) -> int or None
        Rows ``m`` of the linear features ``[z; extra]`` (None: no linear route).
    lin_coef : callable (coef) -> ndarray of shape (K, m)
        ``prep``'s coefficients as one matrix: ``sq_maha = lin_coef @ F[:, :m]^T``.
    lin_scatter : callable (extra, S0, nk, shift_c) -> Q
        The scatter statistic from ``extra = R @ F[:, d:m]``.
    """

    name: str
    shape: Callable[[int, int], tuple[int, ...]]
    n_parameters: Callable[[int, int], int]
    precision_cholesky: Callable[[np.ndarray], np.ndarray]
    precision_cholesky_from_precisions: Callable[[np.ndarray], np.ndarray]
    precisions: Callable[[np.ndarray], np.ndarray]
    covariances: Callable[[np.ndarray], np.ndarray]
    log_det: Callable[[np.ndarray, int], np.ndarray]
    outer_route: bool
    prep: Callable[[np.ndarray, np.ndarray], tuple[tuple, np.ndarray]]
    sq_maha: Callable[[CentredBlock, tuple], np.ndarray]
    scatter: Callable[..., np.ndarray]
    shift_scatter: Callable[..., np.ndarray]
    m_step: Callable[..., np.ndarray]
    scatter_of: Callable[..., np.ndarray]
    dense: Callable[[np.ndarray, int, int], np.ndarray]
    random: Callable[[np.random.Generator, int, int], np.ndarray]
    sample_component: Callable[..., np.ndarray]
    lin_rows: Callable[[int, int], int | None] = lambda k, d: None
    lin_coef: Callable[[tuple], np.ndarray] | None = None
    lin_scatter: Callable[..., np.ndarray] | None = None

    def sample(self, rng, means: np.ndarray, covariances: np.ndarray, counts) -> np.ndarray:
        """``counts[k]`` draws from each component in turn, stacked, shape (sum(counts), d)."""
        return np.vstack([
            self.sample_component(rng, mean, covariances, k, int(count))
            for k, (mean, count) in enumerate(zip(means, counts, strict=True))
        ])


COVARIANCE = {
    "full": CovarianceType(
        name="full",
        shape=lambda k, d: (k, d, d),
        n_parameters=lambda k, d: k * d * (d + 1) // 2,
        precision_cholesky=_chol_prec_full,
        precision_cholesky_from_precisions=_chol_of_precisions_full,
        precisions=_precisions_full,
        covariances=_covariances_matrix,
        log_det=_log_det_full,
        outer_route=True,
        prep=_prep_full,
        sq_maha=_sq_maha_full,
        scatter=_q_full,
        shift_scatter=_shift_q_full,
        m_step=_cov_full,
        scatter_of=_scatter_full,
        dense=_dense_full,
        random=_random_full,
        sample_component=_sample_full,
        lin_rows=_lin_rows_full,
        lin_coef=_lin_coef,
        lin_scatter=_q_full_of,
    ),
    "tied": CovarianceType(
        name="tied",
        shape=lambda k, d: (d, d),
        n_parameters=lambda k, d: d * (d + 1) // 2,
        precision_cholesky=_chol_prec_tied,
        precision_cholesky_from_precisions=_chol_of_precisions_tied,
        precisions=_precisions_tied,
        covariances=_covariances_matrix,
        log_det=_log_det_tied,
        outer_route=False,
        prep=_prep_tied,
        sq_maha=_sq_maha_tied,
        scatter=_q_tied,
        shift_scatter=_shift_q_tied,
        m_step=_cov_tied,
        scatter_of=_scatter_tied,
        dense=_dense_tied,
        random=_random_tied,
        sample_component=_sample_tied,
    ),
    "diag": CovarianceType(
        name="diag",
        shape=lambda k, d: (k, d),
        n_parameters=lambda k, d: k * d,
        precision_cholesky=_chol_prec_diag,
        precision_cholesky_from_precisions=_chol_of_precisions_diag,
        precisions=_precisions_diag,
        covariances=_covariances_diag,
        log_det=_log_det_diag,
        outer_route=False,
        prep=_prep_diag,
        sq_maha=_sq_maha_diag,
        scatter=_q_diag,
        shift_scatter=_shift_q_diag,
        m_step=_cov_diag,
        scatter_of=_scatter_diag,
        dense=_dense_diag,
        random=_random_diag,
        sample_component=_sample_scaled,
        lin_rows=lambda k, d: 2 * d,
        lin_coef=_lin_coef,
        lin_scatter=_q_diag_of,
    ),
    "spherical": CovarianceType(
        name="spherical",
        shape=lambda k, d: (k,),
        n_parameters=lambda k, d: k,
        precision_cholesky=_chol_prec_diag,
        precision_cholesky_from_precisions=_chol_of_precisions_diag,
        precisions=_precisions_diag,
        covariances=_covariances_diag,
        log_det=_log_det_spherical,
        outer_route=False,
        prep=_prep_spherical,
        sq_maha=_sq_maha_spherical,
        scatter=_q_spherical,
        shift_scatter=_shift_q_spherical,
        m_step=_cov_spherical,
        scatter_of=_scatter_spherical,
        dense=_dense_spherical,
        random=_random_spherical,
        sample_component=_sample_scaled,
        lin_rows=lambda k, d: d + 1,
        lin_coef=_lin_coef,
        lin_scatter=_q_spherical_of,
    ),
}
COVARIANCE_TYPES = tuple(COVARIANCE)
