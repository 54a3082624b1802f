"""Compiled loops of the linear-route E-step (numba), one call per sub-block.

The linear route of :mod:`dgmm._kernels` spends its flops in two GEMMs
(BLAS); what lies between them is elementwise: centring the rows and building
their features, and turning log-probabilities into responsibilities. In NumPy
those are a dozen passes over the sub-block and as many Python calls, each of
which takes the GIL, so two threads share one core's worth of Python. Here
each is one pass over the rows, compiled, without the GIL, so the threads of a
Dask pass run side by side. The NumPy reference route of :mod:`dgmm._kernels`
(``reference=True``) computes the same numbers and the tests hold these to it.

Layouts are row-major: features ``F`` (n, m + 1) and log-probabilities ``P``
(n, K), so every loop runs along contiguous memory.
"""

from __future__ import annotations

import numba
import numpy as np

# nogil: the point of the module; cache: compile once per install, not per process.
_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}


@numba.njit(**_JIT)
def _fill_full(X, center, F):
    # [z | upper triangle of z z^T, row by row | 1], the order of _covariance._outer_rows
    n, d = X.shape
    z = np.empty(d)  # the row, apart from F: no aliasing, so the loops vectorise
    for i in range(n):
        for j in range(d):
            z[j] = X[i, j] - center[j]
            F[i, j] = z[j]
        pos = d
        for a in range(d):
            row = F[i, pos : pos + d - a]
            za = z[a]
            for b in range(d - a):
                row[b] = za * z[a + b]
            pos += d - a
        F[i, pos] = 1.0


@numba.njit(**_JIT)
def _fill_diag(X, center, F):
    # [z | z**2 | 1]
    n, d = X.shape
    for i in range(n):
        for j in range(d):
            z = X[i, j] - center[j]
            F[i, j] = z
            F[i, d + j] = z * z
        F[i, 2 * d] = 1.0


@numba.njit(**_JIT)
def _fill_spherical(X, center, F):
    # [z | |z|^2 | 1]
    n, d = X.shape
    for i in range(n):
        total = 0.0
        for j in range(d):
            z = X[i, j] - center[j]
            F[i, j] = z
            total += z * z
        F[i, d] = total
        F[i, d + 1] = 1.0


FILL = {"full": _fill_full, "diag": _fill_diag, "spherical": _fill_spherical}
"""Per covariance type with a linear route: ``fill(X, center, F)`` writes the features."""


@numba.njit(**_JIT)
def normalise_rows(P, label, log_norm, negligible):
    """Turn log-probabilities ``P`` (n, K) into responsibilities in place.

    Each row's log-sum-exp about its maximum goes to ``log_norm`` (n,).
    Entries more than ``-negligible`` below the maximum get responsibility 0;
    a row with a single entry left is one-hot without exponentials. A row with
    ``label >= 0`` (``label`` of length n, or empty: no labels) is one-hot at
    its label with log-norm ``P[label]``. Returns whether every log-norm is
    finite (a NaN anywhere in a row makes its log-norm NaN).
    """
    n, K = P.shape
    labelled = label.shape[0] > 0
    finite = True
    for i in range(n):
        row = P[i]
        if labelled and label[i] >= 0:
            value = row[label[i]]
            for k in range(K):
                row[k] = 0.0
            row[label[i]] = 1.0
            log_norm[i] = value
            finite = finite and np.isfinite(value)
            continue
        # Branch-free passes (max, sum, count): a NaN anywhere makes the sum NaN.
        top = -np.inf
        check = 0.0
        for k in range(K):
            top = max(top, row[k])
            check += row[k]
        if np.isnan(check) or not np.isfinite(top):
            log_norm[i] = np.nan if np.isnan(check) else top
            finite = False
            continue
        kept = 0
        for k in range(K):
            kept += row[k] - top > negligible
        if kept == 1:
            for k in range(K):
                row[k] = 1.0 if row[k] == top else 0.0
            log_norm[i] = top
            continue
        total = 0.0
        for k in range(K):
            shifted = row[k] - top
            e = np.exp(shifted) if shifted > negligible else 0.0
            row[k] = e
            total += e
        inverse = 1.0 / total
        for k in range(K):
            row[k] *= inverse
        log_norm[i] = top + np.log(total)
    return finite


@numba.njit(**_JIT)
def add_sparse_products(R, F, G, max_share):
    """``G += R^T F`` over the nonzero entries of ``R`` (n, K), if they are few.

    On separated data most rows are one-hot, and a row then adds one row of
    ``F`` to one row of ``G`` (m + 1 products) instead of K of them; a GEMM
    also spends K per row and, for this tall-skinny shape, does not scale
    across threads. Returns False, touching nothing, when more than
    ``max_share`` of the entries are nonzero: a GEMM is faster then.
    """
    n, K = R.shape
    m = F.shape[1]
    nonzero = 0
    for i in range(n):
        for k in range(K):
            nonzero += R[i, k] != 0.0
    if nonzero > max_share * n * K:
        return False
    for i in range(n):
        for k in range(K):
            r = R[i, k]
            if r != 0.0:
                for j in range(m):
                    G[k, j] += r * F[i, j]
    return True
