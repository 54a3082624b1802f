"""Dask orchestration: one EM pass = map a pure kernel over row blocks, tree-sum.

This is the only module that builds task graphs for fitting. It never creates a
scheduler: it computes with whichever is active (the threaded scheduler by
default, a ``distributed.Client`` if one is the default), unless the caller
names one.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dask
import dask.array as da
import dask.threaded
import numpy as np
from dask.base import get_scheduler
from dask.delayed import Delayed
from threadpoolctl import threadpool_limits

from dgmm import _kernels as K
from dgmm._stats import SuffStats, tree_sum

SPLIT_EVERY = 8


class EmptyComponentWarning(UserWarning):
    """A mixture component received (almost) no responsibility in an M-step."""


@dataclass
class Blocks:
    """The row blocks of a 2-D dask array as delayed objects, made once per fit."""

    delayed: list[Delayed]
    offsets: list[int]
    n_rows: int
    n_features: int

    @classmethod
    def from_array(cls, X: da.Array) -> Blocks:
        delayed = list(X.to_delayed().ravel())
        offsets = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).astype(int).tolist()
        return cls(delayed, offsets, int(X.shape[0]), int(X.shape[1]))


def _sum_group(*packets):
    return tree_sum(list(packets))


def tree_reduce(
    tasks: list[Delayed], combine: Callable = _sum_group, split_every: int = SPLIT_EVERY
) -> Delayed:
    """Combine delayed results in a tree of fan-in ``split_every``, keeping their order.

    ``combine(*parts)`` defaults to summing packets (or lists of packets).
    """
    while len(tasks) > 1:
        tasks = [
            dask.delayed(combine, pure=True)(*tasks[i : i + split_every])
            for i in range(0, len(tasks), split_every)
        ]
    return tasks[0]


def _estep_block(block, params_list, row_offset):
    return [K.estep_stats(block, p, row_offset=row_offset) for p in params_list]


def _using_local_threads(scheduler) -> bool:
    return get_scheduler(scheduler=scheduler) is dask.threaded.get


@contextlib.contextmanager
def blas_guard(scheduler=None):
    """One BLAS thread per task while Dask runs tasks on local threads.

    Dask already keeps every core busy with one task each; letting each task's
    GEMMs spawn more threads would oversubscribe them. Distributed workers
    manage their own BLAS threads, so they are left alone.
    """
    if _using_local_threads(scheduler):
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    else:
        yield


def compute(*objs, scheduler=None):
    """``dask.compute`` with the caller's scheduler, or the active one."""
    return dask.compute(*objs, scheduler=scheduler)


def estep_pass(blocks: Blocks, params_list: Sequence[K.Params], scheduler=None) -> list[SuffStats]:
    """One pass over the data: summed statistics for each parameter set.

    All parameter sets are scored in the same read of each block, so ``n_init``
    restarts cost one pass of I/O, not ``n_init``. The parameters enter the
    graph once, as a single key.
    """
    params_key = dask.delayed(list(params_list), pure=True, traverse=False)
    tasks = [
        dask.delayed(_estep_block, pure=True)(blk, params_key, off)
        for blk, off in zip(blocks.delayed, blocks.offsets, strict=True)
    ]
    (total,) = compute(tree_reduce(tasks), scheduler=scheduler)
    return total


def block_pass(blocks: Blocks, fn: Callable, *args, combine: Callable = _sum_group,
               scheduler=None):
    """Reduce ``fn(block, row_offset, block_index, *args)`` over all blocks in one pass.

    Results are tree-summed unless another order-keeping ``combine`` is given.
    """
    args_key = dask.delayed(args, pure=True, traverse=False)
    tasks = [
        dask.delayed(_apply, pure=True)(fn, blk, off, i, args_key)
        for i, (blk, off) in enumerate(zip(blocks.delayed, blocks.offsets, strict=True))
    ]
    (total,) = compute(tree_reduce(tasks, combine), scheduler=scheduler)
    return total


def _apply(fn, block, row_offset, index, args):
    return fn(block, row_offset, index, *args)


# --------------------------------------------------------------------------
# Batch EM driver
# --------------------------------------------------------------------------


def params_from_stats(stats: SuffStats, reg_covar: float) -> tuple[K.Params, np.ndarray]:
    """M-step: new parameters (with precision Cholesky) and covariances."""
    weights, means, covariances, empty = K.m_step(stats, reg_covar)
    if empty.size:
        warnings.warn(
            f"Component(s) {empty.tolist()} received no responsibility in this M-step; "
            "they keep their previous means, their covariances fall to reg_covar "
            "and their weights to ~0. Consider fewer components or another init.",
            EmptyComponentWarning,
            stacklevel=3,
        )
    prec_chol = K.precision_cholesky(covariances, stats.covariance_type)
    return K.Params(stats.covariance_type, weights, means, prec_chol), covariances


@dataclass
class Run:
    """The state of one EM run (one initialisation)."""

    params: K.Params
    covariances: np.ndarray | None
    lower_bound: float = -np.inf
    lower_bounds: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False


def batch_em(
    blocks: Blocks,
    runs: list[Run],
    *,
    max_iter: int,
    tol: float,
    reg_covar: float,
    scheduler=None,
    on_iteration: Callable[[int, list[Run], float], None] | None = None,
) -> list[Run]:
    """Run batch EM for several initialisations at once, one data pass per iteration.

    Each pass returns, for every active run, the statistics for its next M-step
    and the log-likelihood of its current parameters (so the convergence test
    needs no extra pass). Runs that converge drop out of later passes.
    Iteration semantics match scikit-learn: ``lower_bound`` is the mean
    log-likelihood of the parameters before the last M-step.

    Runs restored from a checkpoint continue from their ``n_iter``.
    ``on_iteration(iteration, runs, seconds)`` is called after every pass.
    """
    active = [r for r in runs if not r.converged]
    for it in range(max(r.n_iter for r in runs) + 1, max_iter + 1):
        if not active:
            break
        start = time.perf_counter()
        stats = estep_pass(blocks, [r.params for r in active], scheduler=scheduler)
        still = []
        for run, st in zip(active, stats, strict=True):
            prev = run.lower_bound
            run.lower_bound = st.loglik / st.n
            run.lower_bounds.append(run.lower_bound)
            run.params, run.covariances = params_from_stats(st, reg_covar)
            run.n_iter = it
            change = run.lower_bound - prev
            if abs(change) < tol:
                run.converged = True
            else:
                still.append(run)
        active = still
        if on_iteration is not None:
            on_iteration(it, runs, time.perf_counter() - start)
    return runs


def as_blocks(X: da.Array) -> Blocks:
    """Blocks of ``X`` (rows chunked, one column chunk)."""
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return Blocks.from_array(X)

