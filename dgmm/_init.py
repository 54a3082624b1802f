"""Initialisation: starting statistics for EM, one packet per restart.

Every method produces a :class:`SuffStats` packet (as if from responsibilities),
so the starting parameters come from the same M-step as every EM iteration.
All restarts of one fit share their data passes.

Data passes used (N rows, any chunking):

* ``'random_from_data'``: none (reads the ``n_components * n_init`` chosen rows).
* ``'random'``: one pass (random responsibilities per row, seeded per block).
"""

from __future__ import annotations

import numpy as np

from dgmm import _kernels as K
from dgmm._em import Blocks, block_pass, compute
from dgmm._stats import SuffStats

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


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


def _random_block(block, row_offset, index, seeds, n_components, shift, center, cov_type):
    out = []
    for seed in seeds:
        rng = np.random.default_rng([seed, index])
        resp = rng.uniform(size=(block.shape[0], n_components))
        resp /= resp.sum(axis=1, keepdims=True)
        st = K.stats_from_resp(block, resp.T, shift, center, cov_type)
        if not np.isfinite(st.qk).all():
            K.check_finite_block(block, row_offset)
        out.append(st)
    return out


def init_random(blocks, n_components, covariance_type, seeds, scheduler=None) -> list[SuffStats]:
    """Statistics of uniform random responsibilities (one pass for all seeds)."""
    center = read_rows(blocks, [0], scheduler)[0]
    shift = np.tile(center, (n_components, 1))
    return block_pass(
        blocks, _random_block, list(seeds), n_components, shift, center, covariance_type,
        scheduler=scheduler,
    )


def init_random_from_data(blocks, n_components, covariance_type, rngs, scheduler=None):
    """Statistics of ``n_components`` distinct random rows, one-hot (no data pass)."""
    picks = [rng.choice(blocks.n_rows, n_components, replace=False) for rng in rngs]
    rows = read_rows(blocks, np.concatenate(picks), scheduler)
    out = []
    for i in range(len(picks)):
        pts = rows[i * n_components : (i + 1) * n_components]
        one_hot = np.eye(n_components)
        out.append(K.stats_from_resp(pts, one_hot, pts, pts.mean(axis=0), covariance_type))
    return out
