"""Initialisation: starting statistics for EM, one packet per restart.

Every method produces a :class:`SuffStats` packet (as if from responsibilities),
so the starting parameters come from the same M-step as every EM iteration.
All restarts of one fit share their data passes.

Data passes used (N rows, any chunking), shared by all ``n_init`` restarts:

* ``'kmeans'``: at most ``2 + KMEANS_LLOYD_PASSES`` (7). One pass draws a
  uniform random sample of about ``max(KMEANS_SAMPLE_ROWS, 100 * n_components)``
  rows; on that sample, in memory, ``KMEANS_SAMPLE_RESTARTS`` runs of
  k-means++ seeding and Lloyd iterations to convergence, keeping the one of
  lowest inertia (cheap next to a data pass, and what keeps a start out of
  the poor optima a single k-means++ draw falls into); then up to
  ``KMEANS_LLOYD_PASSES`` Lloyd iterations run
  as streaming passes over all the data (counts and sums per chunk,
  tree-summed), stopping early once the centres move less than scikit-learn's
  tolerance; a last pass turns the final labels into the starting statistics.
* ``'k-means++'``: two. The sample pass, k-means++ seeding on the sample
  (no Lloyd iterations, as scikit-learn), and the labels pass.
* ``'random'``: one (random responsibilities per row, seeded per block).
* ``'random_from_data'``: none (reads the chunks holding the chosen rows).

Starts that differ only in their covariance type (a selection across
types) share their centres: the covariance type enters only the last pass,
which turns the labels into each start's statistics.

Memory stays bounded by the chunks in flight plus the sample.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dgmm import _kernels as kernels
from dgmm._covariance import COVARIANCE, CentredBlock
from dgmm._passes import Blocks, block_pass
from dgmm._stats import SuffStats

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
KMEANS_SAMPLE_ROWS = 20_000
KMEANS_LLOYD_PASSES = 5
KMEANS_SAMPLE_RESTARTS = 10


class Start(NamedTuple):
    """One initialisation to make: its size, random seed and covariance type."""

    n_components: int
    seed: int
    covariance_type: str


def read_rows(blocks: Blocks, rows: np.ndarray, scheduler=None) -> np.ndarray:
    """Fetch the given (sorted or not) global row indices as a float64 array."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.asarray(blocks.offsets)
    which = np.searchsorted(starts, rows, side="right") - 1
    needed = sorted(set(which.tolist()))
    fetched = blocks.compute(*[blocks.delayed[b] for b in needed], n_reads=len(needed),
                             scheduler=scheduler)
    by_block = {b: blocks.fill_nan(block) for b, block in zip(needed, fetched, strict=True)}
    out = np.stack([
        np.asarray(by_block[b][r - starts[b]], dtype=np.float64)
        for r, b in zip(rows, which, strict=True)
    ])
    for i, r in enumerate(rows):
        kernels.check_finite_block(out[i : i + 1], int(r))
    return out


def _fixed_resp(resp: np.ndarray, weight, label) -> np.ndarray:
    """Responsibilities (K, n) with known labels made one-hot and rows weighted."""
    if label is not None:
        known = np.flatnonzero(label >= 0)
        resp[:, known] = 0.0
        resp[label[known], known] = 1.0
    if weight is not None:
        resp *= weight[None, :]
    return resp


def _random_block(block, row_offset, index, starts, shifts, center, weight=None, label=None):
    out = []
    for (n_components, seed, cov_type), shift in zip(starts, shifts, strict=True):
        rng = np.random.default_rng([seed, index])
        resp = rng.uniform(size=(n_components, block.shape[0]))
        resp /= resp.sum(axis=0, keepdims=True)
        resp = _fixed_resp(resp, weight, label)
        st = kernels.stats_from_resp(block, resp, shift, center, cov_type)
        if not np.isfinite(st.qk).all():
            kernels.check_finite_block(block, row_offset)
        out.append(st)
    return out


def init_random(blocks: Blocks, starts: list[Start], scheduler=None) -> list[SuffStats]:
    """Statistics of uniform random responsibilities (one pass for all starts)."""
    center = read_rows(blocks, [0], scheduler)[0]
    shifts = [np.tile(center, (start.n_components, 1)) for start in starts]
    return block_pass(blocks, _random_block, starts, shifts, center, scheduler=scheduler)


def init_random_from_data(blocks: Blocks, starts: list[Start], rngs, scheduler=None):
    """Statistics of ``n_components`` distinct random rows, one-hot (no data pass).

    Each start's rows are drawn with ``rng.choice`` from its entry of ``rngs``
    as scikit-learn does, so a shared seed picks the same rows.
    """
    picks = [rng.choice(blocks.n_rows, start.n_components, replace=False)
             for start, rng in zip(starts, rngs, strict=True)]
    rows = read_rows(blocks, np.concatenate(picks), scheduler)
    out, pos = [], 0
    for k, _, cov_type in starts:
        pts = rows[pos : pos + k]
        pos += k
        out.append(kernels.stats_from_resp(pts, np.eye(k), pts, pts.mean(axis=0), cov_type))
    return out


def _sample_block(block, row_offset, index, seed, prob, weight=None, label=None):
    rng = np.random.default_rng([seed, index])
    # With sample weights a row is drawn in proportion to its weight (at most
    # surely), and stands for weight / probability rows of the sample.
    if weight is None:
        p = np.full(len(block), prob)
    else:
        with np.errstate(invalid="ignore"):  # inf * 0: a zero weight is never drawn
            p = np.where(weight > 0, np.minimum(1.0, prob * weight), 0.0)
    take = rng.random(len(block)) < p
    rows = np.asarray(block[take], dtype=np.float64)
    if not np.isfinite(rows).all():
        kernels.check_finite_block(block, row_offset)
    labels = np.full(len(rows), -1, dtype=np.int64) if label is None else label[take]
    reps = np.ones(len(rows)) if weight is None else weight[take] / p[take]
    return rows, labels, reps


def _concat(*parts):
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


class Sample(NamedTuple):
    """Rows drawn in one pass, their labels (-1: unknown) and how many rows each stands for."""

    rows: np.ndarray
    labels: np.ndarray
    weights: np.ndarray


def sample_rows(blocks: Blocks, size: float, seed: int, scheduler=None) -> Sample:
    """About ``size`` sampled rows in one pass.

    Rows are drawn uniformly, or in proportion to their sample weight when the
    blocks carry weights (:attr:`Blocks.total_weight` is their sum); every
    row (of positive weight) if ``size`` >= N.
    """
    if "weight" in blocks.side:
        prob = size / blocks.total_weight
    else:
        prob = min(1.0, size / blocks.n_rows)
    return Sample(*block_pass(blocks, _sample_block, seed, prob, combine=_concat,
                              scheduler=scheduler))


# --------------------------------------------------------------------------
# k-means: nearest-centre assignment, k-means++ seeding and Lloyd iterations
# on an in-memory sample
# --------------------------------------------------------------------------


def _sq_dist_t(b: CentredBlock, centers_c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (K, n) from a centred block to centred centres."""
    spherical = COVARIANCE["spherical"]
    coef, const = spherical.prep(centers_c, np.ones(len(centers_c)))
    out = spherical.sq_maha(b, coef)
    out += const[:, None]
    return out


def nearest_center(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for every row, shape (n,)."""
    c = centers.mean(axis=0)
    b = CentredBlock.build(X, c, "spherical", len(centers))
    return _sq_dist_t(b, centers - c).argmin(axis=0)


def hard_assignment_stats(
    X: np.ndarray,
    centers: np.ndarray,
    covariance_type: str,
    row_offset: int = 0,
    weight: np.ndarray | None = None,
    label: np.ndarray | None = None,
) -> SuffStats:
    """Statistics of one-hot responsibilities to the nearest centre, about the centres.

    With ``covariance_type='spherical'`` this is one Lloyd step's worth of work:
    new centres are ``centers + sk / nk`` and ``qk.sum()`` is the inertia.
    Rows with a known ``label`` (>= 0) go to that centre; ``weight`` scales
    each row's one-hot responsibility.
    """
    total = None
    center = centers.mean(axis=0)
    K = len(centers)
    for start, sl in kernels.sub_blocks(len(X)):
        with np.errstate(invalid="ignore", over="ignore"):
            b = CentredBlock.build(X[sl], center, covariance_type, K)
            dist = _sq_dist_t(b, centers - center)
        if not np.isfinite(dist).all():
            kernels.check_finite_block(X[sl], row_offset + start)
        one_hot = (dist.argmin(axis=0) == np.arange(K)[:, None]).astype(np.float64)
        one_hot = _fixed_resp(one_hot, None if weight is None else weight[sl],
                              None if label is None else label[sl])
        st = kernels.stats_from_resp(X[sl], one_hot, centers, center, covariance_type, block=b)
        total = st if total is None else total + st
    return total


def kmeans_plusplus(
    X: np.ndarray, n_clusters: int, rng: np.random.Generator, fixed: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) on in-memory rows.

    Each new centre is the best, by resulting potential, of ``2 + log(k)``
    candidates drawn with probability proportional to (weighted) squared
    distance. ``fixed`` centres (for example class means of labelled rows)
    come first and are kept; seeding continues from them.
    """
    n = len(X)
    w = np.ones(n) if weight is None else weight
    n_trials = 2 + int(np.log(n_clusters))
    centers = np.empty((n_clusters, X.shape[1]))
    if fixed is None or len(fixed) == 0:
        centers[0] = X[rng.integers(n)]
        first = 1
    else:
        centers[: len(fixed)] = fixed
        first = len(fixed)
    d2 = w * ((X[:, None, :] - centers[None, :first, :]) ** 2).sum(axis=2).min(axis=1)
    potential = d2.sum()
    for c in range(first, n_clusters):
        if potential <= 0.0:  # fewer distinct points than clusters: any row will do
            centers[c] = X[rng.integers(n)]
            continue
        cand = np.searchsorted(np.cumsum(d2), rng.random(n_trials) * potential)
        cand = np.minimum(cand, n - 1)
        cand_d2 = w * ((X[None, :, :] - X[cand][:, None, :]) ** 2).sum(axis=2)
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


def lloyd_iterations(
    X: np.ndarray, centers: np.ndarray, tol: float, max_iter: int = 300,
    label: np.ndarray | None = None, weight: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Lloyd iterations on in-memory (weighted) rows until the squared centre shift is <= ``tol``.

    Rows with a known ``label`` stay with that centre. Returns the centres and
    the inertia of the last assignment.
    """
    for _ in range(max_iter):
        stats = hard_assignment_stats(X, centers, "spherical", weight=weight, label=label)
        new = lloyd_update(stats)
        shift = ((new - centers) ** 2).sum()
        centers = new
        if shift <= tol:
            break
    return centers, float(stats.qk.sum())


def class_means(X: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Means of the labelled rows of components 0, 1, ... up to the last one with a row.

    A component without labelled rows (before the last one that has some)
    gets NaN; callers seed it like any unlabelled centre.
    """
    known = label >= 0
    if not known.any():
        return np.empty((0, X.shape[1]))
    k = int(label[known].max()) + 1
    counts = np.bincount(label[known], minlength=k).astype(np.float64)
    sums = np.zeros((k, X.shape[1]))
    np.add.at(sums, label[known], X[known])
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def _seed(X, n_clusters, rng, fixed, weight):
    """k-means++ seeds keeping the labelled classes' means as their components' centres."""
    if not np.isfinite(fixed).all(axis=1).any():
        return kmeans_plusplus(X, n_clusters, rng, weight=weight)
    have = np.flatnonzero(np.isfinite(fixed).all(axis=1))
    rest = [k for k in range(n_clusters) if k not in set(have.tolist())]
    seeded = kmeans_plusplus(X, n_clusters, rng, fixed=fixed[have], weight=weight)
    centers = np.empty_like(seeded)
    centers[have] = seeded[: len(have)]
    centers[rest] = seeded[len(have):]
    return centers


def sample_kmeans(sample: Sample, n_clusters: int, seed: int, tol: float,
                  n_restarts: int) -> np.ndarray:
    """The lowest-inertia centres of ``n_restarts`` k-means++ + Lloyd runs on a sample.

    Known labels (>= 0) seed their components with their classes' means and
    keep their rows with them; every row counts with its sample weight.
    """
    X, label, weight = sample
    fixed = class_means(X, label)
    best, best_inertia = None, np.inf
    for r in range(n_restarts):
        seeds = _seed(X, n_clusters, np.random.default_rng([seed, 1, r]), fixed, weight)
        centers, inertia = lloyd_iterations(X, seeds, tol, label=label, weight=weight)
        if inertia < best_inertia:
            best, best_inertia = centers, inertia
    return best


def _hard_block(block, row_offset, index, centers_list, covariance_types, weight=None,
                label=None):
    return [hard_assignment_stats(block, c, cov_type, row_offset, weight, label)
            for c, cov_type in zip(centers_list, covariance_types, strict=True)]


def init_kmeans(
    blocks: Blocks, starts: list[Start], lloyd: bool = True, scheduler=None
) -> list[SuffStats]:
    """Statistics of k-means labels (``lloyd=False``: of k-means++ seeds), one per start.

    Starts with the same ``(n_components, seed)`` share one set of centres.
    Known labels seed their components with the class means of the sampled
    labelled rows and keep their rows in every assignment; sample weights
    weight the sample and every pass.
    """
    k_max = max(start.n_components for start in starts)
    seed = starts[0].seed
    size = max(KMEANS_SAMPLE_ROWS, 100 * k_max)
    sample = sample_rows(blocks, size, seed, scheduler)
    if len(sample.rows) < k_max:  # a tiny sampling probability came up short
        sample = sample_rows(blocks, np.inf, seed, scheduler)
    tol = 1e-4 * sample.rows.var(axis=0).mean()  # scikit-learn's KMeans tolerance
    keys = list(dict.fromkeys((k, s) for k, s, _ in starts))
    if lloyd:
        centers = [sample_kmeans(sample, k, s, tol, KMEANS_SAMPLE_RESTARTS) for k, s in keys]
        active = list(range(len(centers)))
        for _ in range(KMEANS_LLOYD_PASSES if len(sample.rows) < blocks.n_rows else 0):
            stats = block_pass(blocks, _hard_block, [centers[i] for i in active],
                               ["spherical"] * len(active), scheduler=scheduler)
            moving = []
            for i, st in zip(active, stats, strict=True):
                new = lloyd_update(st)
                if ((new - centers[i]) ** 2).sum() > tol:
                    moving.append(i)
                centers[i] = new
            active = moving
            if not active:
                break
    else:
        fixed = class_means(sample.rows, sample.labels)
        centers = [_seed(sample.rows, k, np.random.default_rng([s, 1]), fixed, sample.weights)
                   for k, s in keys]
    by_key = dict(zip(keys, centers, strict=True))
    return block_pass(blocks, _hard_block, [by_key[k, s] for k, s, _ in starts],
                      [start.covariance_type for start in starts], scheduler=scheduler)


def _observed_block(block, row_offset, index, weight=None, label=None):
    seen = ~np.isnan(block)
    if np.isinf(block).any():
        kernels.check_finite_block(np.where(seen, block, 0.0), row_offset)
    w = np.ones(len(block)) if weight is None else weight
    return np.stack([seen.sum(axis=0), w @ seen, w @ np.where(seen, block, 0.0)])


def _sum(*parts):
    return np.sum(parts, axis=0)


def observed_means(blocks: Blocks, scheduler=None) -> np.ndarray | None:
    """Per-feature (weighted) means of the observed values in one pass; None if none is missing.

    Initialisation with missing values sees each NaN as its feature's
    observed mean (mean imputation, for the start only: EM then treats the
    rows through their observed coordinates).
    """
    counts, weights, sums = block_pass(blocks, _observed_block, combine=_sum,
                                       scheduler=scheduler)
    if (counts == blocks.n_rows).all():
        return None
    if (weights == 0).any():
        empty = np.flatnonzero(weights == 0).tolist()
        raise ValueError(f"Feature(s) {empty} of X have no observed value; remove them")
    return sums / weights


def initial_stats(
    blocks: Blocks,
    method: str,
    starts: list[Start],
    rngs: list[np.random.RandomState],
    scheduler=None,
) -> list[SuffStats]:
    """Starting statistics for each start, sharing data passes.

    ``rngs`` holds each start's random state ('random_from_data' draws its
    rows from it; starts of one fit share one, drawn from in order).
    """
    if method in ("kmeans", "k-means++"):
        return init_kmeans(blocks, starts, lloyd=method == "kmeans", scheduler=scheduler)
    if method == "random":
        return init_random(blocks, starts, scheduler)
    return init_random_from_data(blocks, starts, rngs, scheduler)
