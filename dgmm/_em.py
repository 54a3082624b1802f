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
from functools import cached_property

import dask
import dask.array as da
import dask.threaded
import numpy as np
from dask.base import get_scheduler, tokenize
from dask.core import flatten
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import DataNode, Task, TaskRef
from dask.utils import ensure_dict
from threadpoolctl import threadpool_limits

from dgmm import _kernels as K
from dgmm._stats import SuffStats, tree_sum

# Fan-in of the tree that sums the packets (``dgmm.split-every`` in the Dask
# config, read at every pass): no task ever receives more than this many.
SPLIT_EVERY = 8


class EmptyComponentWarning(UserWarning):
    """A mixture component received (almost) no responsibility in an M-step."""


@dataclass
class Blocks:
    """The row blocks of a 2-D dask array, made once per fit.

    The array's optimised graph is materialised once here; every pass then
    adds only its own O(n_blocks) tasks on top of it (see :func:`block_pass`).

    Attributes
    ----------
    graph : dict
        Low-level graph that produces every block.
    keys : list
        Key of each block in ``graph``, in row order.
    offsets : list of int
        Global index of the first row of each block.
    name : str
        Deterministic name of the array (its dask name).
    """

    graph: dict
    keys: list
    offsets: list[int]
    n_rows: int
    n_features: int
    name: str

    @classmethod
    def from_array(cls, X: da.Array) -> Blocks:
        keys = list(flatten(X.__dask_keys__()))
        graph = ensure_dict(X.__dask_optimize__(X.__dask_graph__(), keys))
        offsets = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).astype(int).tolist()
        return cls(graph, keys, offsets, int(X.shape[0]), int(X.shape[1]), X.name)

    @cached_property
    def delayed(self) -> list[Delayed]:
        """One delayed object per block (all sharing :attr:`graph`)."""
        return [Delayed(key, self.graph) for key in self.keys]


def _sum_group(*packets):
    return tree_sum(list(packets))


def _apply(fn, block, row_offset, index, args):
    return fn(block, row_offset, index, *args)


def pass_graph(blocks: Blocks, fn: Callable, args: tuple, prefix: str = "dgmm-pass") -> Delayed:
    """The graph of one pass: ``fn(block, row_offset, block_index, *args)`` tree-summed.

    Built directly as one graph layer on top of the blocks' graph, so it costs
    O(n_blocks) with a small constant however many blocks there are (one
    ``dask.delayed`` call per task would add a graph layer each, and culling
    thousands of layers costs seconds per pass). Tasks per pass: one per block
    plus about one per ``split_every - 1`` blocks for the tree. ``args`` enter the graph once,
    as a single key that every block task references; the packets are summed
    in a tree of fan-in ``dgmm.split-every``, so no task receives more than
    that many and only the final sum travels to the caller.
    """
    split_every = int(dask.config.get("dgmm.split-every", SPLIT_EVERY))
    if split_every < 2:
        raise ValueError(f"dask config dgmm.split-every must be >= 2; got {split_every}")
    name = f"{prefix}-{tokenize(blocks.name, fn, args)}"
    args_key = f"{name}-args"
    layer = {args_key: DataNode(args_key, args)}
    args_ref = TaskRef(args_key)
    level = []
    for i, (block_key, offset) in enumerate(zip(blocks.keys, blocks.offsets, strict=True)):
        # Producing a block (a read from the store) and using it are one task:
        # half the tasks per pass, and a block never moves between workers.
        node = blocks.graph[block_key]
        block = node if isinstance(node, (Task, DataNode)) else TaskRef(block_key)
        key = (name, 0, i)
        layer[key] = Task(key, _apply, fn, block, offset, i, args_ref)
        level.append(key)
    depth = 0
    while len(level) > 1:
        depth += 1
        groups = [level[j : j + split_every] for j in range(0, len(level), split_every)]
        level = []
        for j, group in enumerate(groups):
            key = (name, depth, j)
            layer[key] = Task(key, _sum_group, *[TaskRef(k) for k in group])
            level.append(key)
    data_layer = f"dgmm-blocks-{blocks.name}"
    graph = HighLevelGraph(
        {data_layer: blocks.graph, name: layer}, {data_layer: set(), name: {data_layer}}
    )
    return Delayed(level[0], graph, layer=name)


def _estep_block(block, row_offset, index, params_list):
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
    return block_pass(blocks, _estep_block, list(params_list), scheduler=scheduler)


def block_pass(blocks: Blocks, fn: Callable, *args, scheduler=None):
    """Tree-sum ``fn(block, row_offset, block_index, *args)`` over all blocks."""
    (total,) = compute(pass_graph(blocks, fn, args), scheduler=scheduler)
    return total


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
    log: Callable[[str], None] | None = None,
    verbose_interval: int = 10,
) -> list[Run]:
    """Run batch EM for several initialisations at once, one data pass per iteration.

    Each pass returns, for every active run, the statistics for its next M-step
    and the log-likelihood of its current parameters (so the convergence test
    needs no extra pass). Runs that converge drop out of later passes.
    Iteration semantics match scikit-learn: ``lower_bound`` is the mean
    log-likelihood of the parameters before the last M-step.
    """
    active = [r for r in runs if not r.converged]
    t_last = time.perf_counter()
    for it in range(1, max_iter + 1):
        if not active:
            break
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
        if log is not None and (it % verbose_interval == 0 or not still or it == max_iter):
            now = time.perf_counter()
            best = max(r.lower_bound for r in runs)
            log(
                f"  iteration {it}: best lower bound {best:.6f}, "
                f"{len(still)} run(s) active, {now - t_last:.2f}s"
            )
            t_last = now
        active = still
    return runs


def as_blocks(X: da.Array) -> Blocks:
    """Blocks of ``X`` (rows chunked, one column chunk)."""
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return Blocks.from_array(X)

