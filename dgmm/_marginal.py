"""EM for rows with missing coordinates (Ghahramani & Jordan 1994), pure NumPy.

A row whose missing coordinates ``m`` are NaN enters the E-step through the
marginal Gaussian of its observed coordinates ``o``, and the statistics
through the conditional moments of the missing ones given the observed ones,
under each component ``k``::

    r_nk   proportional to  w_k N(x_o | mu_k,o, Sigma_k,oo)
    x_hat  = x with x_m replaced by E[x_m | x_o, k] = mu_k,m + Sigma_mo Sigma_oo^-1 (x_o - mu_o)
    C_k    = Cov[x_m | x_o, k] = Sigma_mm - Sigma_mo Sigma_oo^-1 Sigma_om   (zero-padded to d x d)

    N_k += sum_n r_nk,   S_k += sum_n r_nk (x_hat - c_k),
    Q_k += sum_n r_nk (x_hat - c_k)(x_hat - c_k)^T + (sum_n r_nk) C_k,

reduced to each covariance type's ``qk`` as the table's ``scatter`` reduces
it (diag: the diagonal, spherical: its trace, tied: the sum over components
about the common centre). The packet adds (``+``) to the one that
:func:`dgmm._kernels.estep_stats` gives for the complete rows of a block under
the same parameters, and :func:`dgmm._kernels.m_step` on the sum is the
Ghahramani-Jordan M-step. Shifts are the current means (``c_k = mu_k``), so a
missing coordinate's deviation ``x_hat - c_k`` is just its regression on the
observed deviations, of the size of the data's spread, whatever the offset of
the data.

Full and tied covariances work from the precision ``Lambda = U U^T`` and
never invert it whole; only its missing block ``Lambda_mm`` (r x r) is
inverted:

* ``C = Lambda_mm^-1`` (the conditional covariance, exactly symmetric and
  free of the cancellation in ``Sigma_mm - Sigma_mo Sigma_oo^-1 Sigma_om``);
* ``E[x_m | x_o] - mu_m = -C t`` where ``t = (Lambda z)_m`` and ``z`` is the
  row's deviation from the mean with zeros at the missing coordinates;
* the marginal squared Mahalanobis distance ``z_o^T Sigma_oo^-1 z_o`` is the
  full one at the conditional mean, ``||U^T (x_hat - mu)||^2`` (``x_hat``
  minimises the full distance over ``x_m``): computed through ``U`` as for a
  complete row, it keeps the accuracy of the complete-data path, where the
  Schur-complement form ``z^T Lambda z - t^T C t`` would cancel when the
  precision is large (a missing coordinate nearly determined by observed ones);
* ``log det Sigma_oo^-1 = log det Lambda - log det Lambda_mm``.

Cost, per block. Rows are grouped by missingness pattern (``np.unique`` of the
packed NaN masks). Each distinct pattern with ``r`` missing coordinates costs
one inversion of ``Lambda_mm`` per component (tied: one in all), O(K r^3),
batched over all the patterns with the same ``r`` (Gauss-Jordan sweeps
vectorised over the patterns for r <= 12, batched LAPACK Cholesky beyond);
values of ``r`` with few rows share a group, padded to its largest ``r``
through an inert scratch coordinate, so that the fixed cost of a group (about
a hundred NumPy calls) is not paid for a handful of rows.
This is cheaper than factorising ``Sigma_oo`` (O(K (d - r)^3)) when few
values are missing, the common case. Each row then costs O(K d^2) as a
complete row does (its product with ``Lambda_k``, its rank-one term of the
scatter) plus O(K r^2) for its conditional moments, vectorised over all rows
with the same ``r``. Diag and spherical covariances need no grouping at all:
the missing coordinates are conditionally independent of the observed ones
(``E[x_m] = mu_m``, ``C`` the missing variances), so the marginal densities
and the statistics are masked versions of the complete-data products,
O(n K d) per block. Measured (``benchmarks/bench_missing.py``, d=16, K=8,
N=1e6, blocks of 100k rows through ``estep_stats(missing=True)``, one BLAS
thread, quiet 2-core AVX2 machine, two runs): a pass with 5% of the rows
incomplete costs 1.27-1.46x a complete pass for full and 1.37-1.41x for diag
covariances; with 5% of all entries missing (56% of the rows incomplete)
2.7-2.8x and 1.8x; with 20% (97% of the rows, ~13000 patterns per 100k rows)
6.1-6.7x and 2.1x. Call it once per block with all of the block's
incomplete rows rather than once per small sub-block: the groups' fixed
costs then fall on many rows.

Numerics: all arithmetic in float64 about the block centre; responsibilities
by log-sum-exp; a non-finite result raises (``ValueError`` for infinite input,
``FloatingPointError`` otherwise), never a silent NaN. A row with no observed
value at all is valid here (its responsibilities are the weights); rejecting
such rows is the caller's policy.

This module imports only NumPy, :mod:`dgmm._covariance` and
:mod:`dgmm._stats`, so :mod:`dgmm._kernels` can dispatch rows with NaN to it.
"""

# --------------------------------------------------------------------------
# Local names (besides those of the glossary in :mod:`dgmm._covariance`):
#
#   mask      NaN mask of a block, (n, d); O its complement (observed), float
#   Z         the block's rows minus the centre, zeros at missing coordinates
#   D         x_hat - c_k per component, (K, n, d): first o * (z - m_k), the
#             deviations with zeros at the missing coordinates, from which the
#             conditional means are regressed and then put in their place
#   Lam       precisions, (Kf, d, d): Kf = K for full, 1 for tied
#   t         (Lambda_k (o * (z - m_k)))_m, (K, n, r);  u = C t
#   Uf, Y     U as (Kf, d, d), and D @ U_k, whose squared norms are the distances
#   midx      missing coordinates of each pattern, (G, r)
#   G, r      patterns in a group, missing coordinates of each
#   C         Lambda_mm^-1 per component and pattern, laid out (r, Kf, G, r)
#   hld_mm    sum log diag chol(Lambda_mm) = log det(Lambda_mm) / 2, (Kf, G)
#   hld       log|det U_k| = log det(Lambda_k) / 2, (K,)
#   logp      log w_k + log N(x_o | mu_k,o, Sigma_k,oo), component-major (K, n)
# --------------------------------------------------------------------------

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from dgmm._covariance import COVARIANCE
from dgmm._stats import SuffStats

_LOG_2PI = np.log(2.0 * np.pi)

# Rows per sub-block, and a cap on the entries of the per-row work arrays
# (deviations, and the gathered conditional covariances), so memory stays
# bounded for many components, many features or many missing values.
SUB_ROWS = 2048
_WORK_ENTRIES = 1 << 21

# A group of patterns with consecutive numbers of missing values closes once
# it holds this many rows (see _pattern_groups).
_GROUP_ROWS = 256

# Up to this many missing coordinates a pattern group is inverted by
# Gauss-Jordan sweeps vectorised over its patterns (one LAPACK call per small
# matrix costs more than its arithmetic); beyond, by batched LAPACK.
_SMALL_R = 12


@dataclass(frozen=True)
class _Model:
    """The parameters of one call, in float64, with the block centre."""

    covariance_type: str
    log_w: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    U: np.ndarray
    center: np.ndarray  # (d,)

    @property
    def M(self) -> np.ndarray:
        return self.means - self.center

    @classmethod
    def of(cls, covariance_type, weights, means, precisions_cholesky, center) -> _Model:
        if covariance_type not in COVARIANCE:
            raise ValueError(f"unknown covariance_type {covariance_type!r}")
        weights = np.asarray(weights, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        if center is None:  # as dgmm._kernels.center_of: a point near the data
            center = weights @ means / weights.sum()
        with np.errstate(divide="ignore"):  # a zero weight is a -inf log-weight, not an error
            log_w = np.log(weights)
        return cls(covariance_type, log_w, means,
                   np.asarray(precisions_cholesky, dtype=np.float64),
                   np.asarray(center, dtype=np.float64))


@dataclass
class _Part:
    """The E-step of some rows of a block.

    ``moments(R)`` gives, for responsibilities ``R`` (K, n_part) of these rows
    (weighted, labels applied), ``S`` (K, d) about the shifts and the
    per-component scatter about the shifts including the conditional
    covariances: (K, d, d) for full and tied, its diagonal (K, d) for diag and
    spherical.
    """

    rows: np.ndarray  # indices into the block, (n_part,)
    logp: np.ndarray  # (K, n_part)
    moments: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _centred(X: np.ndarray, mask: np.ndarray, center: np.ndarray) -> np.ndarray:
    Z = np.empty(X.shape)
    np.subtract(X, center, out=Z, casting="unsafe")  # float32 -> float64 here
    Z[mask] = 0.0
    return Z


def _patterns(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``mask`` (G, d) and each row's pattern index (n,).

    Rows are packed to bits first: sorting one 64-bit key per row (up to 64
    features) is far faster than ``np.unique(mask, axis=0)``.
    """
    n = mask.shape[0]
    packed = np.packbits(mask, axis=1)
    if packed.shape[1] <= 8:
        buf = np.zeros((n, 8), dtype=np.uint8)
        buf[:, : packed.shape[1]] = packed
        _, first, inverse = np.unique(buf.view(np.uint64).ravel(), return_index=True,
                                      return_inverse=True)
    else:
        _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    return mask[first], inverse.reshape(-1)


# --------------------------------------------------------------------------
# Full and tied: per pattern factorisations of the missing block of the precision
# --------------------------------------------------------------------------


def _factor_missing(Lam: np.ndarray, miss: np.ndarray, order: np.ndarray, rp: int):
    """What the rows of a group of patterns ``miss`` (G, d), padded to ``rp`` missing, need.

    ``order`` (G, d) lists each pattern's missing coordinates first, ascending
    (a stable argsort of ``~miss``, done once for all patterns). ``Lam`` is
    (Kf, d, d), or (Kf, d + 1, d + 1) with the scratch coordinate ``d`` when
    some patterns have fewer than ``rp`` missing values. Returns
    ``midx`` (G, rp): each pattern's missing coordinates, ascending, then ``d``
    as padding; ``hld_mm`` (Kf, G); ``C`` laid out (rp, Kf, G, rp), so that the
    per-row products gather contiguous rows of it, with the identity on the
    padding (which leaves determinants and the real block unchanged).
    """
    G, d = miss.shape
    Kf = Lam.shape[0]
    r_g = miss.sum(axis=1)
    midx = order[:, :rp].copy()
    pad = np.arange(rp)[None, :] >= r_g[:, None]  # (G, rp)
    midx[pad] = d
    if rp == 0:
        return midx, np.zeros((Kf, G)), np.zeros((0, Kf, G, 0))
    diag = np.arange(rp)
    if rp <= _SMALL_R:
        # batch-last layout (rp, rp, G * Kf): rp steps, each a vector operation over
        # all the patterns and components of the group at once
        # one flat index into (d * d, Kf): a single-index take is several times
        # faster than indexing two axes at once
        d1 = Lam.shape[1]
        LamT = np.ascontiguousarray(Lam.transpose(1, 2, 0)).reshape(d1 * d1, Kf)
        A = np.take(LamT, midx.T[:, None, :] * d1 + midx.T[None, :, :], axis=0)  # (rp, rp, G, Kf)
        A[diag, diag] += pad.T[:, :, None]
        C, log_det = _sweep_inverse(A.reshape(rp, rp, -1))  # A is a scratch copy
        hld_mm = 0.5 * log_det.reshape(G, Kf).T
        C = C.reshape(rp, rp, G, Kf).transpose(1, 3, 2, 0)
    else:
        A = Lam[:, midx[:, :, None], midx[:, None, :]]  # (Kf, G, rp, rp)
        A[:, :, diag, diag] += pad[None]
        try:
            L = np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            raise _singular_error() from None
        hld_mm = np.log(np.diagonal(L, axis1=2, axis2=3)).sum(axis=2)
        Linv = np.linalg.inv(L)
        C = (np.swapaxes(Linv, 2, 3) @ Linv).transpose(3, 0, 1, 2)  # L^-T L^-1
    return midx, hld_mm, np.ascontiguousarray(C)


def _sweep_inverse(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverses and log-determinants of SPD matrices ``A`` (r, r, B), batch last.

    Gauss-Jordan elimination in place, ``A`` overwritten by the inverses (the
    sweep operator of regression), in the natural order: on a positive definite
    matrix its pivots are the Schur complements, positive, so no pivoting is
    needed, and the inverse is as accurate as one through a Cholesky factor.
    One rank-one update of all matrices per step.
    """
    r = A.shape[0]
    pivots = np.empty((r, A.shape[2]))
    outer = np.empty_like(A)  # one buffer for the rank-one updates
    # Pivots are checked once, at the end: one <= 0 or NaN makes the sum of their
    # logs NaN or -inf whatever the later steps give, so their warnings are moot.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k in range(r):
            pivot = pivots[k]
            pivot[:] = A[k, k]
            row = A[k]  # A_kj = A_jk; a view, read before A is updated
            col = row / pivot
            A -= np.multiply(row[:, None, :], col[None, :, :], out=outer)
            A[k] = col
            A[:, k] = col
            A[k, k] = -1.0 / pivot
        log_det = np.log(pivots).sum(axis=0)
    if not np.isfinite(log_det).all():
        raise _singular_error()
    A *= -1.0
    return A, log_det


def _singular_error() -> FloatingPointError:
    return FloatingPointError(
        "the precision of a component is numerically singular on the missing "
        "coordinates of some rows; increase reg_covar or scale the input data."
    )


def _pad_last(A: np.ndarray, axes: int) -> np.ndarray:
    """``A`` with one zero row/column appended along each of its last ``axes`` axes."""
    out = np.zeros(A.shape[:-axes] + tuple(n + 1 for n in A.shape[-axes:]))
    out[(..., *[slice(0, -1)] * axes)] = A
    return out


def _pattern_groups(r_pat: np.ndarray, rows_per_pattern: np.ndarray):
    """Patterns grouped by number of missing values, small groups merged upwards.

    Yields ``(rp, patterns)``: each group gathers the patterns of consecutive
    values of ``r`` until it holds ``_GROUP_ROWS`` rows, and is padded to its
    largest ``r``, ``rp``. Each group costs a fixed number of NumPy calls, so
    a block with few rows per ``r`` pays them a few times, not once per ``r``,
    while the padding only ever applies to fewer than ``_GROUP_ROWS`` rows.
    Groups inverted by sweeps (``rp <= _SMALL_R``) and by LAPACK stay apart.
    """
    order = np.argsort(r_pat, kind="stable")
    values, first = np.unique(r_pat[order], return_index=True)
    counts = np.add.reduceat(rows_per_pattern[order], first)
    bounds = [*first.tolist(), len(order)]
    values = values.tolist()
    begin, held = 0, 0
    for i, r in enumerate(values):
        if held and r > _SMALL_R >= values[i - 1]:  # sweeps and LAPACK in separate groups
            yield values[i - 1], order[bounds[begin] : bounds[i]]
            begin, held = i, 0
        held += counts[i]
        if held >= _GROUP_ROWS or i == len(values) - 1:
            yield r, order[bounds[begin] : bounds[i + 1]]
            begin, held = i + 1, 0


def _dense_parts(model: _Model, X: np.ndarray, mask: np.ndarray) -> Iterator[_Part]:
    K, d = model.means.shape
    kind = COVARIANCE[model.covariance_type]
    Lam = kind.precisions(model.U).reshape(-1, d, d)  # full (K, d, d), tied (1, d, d)
    Uf = model.U.reshape(-1, d, d)
    hld = np.broadcast_to(kind.log_det(model.U, d), (K,))
    plain = (_centred(X, mask, model.center), model.M, Lam, Uf)
    padded = None
    pats, inverse = _patterns(mask)
    r_pat = pats.sum(axis=1)
    order = np.argsort(~pats, axis=1, kind="stable")  # missing coordinates first
    groups = list(_pattern_groups(r_pat, np.bincount(inverse, minlength=len(pats))))
    if not groups:  # no rows
        return
    # The groups are consecutive runs of all the patterns: rows sorted once by
    # their pattern's place in that sequence make each group's rows one slice,
    # a pattern's rows together and ascending, without a pass per group.
    place = np.empty(len(pats), dtype=np.intp)
    place[np.concatenate([group for _, group in groups])] = np.arange(len(pats))
    key = place[inverse]
    by_place = np.argsort(key, kind="stable")
    key = key[by_place]
    firsts = np.cumsum([0, *(len(group) for _, group in groups)])
    bounds = np.searchsorted(key, firsts)
    for i, (rp, group) in enumerate(groups):
        arrays = plain
        if r_pat[group].min() < rp:
            # One scratch coordinate (index d), zero in the rows, the means, U and
            # the precision: the padding of patterns with fewer missing values than
            # rp points at it, where it is inert.
            if padded is None:
                padded = tuple(_pad_last(a, n) for a, n in zip(plain, (1, 1, 2, 2), strict=True))
            arrays = padded
        rows = by_place[bounds[i] : bounds[i + 1]]
        g = key[bounds[i] : bounds[i + 1]] - firsts[i]  # each row's pattern's index in group
        midx, hld_mm, C = _factor_missing(arrays[2], pats[group], order[group], rp)
        step = max(1, min(SUB_ROWS, _WORK_ENTRIES // (K * max(d, rp * rp))))
        for start in range(0, len(rows), step):
            sl = slice(start, start + step)
            yield _dense_part(rows[sl], g[sl], arrays, model, hld, midx, hld_mm, C,
                              r_pat[group], d)


def _dense_part(rows, g, arrays, model, hld, midx, hld_mm, C, r_g, d) -> _Part:
    Z, M, Lam, Uf = arrays  # with or without the scratch coordinate
    K, d1 = M.shape
    nb, rp = len(rows), midx.shape[1]
    # the missing entries of D as flat indices into D.reshape(K, nb * d1): a
    # single-index take/put is several times faster than indexing (rows, cols)
    flat = (np.arange(nb)[:, None] * d1 + midx[g]).ravel()  # (nb * rp,)
    D = Z[rows][None, :, :] - M[:, None, :]
    Dv = D.reshape(K, nb * d1)  # a view
    Dv[:, flat] = 0.0
    if rp:
        # (Lambda z)_m, (K, nb, rp); 0 on the padding
        t = np.take((D @ Lam).reshape(K, nb * d1), flat, axis=1).reshape(K, nb, rp)
        Cg = np.take(C, g, axis=2)  # (rp, Kf, nb, rp)
        u = np.zeros((K, nb, rp))  # C t; a loop over rp beats a reduction along a short axis
        for j in range(rp):
            u += Cg[j] * t[:, :, j, None]
        Dv[:, flat] = -u.reshape(K, nb * rp)  # E[x_m | x_o, k] - mu_k,m: D is now x_hat - c_k
    # The marginal distance z_o^T Sigma_oo^-1 z_o is the full one at x_hat (x_hat
    # minimises it over x_m): through U, as for complete rows, and not as the
    # difference z^T Lambda z - t^T C t, which cancels when Lambda is large.
    Y = D @ Uf
    quad = np.einsum("knd,knd->kn", Y, Y)
    logp = (hld + model.log_w)[:, None] - 0.5 * quad
    logp -= (0.5 * _LOG_2PI) * (d - r_g[g])
    logp -= hld_mm[:, g]

    def moments(R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        S = (R[:, None, :] @ D)[:, 0]
        Q = np.swapaxes(D * R[:, :, None], 1, 2) @ D
        if rp:
            # (sum of r_nk over each pattern's rows) * C, scattered into the missing block
            g0 = g[0]
            G = g[-1] - g0 + 1
            key = ((g - g0)[:, None] * K + np.arange(K)).ravel()
            Rg = np.bincount(key, weights=R.T.ravel(), minlength=G * K).reshape(G, K)
            # in C's own layout (rp, K, G, rp), read in order; entry [a, k, g, b] goes
            # to Q[k, m_gb, m_ga], its flat index built from a small (rp, G, rp) one
            Cw = C[:, :, g0 : g0 + G] * Rg.T[None, :, :, None]
            mg = midx[g0 : g0 + G]
            pair = mg[None, :, :] * d1 + mg.T[:, :, None]  # (rp, G, rp)
            flat = pair[:, None] + (np.arange(K) * (d1 * d1))[None, :, None, None]
            Q += np.bincount(flat.ravel(), weights=Cw.ravel(), minlength=K * d1 * d1).reshape(
                K, d1, d1)
        return S[:, :d], Q[:, :d, :d]  # the scratch coordinate dropped

    return _Part(rows, logp, moments)


# --------------------------------------------------------------------------
# Diag and spherical: masked products, no grouping by pattern
# --------------------------------------------------------------------------


def _diag_parts(model: _Model, X: np.ndarray, mask: np.ndarray) -> Iterator[_Part]:
    K, d = model.means.shape
    kind = COVARIANCE[model.covariance_type]
    Ud = np.broadcast_to(model.U.reshape(K, -1), (K, d))  # spherical: one value per component
    P = kind.precisions(Ud)
    logU = np.log(Ud)
    M = model.M
    PM = P * M
    PMM = PM * M
    Z = _centred(X, mask, model.center)
    step = max(1, min(SUB_ROWS, _WORK_ENTRIES // (K + d)))
    for start in range(0, X.shape[0], step):
        sl = slice(start, start + step)
        Zs = Z[sl]
        O = (~mask[sl]).astype(np.float64)
        Z2 = Zs * Zs
        # sum_j o_j P_kj (z_j - m_kj)^2, expanded as the complete-data kernels do
        quad = P @ Z2.T - 2.0 * PM @ Zs.T + PMM @ O.T
        logp = logU @ O.T - 0.5 * quad
        logp -= (0.5 * _LOG_2PI) * O.sum(axis=1)
        logp += model.log_w[:, None]

        def moments(R, Zs=Zs, Z2=Z2, O=O):
            RZ = R @ Zs
            RO = R @ O  # responsibility on observed coordinates, (K, d)
            nk = R.sum(axis=1)
            S = RZ - RO * M  # a missing coordinate's x_hat - c_k is 0
            Q = R @ Z2 - 2.0 * M * RZ + M * M * RO + (nk[:, None] - RO) / P
            return S, Q

        yield _Part(np.arange(sl.start, min(sl.stop, X.shape[0])), logp, moments)


# --------------------------------------------------------------------------
# From per-component scatter to each type's qk
# --------------------------------------------------------------------------


def _keep(Q, S, nk, model: _Model) -> np.ndarray:
    return Q


def _about_center(Q, S, nk, model: _Model) -> np.ndarray:
    # tied: sum_k of the scatter moved from c_k to the centre, by the table's re-shift
    st = SuffStats("full", model.means, model.center, float(nk.sum()), nk, S, Q, 0.0, 0)
    return COVARIANCE["full"].shift_scatter(st, model.center - model.means, model.center).sum(
        axis=0)


def _trace(Q, S, nk, model: _Model) -> np.ndarray:
    return Q.sum(axis=1)  # spherical qk: the trace of the diag scatter, as the table's


@dataclass(frozen=True)
class _Route:
    parts: Callable[[_Model, np.ndarray, np.ndarray], Iterator[_Part]]
    dense: bool  # per-component scatter (K, d, d), else its diagonal (K, d)
    reduce: Callable[..., np.ndarray]


_ROUTES = {
    "full": _Route(_dense_parts, True, _keep),
    "tied": _Route(_dense_parts, True, _about_center),
    "diag": _Route(_diag_parts, False, _keep),
    "spherical": _Route(_diag_parts, False, _trace),
}


# --------------------------------------------------------------------------
# E-step and entry points
# --------------------------------------------------------------------------


def _responsibilities(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row log-likelihood (n,) and responsibilities (K, n), by log-sum-exp."""
    amax = logp.max(axis=0)
    amax[~np.isfinite(amax)] = 0.0
    resp = np.exp(logp - amax)
    total = resp.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):  # all -inf: caught by the caller
        log_norm = np.log(total) + amax
        resp /= total
    return log_norm, resp


def _check_input(X: np.ndarray, row_offset: int) -> None:
    bad = np.isinf(X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"Input X contains infinity (first at row {row_offset + int(row)}, column "
            f"{int(col)}: {X[row, col]!r}). Remove or impute those values."
        )


def _check_finite(log_norm: np.ndarray, rows: np.ndarray, row_offset: int) -> None:
    if not np.isfinite(log_norm).all():
        row = row_offset + int(rows[np.flatnonzero(~np.isfinite(log_norm))[0]])
        raise FloatingPointError(
            f"Non-finite log-likelihood at row {row} (a row with missing values) with "
            "finite data; increase reg_covar or scale the input data."
        )


def incomplete_stats(
    X: np.ndarray,
    covariance_type: str,
    weights: np.ndarray,
    means: np.ndarray,
    precisions_cholesky: np.ndarray,
    center: np.ndarray,
    sample_weight: np.ndarray | None = None,
    label: np.ndarray | None = None,
    row_offset: int = 0,
) -> SuffStats:
    """Ghahramani-Jordan statistics of a block whose rows may have NaN coordinates.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Rows with NaN at missing coordinates (float32 or float64).
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, d)
        Also the packet's shifts ``c_k``.
    precisions_cholesky : ndarray
        ``U`` with ``precision = U U^T``, shape as in scikit-learn.
    center : ndarray of shape (d,)
        The packet's common centre (that of the complete rows' packet it is
        added to, :func:`dgmm._kernels.center_of`).
    sample_weight : ndarray of shape (n,), optional
        Multiplies each row's responsibilities and log-likelihood.
    label : ndarray of shape (n,) of int, optional
        ``label[i] >= 0`` fixes row ``i``'s responsibilities to that
        component (one-hot; its log-likelihood term is
        ``log w_y + log N(x_o | mu_y,o, Sigma_y,oo)``); -1 for the usual E-step.
    row_offset : int
        Index of the block's first row, for error messages.

    Returns
    -------
    SuffStats
        About ``shift=means`` and ``center``, so that it adds exactly to
        :func:`dgmm._kernels.estep_stats` of the block's complete rows; ``n_rows``
        is ``n``; ``loglik`` is ``sum_n w_n log sum_k w_k N(x_o | ...)``.

    Raises
    ------
    ValueError
        For an infinite entry or a label out of range, naming the row.
    FloatingPointError
        When a row's log-likelihood is not finite with finite data.
    """
    X = np.asarray(X)
    _check_input(X, row_offset)
    model = _Model.of(covariance_type, weights, means, precisions_cholesky, center)
    K, d = model.means.shape
    if label is not None:
        label = np.asarray(label)
        if np.any(label >= K) or np.any(label < -1):
            row = int(np.flatnonzero((label >= K) | (label < -1))[0])
            raise ValueError(f"label of row {row_offset + row} is {label[row]!r}; "
                             f"expected -1 or a component in 0..{K - 1}")
    route = _ROUTES[covariance_type]
    mask = np.isnan(X)
    nk, S, loglik = np.zeros(K), np.zeros((K, d)), 0.0
    Q = np.zeros((K, d, d) if route.dense else (K, d))
    for part in route.parts(model, X, mask):
        log_norm, R = _responsibilities(part.logp)
        if label is not None:
            lab = label[part.rows]
            fixed = np.flatnonzero(lab >= 0)
            if fixed.size:
                R[:, fixed] = 0.0
                R[lab[fixed], fixed] = 1.0
                log_norm[fixed] = part.logp[lab[fixed], fixed]
        _check_finite(log_norm, part.rows, row_offset)
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=np.float64)[part.rows]
            R *= w
            log_norm *= w
        S_p, Q_p = part.moments(R)
        nk += R.sum(axis=1)
        S += S_p
        Q += Q_p
        loglik += float(log_norm.sum())
    return SuffStats(
        covariance_type=covariance_type,
        shift=model.means,
        center=model.center,
        n=float(nk.sum()),
        nk=nk,
        sk=S,
        qk=route.reduce(Q, S, nk, model),
        loglik=loglik,
        n_rows=int(X.shape[0]),
    )


_OUTPUTS = {
    "labels": (lambda n, K: np.empty(n, dtype=np.intp), lambda log_norm, R: R.argmax(axis=0)),
    "proba": (lambda n, K: np.empty((n, K)), lambda log_norm, R: R.T),
    "log_density": (lambda n, K: np.empty(n), lambda log_norm, R: log_norm),
}


def incomplete_outputs(
    X: np.ndarray,
    covariance_type: str,
    weights: np.ndarray,
    means: np.ndarray,
    precisions_cholesky: np.ndarray,
    whats: tuple[str, ...],
    row_offset: int = 0,
) -> list[np.ndarray]:
    """Per-row outputs of rows with NaN coordinates, from the marginal densities.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Rows with NaN at missing coordinates.
    covariance_type, weights, means, precisions_cholesky
        The mixture, as for :func:`incomplete_stats`.
    whats : tuple of str
        Among 'labels' (n,), the argmax of the responsibilities; 'proba'
        (n, K); 'log_density' (n,), ``log sum_k w_k N(x_o | mu_k,o, Sigma_k,oo)``
        (as :func:`dgmm._kernels.per_row_outputs`).
    row_offset : int
        Index of the block's first row, for error messages.

    Returns
    -------
    list of ndarray
        One array per entry of ``whats``, rows in the order of ``X``.
    """
    X = np.asarray(X)
    _check_input(X, row_offset)
    model = _Model.of(covariance_type, weights, means, precisions_cholesky, None)
    n, K = X.shape[0], model.means.shape[0]
    outs = [_OUTPUTS[w][0](n, K) for w in whats]
    for part in _ROUTES[covariance_type].parts(model, X, np.isnan(X)):
        log_norm, R = _responsibilities(part.logp)
        _check_finite(log_norm, part.rows, row_offset)
        for out, w in zip(outs, whats, strict=True):
            out[part.rows] = _OUTPUTS[w][1](log_norm, R)
    return outs
