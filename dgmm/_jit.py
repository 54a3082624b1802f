"""The compiled linear-route E-step (numba): one call per block, without the GIL.

The linear route of :mod:`dgmm._kernels` spends its flops in two GEMMs
(BLAS); what lies between them is elementwise: centring the rows and building
their features, and turning log-probabilities into responsibilities. In NumPy
those are a dozen passes over each sub-block and as many Python calls, each
of which takes the GIL, so two threads share one core's worth of Python.
Here :func:`linear_estep` runs a whole block, sub-block by sub-block, in one
compiled call that never takes the GIL (the GEMMs included, through numba's
BLAS binding), so the threads of a Dask pass run side by side and the
sub-blocks can be small enough to stay in each core's cache. The NumPy
reference route of :mod:`dgmm._kernels` (``reference=True``) computes the
same numbers and the tests hold these loops to it.

Layouts are row-major: features ``F`` (n, m + 1) and log-probabilities ``P``
(n, K), so every loop runs along contiguous memory.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

# nogil: the point of the module; cache: compile once per install, not per process.
_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}


@numba.njit(**_JIT)
def _fill_full_d(X, center, F, d):
    # [z | upper triangle of z z^T, row by row | 1], the order of _covariance._outer_rows.
    # ``d`` (X's columns) is a compile-time constant where linear_estep_for inlines
    # this: the short triangle loops then unroll, 2-3x faster for d = 8.
    n = X.shape[0]
    z = np.empty(d)
    for i in range(n):
        for j in range(d):
            z[j] = X[i, j] - center[j]
            F[i, j] = z[j]
        pos = d
        for a in range(d):
            za = z[a]
            for b in range(a, d):
                F[i, pos] = za * z[b]
                pos += 1
        F[i, pos] = 1.0


@numba.njit(**_JIT)
def _fill_full(X, center, F):
    _fill_full_d(X, center, F, X.shape[1])


@numba.njit(**_JIT)
def _fill_diag_d(X, center, F, d):
    # [z | z**2 | 1]
    n = X.shape[0]
    for i in range(n):
        for j in range(d):
            z = X[i, j] - center[j]
            F[i, j] = z
            F[i, d + j] = z * z
        F[i, 2 * d] = 1.0


@numba.njit(**_JIT)
def _fill_diag(X, center, F):
    _fill_diag_d(X, center, F, X.shape[1])


@numba.njit(**_JIT)
def _fill_spherical_d(X, center, F, d):
    # [z | |z|^2 | 1]
    n = X.shape[0]
    for i in range(n):
        total = 0.0
        for j in range(d):
            z = X[i, j] - center[j]
            F[i, j] = z
            total += z * z
        F[i, d] = total
        F[i, d + 1] = 1.0


@numba.njit(**_JIT)
def _fill_spherical(X, center, F):
    _fill_spherical_d(X, center, F, X.shape[1])


FILL = {"full": _fill_full, "diag": _fill_diag, "spherical": _fill_spherical}
"""Per covariance type with a linear route: ``fill(X, center, F)`` writes the features."""

KIND = {name: code for code, name in enumerate(FILL)}
"""The ``kind`` code of each covariance type in :func:`linear_estep`."""

ROW_TILE = 8
"""Rows of :func:`linear_estep`'s sub-blocks are padded to a multiple of this."""


@numba.njit(**_JIT)
def normalise_rows(P, label, log_norm, negligible, hot):
    """Turn log-probabilities ``P`` (n, K) into responsibilities in place.

    Each row's log-sum-exp about its maximum goes to ``log_norm`` (n,).
    Entries more than ``-negligible`` below the maximum get responsibility 0;
    a row with a single entry left is one-hot without exponentials. A row with
    ``label >= 0`` (``label`` of length n, or empty: no labels) is one-hot at
    its label with log-norm ``P[label]``. ``hot`` (n,) receives the component
    of each one-hot row, -1 for the others. Returns whether every log-norm is
    finite (a NaN anywhere in a row makes its log-norm NaN) and the number of
    nonzero responsibilities.
    """
    return _normalise_rows_k(P, label, log_norm, negligible, hot, P.shape[1])


@numba.njit(**_JIT)
def _normalise_rows_k(P, label, log_norm, negligible, hot, K):
    # ``K`` = P's columns, a compile-time constant where linear_estep_for inlines this.
    n = P.shape[0]
    labelled = label.shape[0] > 0
    finite = True
    nonzero = 0
    shifted = np.empty(K)
    for i in range(n):
        row = P[i]
        hot[i] = -1
        if labelled and label[i] >= 0:
            value = row[label[i]]
            for k in range(K):
                row[k] = 0.0
            row[label[i]] = 1.0
            hot[i] = label[i]
            nonzero += 1
            log_norm[i] = value
            finite = finite and np.isfinite(value)
            continue
        # Branch-free passes (max, sum, count): a NaN anywhere makes the sum NaN.
        top = -np.inf
        check = 0.0
        for k in range(K):
            value = row[k]
            top = value if value > top else top
            check += value
        if np.isnan(check) or not np.isfinite(top):
            log_norm[i] = np.nan if np.isnan(check) else top
            finite = False
            continue
        # One branch-free pass (where the maximum sits is random) writes the
        # row as if one-hot, which most rows are, keeping what the others need.
        kept = 0
        h = 0
        for k in range(K):
            shifted[k] = row[k] - top
            kept += shifted[k] > negligible
            at_top = 1 if shifted[k] == 0.0 else 0
            h += k * at_top
            row[k] = at_top
        nonzero += kept
        log_norm[i] = top
        if kept == 1:
            hot[i] = h
            continue
        total = 0.0
        for k in range(K):
            e = np.exp(shifted[k]) if shifted[k] > negligible else 0.0
            row[k] = e
            total += e
        inverse = 1.0 / total
        for k in range(K):
            row[k] *= inverse
        log_norm[i] += np.log(total)
    return finite, nonzero


@numba.njit(**_JIT)
def add_sparse_products(R, F, G, hot):
    """``G += R^T F`` over the nonzero entries of ``R`` (n, K).

    On separated data most rows are one-hot (``hot``: the component of such
    a row, as :func:`normalise_rows` gives it, else -1), and a row then adds
    one row of ``F`` to one row of ``G`` (m + 1 products) instead of K of
    them; other rows add theirs for each nonzero responsibility.
    """
    _add_sparse_products_k(R, F, G, hot, R.shape[1])


@numba.njit(**_JIT)
def _add_sparse_products_k(R, F, G, hot, K):
    # ``K`` as in _normalise_rows_k.
    n = R.shape[0]
    m = F.shape[1]
    for i in range(n):
        k = hot[i]
        if k >= 0:
            r = R[i, k]
            for j in range(m):
                G[k, j] += r * F[i, j]
            continue
        for k in range(K):
            r = R[i, k]
            if r != 0.0:
                for j in range(m):
                    G[k, j] += r * F[i, j]


def _linear_estep_for(features: int, components: int):
    """``linear_estep`` compiled for ``features`` columns and ``components`` (0: any)."""

    @numba.njit(**_JIT)
    def linear_estep(X, center, W, kind, label, weight, negligible, max_share, F, P,
                     log_norm, resp, G):
        """The linear-route E-step of a block ``X`` (n, d), in sub-blocks of ``len(F)`` rows.

        ``W`` (K, m + 1) maps the features of :data:`FILL` (``kind``: see
        :data:`KIND`) to weighted log-densities; ``F`` (rows, m + 1) and ``P``
        (rows, K) are work arrays, ``rows`` a multiple of :data:`ROW_TILE`.
        Writes every row's log-likelihood to ``log_norm`` (n,) and, if
        ``resp`` has n rows, its responsibilities (:func:`normalise_rows`;
        ``label``: as there). If ``G`` has K rows, adds ``R^T F`` to it, the
        responsibilities ``R`` multiplied by ``weight`` (n,; empty: none): by
        rows where at most ``max_share`` of them are nonzero
        (:func:`add_sparse_products`), else by a GEMM, which is faster then.
        Returns the first row whose log-likelihood is not finite, or -1.

        A sub-block's rows are padded to a multiple of :data:`ROW_TILE` (8)
        with zeros, so that every row meets the same BLAS micro-kernel and
        gets the same densities, to the last bit, in any block (edge tiles
        round differently).
        """
        n = X.shape[0]
        d = features if features > 0 else X.shape[1]
        K = components if components > 0 else P.shape[1]
        step = F.shape[0]
        Wt = np.ascontiguousarray(W.T)
        hot = np.empty(step, dtype=np.int64)
        bad = -1
        for start in range(0, n, step):
            stop = min(start + step, n)
            rows = stop - start
            padded = -(-rows // ROW_TILE) * ROW_TILE
            if kind == 0:
                _fill_full_d(X[start:stop], center, F[:rows], d)
            elif kind == 1:
                _fill_diag_d(X[start:stop], center, F[:rows], d)
            else:
                _fill_spherical_d(X[start:stop], center, F[:rows], d)
            F[rows:padded] = 0.0
            np.dot(F[:padded], Wt, P[:padded])
            Ps, ln = P[:rows], log_norm[start:stop]
            lab = label[start:stop] if label.shape[0] > 0 else label
            finite, nonzero = _normalise_rows_k(Ps, lab, ln, negligible, hot, K)
            if not finite and bad < 0:
                for i in range(rows):
                    if not np.isfinite(ln[i]):
                        bad = start + i
                        break
            if resp.shape[0] > 0:
                resp[start:stop] = Ps
            if G.shape[0] > 0:
                if weight.shape[0] > 0:
                    for i in range(rows):
                        Ps[i] *= weight[start + i]
                if nonzero <= max_share * rows * K:
                    _add_sparse_products_k(Ps, F[:rows], G, hot, K)
                else:
                    G += np.dot(Ps.T, F[:rows])
        return bad

    return linear_estep


linear_estep = _linear_estep_for(0, 0)

# Blocks of at most this many features get an E-step compiled for their
# shape (:func:`linear_estep_for`).
SPECIALISED_FEATURES = 16


@functools.cache
def linear_estep_for(features: int, components: int):
    """:func:`linear_estep` compiled for ``features`` columns and ``components``, if few.

    Its loops over the features and the components then unroll: the full
    covariance fill is 2-3x faster for d = 8, and the log-sum-exp and the
    statistics run on whole vector registers. Each shape compiles once per
    install (about 2 s; cached on disk), so the caller asks for it only where
    blocks are large enough to repay that. Above
    :data:`SPECIALISED_FEATURES`, the generic :func:`linear_estep`.
    """
    if features > SPECIALISED_FEATURES:
        return linear_estep
    return _linear_estep_for(features, components)
