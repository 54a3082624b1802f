"""Initialisation: starting statistics for EM, one packet per restart.

Every method produces a :class:`SuffStats` packet (as if from responsibilities),
so the starting parameters come from the same M-step as every EM iteration.
All restarts of one fit share their data passes.

Data passes used (N rows, any chunking), shared by all ``n_init`` restarts:

* ``'kmeans'``: at most ``2 + KMEANS_LLOYD_PASSES`` (7). One pass draws a
  uniform random sample of about ``max(KMEANS_SAMPLE_ROWS, 100 * n_components)``
  rows; k-means++ seeding and Lloyd iterations to convergence run on that
  sample in memory; then up to ``KMEANS_LLOYD_PASSES`` Lloyd iterations run
  as streaming passes over all the data (counts and sums per chunk,
  tree-summed), stopping early once the centres move less than scikit-learn's
  tolerance; a last pass turns the final labels into the starting statistics.
* ``'k-means++'``: two. The sample pass, k-means++ seeding on the sample
  (no Lloyd iterations, as scikit-learn), and the labels pass.
* ``'random'``: one (random responsibilities per row, seeded per block).
* ``'random_from_data'``: none (reads the chunks holding the chosen rows).

Memory stays bounded by the chunks in flight plus the sample.
"""

from __future__ import annotations

import numpy as np

from dgmm import _kernels as K
from dgmm._passes import Blocks, block_pass, compute
from dgmm._stats import SuffStats

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
KMEANS_SAMPLE_ROWS = 20_000
KMEANS_LLOYD_PASSES = 5


def read_rows(blocks: Blocks, rows: np.ndarray, scheduler=None) -> np.ndarray:
    """Fetch the given (sorted or not) global row indices as a float64 array."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.asarray(blocks.offsets)
    which = np.searchsorted(starts, rows, side="right") - 1
    needed = sorted(set(which.tolist()))
    fetched = compute(*[blocks.delayed[b] for b in needed], scheduler=scheduler)
    by_block = dict(zip(needed, fetched, strict=True))
    out = np.stack([
        np.asarray(by_block[b][r - starts[b]], dtype=np.float64)
        for r, b in zip(rows, which, strict=True)
    ])
    for i, r in enumerate(rows):
        K.check_finite_block(out[i : i + 1], int(r))
    return out


def _random_block(block, row_offset, index, starts, shifts, center, cov_type):
    out = []
    for (n_components, seed), shift in zip(starts, shifts, strict=True):
        rng = np.random.default_rng([seed, index])
        resp = rng.uniform(size=(n_components, block.shape[0]))
        resp /= resp.sum(axis=0, keepdims=True)
        st = K.stats_from_resp(block, resp, shift, center, cov_type)
        if not np.isfinite(st.qk).all():
            K.check_finite_block(block, row_offset)
        out.append(st)
    return out


def init_random(blocks, starts, covariance_type, scheduler=None) -> list[SuffStats]:
    """Statistics of uniform random responsibilities (one pass for all starts)."""
    center = read_rows(blocks, [0], scheduler)[0]
    shifts = [np.tile(center, (k, 1)) for k, _ in starts]
    return block_pass(blocks, _random_block, starts, shifts, center, covariance_type,
                      scheduler=scheduler)


def init_random_from_data(blocks, starts, covariance_type, rngs, scheduler=None):
    """Statistics of ``n_components`` distinct random rows, one-hot (no data pass).

    Each start's rows are drawn with ``rng.choice`` from its entry of ``rngs``
    as scikit-learn does, so a shared seed picks the same rows.
    """
    picks = [rng.choice(blocks.n_rows, k, replace=False)
             for (k, _), rng in zip(starts, rngs, strict=True)]
    rows = read_rows(blocks, np.concatenate(picks), scheduler)
    out, pos = [], 0
    for (k, _) in starts:
        pts = rows[pos : pos + k]
        pos += k
        out.append(K.stats_from_resp(pts, np.eye(k), pts, pts.mean(axis=0), covariance_type))
    return out


def _sample_block(block, row_offset, index, seed, prob):
    rng = np.random.default_rng([seed, index])
    rows = np.asarray(block[rng.random(len(block)) < prob], dtype=np.float64)
    if not np.isfinite(rows).all():
        K.check_finite_block(block, row_offset)
    return rows


def _concat(*parts):
    return np.concatenate(parts)


def sample_rows(blocks: Blocks, size: int, seed: int, scheduler=None) -> np.ndarray:
    """About ``size`` uniformly sampled rows in one pass (all rows if N <= size)."""
    prob = min(1.0, size / blocks.n_rows)
    return block_pass(blocks, _sample_block, seed, prob, combine=_concat, scheduler=scheduler)


def _hard_block(block, row_offset, index, centers_list, covariance_type):
    return [K.hard_assignment_stats(block, c, covariance_type, row_offset) for c in centers_list]


def init_kmeans(
    blocks: Blocks,
    starts: list[tuple[int, int]],
    covariance_type: str,
    lloyd: bool = True,
    scheduler=None,
) -> list[SuffStats]:
    """Statistics of k-means labels (``lloyd=False``: of k-means++ seeds), one per start."""
    k_max = max(k for k, _ in starts)
    seed = starts[0][1]
    sample = sample_rows(blocks, max(KMEANS_SAMPLE_ROWS, 100 * k_max), seed, scheduler)
    if len(sample) < k_max:  # a tiny sampling probability came up short
        sample = sample_rows(blocks, blocks.n_rows, seed, scheduler)
    tol = 1e-4 * sample.var(axis=0).mean()  # scikit-learn's KMeans tolerance
    centers = [K.kmeans_plusplus(sample, k, np.random.default_rng([s, 1])) for k, s in starts]
    if lloyd:
        centers = [K.lloyd(sample, c, tol) for c in centers]
        active = list(range(len(centers)))
        for _ in range(KMEANS_LLOYD_PASSES if len(sample) < blocks.n_rows else 0):
            stats = block_pass(blocks, _hard_block, [centers[i] for i in active], "spherical",
                               scheduler=scheduler)
            moving = []
            for i, st in zip(active, stats, strict=True):
                new = K.lloyd_update(st)
                if ((new - centers[i]) ** 2).sum() > tol:
                    moving.append(i)
                centers[i] = new
            active = moving
            if not active:
                break
    return block_pass(blocks, _hard_block, centers, covariance_type, scheduler=scheduler)


def initial_stats(
    blocks: Blocks,
    method: str,
    covariance_type: str,
    starts: list[tuple[int, int]],
    rngs: list[np.random.RandomState],
    scheduler=None,
) -> list[SuffStats]:
    """Starting statistics for each ``(n_components, seed)`` start, sharing data passes.

    ``rngs`` holds each start's random state ('random_from_data' draws its
    rows from it; starts of one fit share one, drawn from in order).
    """
    if method in ("kmeans", "k-means++"):
        return init_kmeans(blocks, starts, covariance_type, lloyd=method == "kmeans",
                           scheduler=scheduler)
    if method == "random":
        return init_random(blocks, starts, covariance_type, scheduler)
    return init_random_from_data(blocks, starts, covariance_type, rngs, scheduler)
