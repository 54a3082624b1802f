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
from dataclasses import dataclass, field, replace
from functools import cached_property

import dask
import dask.array as da
import dask.threaded
import numpy as np
import psutil
from dask.base import get_scheduler, tokenize
from dask.core import flatten
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import DataNode, Task, TaskRef
from dask.utils import ensure_dict
from threadpoolctl import threadpool_limits

from dgmm import _kernels as K
from dgmm._stats import SuffStats, tree_sum

# Fan-in of the tree that combines the per-block results (``dgmm.split-every``
# in the Dask config, read at every pass): no task receives more than this many.
SPLIT_EVERY = 8


class EmptyComponentWarning(UserWarning):
    """A mixture component received (almost) no responsibility in an M-step."""


@dataclass
class Blocks:
    """The row blocks of a 2-D dask array, made once per fit.

    The array's optimised graph is materialised once here; every pass then
    adds only its own O(n_blocks) tasks on top of it (see :func:`pass_graph`).

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

    @property
    def sizes(self) -> list[int]:
        """Rows per block."""
        return np.diff([*self.offsets, self.n_rows]).tolist()

    @cached_property
    def delayed(self) -> list[Delayed]:
        """One delayed object per block (all sharing :attr:`graph`)."""
        return [Delayed(key, self.graph) for key in self.keys]

    @classmethod
    def from_array(cls, X: da.Array) -> Blocks:
        keys = list(flatten(X.__dask_keys__()))
        raw = X.__dask_graph__()
        graph = ensure_dict(X.__dask_optimize__(raw, keys))
        # Blocks persisted on a distributed cluster are futures, which the
        # optimisation culls as already computed: keep them as they are.
        graph.update({k: raw[k] for k in keys if k not in graph})
        offsets = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).astype(int).tolist()
        return cls(graph, keys, offsets, int(X.shape[0]), int(X.shape[1]), X.name)


def _sum_group(*packets):
    return tree_sum(list(packets))


def _apply(fn, block, row_offset, index, args, start=0, stop=None):
    return fn(block[start:stop], row_offset + start, index, *args)


def pass_graph(
    blocks: Blocks,
    fn: Callable,
    args: tuple,
    combine: Callable = _sum_group,
    pieces: Sequence[tuple[int, int, int | None]] | None = None,
) -> Delayed:
    """The graph of one pass: ``fn(rows, row_offset, block_index, *args)`` per block, combined.

    ``pieces``, triples ``(block index, start, stop)``, restrict the pass to
    those rows of those blocks (default: every block whole). The results are
    combined in order by ``combine(*parts)`` (default: summing packets) in a
    tree of fan-in ``dgmm.split-every``, so no task receives more than that
    many parts and only the final result travels to the caller. ``args`` enter
    the graph once, as a single key that every task references.

    The graph is built directly as one layer on top of the blocks' graph, at
    O(n_pieces) cost with a small constant (a ``dask.delayed`` call per task
    adds a graph layer each, and culling thousands of layers costs seconds
    per pass). Tasks per pass: one per piece, about one per
    ``split_every - 1`` pieces for the tree, and the ``args`` key.
    """
    split_every = int(dask.config.get("dgmm.split-every", SPLIT_EVERY))
    if split_every < 2:
        raise ValueError(f"dask config dgmm.split-every must be >= 2; got {split_every}")
    if pieces is None:
        pieces = [(b, 0, None) for b in range(len(blocks.keys))]
    name = f"dgmm-pass-{tokenize(blocks.name, fn, args, combine, pieces)}"
    args_key = f"{name}-args"
    layer = {args_key: DataNode(args_key, args)}
    args_ref = TaskRef(args_key)
    level = []
    for i, (b, start, stop) in enumerate(pieces):
        # Producing a block (a read from the store) and using it are one task:
        # half the tasks per pass, and a block never moves between workers.
        node = blocks.graph[blocks.keys[b]]
        block = node if isinstance(node, (Task, DataNode)) else TaskRef(blocks.keys[b])
        key = (name, 0, i)
        layer[key] = Task(key, _apply, fn, block, blocks.offsets[b], b, args_ref, start, stop)
        level.append(key)
    depth = 0
    while len(level) > 1:
        depth += 1
        groups = [level[j : j + split_every] for j in range(0, len(level), split_every)]
        level = []
        for j, group in enumerate(groups):
            key = (name, depth, j)
            layer[key] = Task(key, combine, *[TaskRef(k) for k in group])
            level.append(key)
    data_layer = f"dgmm-blocks-{blocks.name}"
    graph = HighLevelGraph(
        {data_layer: blocks.graph, name: layer}, {data_layer: set(), name: {data_layer}}
    )
    return Delayed(level[0], graph, layer=name)


def _estep_block(block, row_offset, index, params_list):
    return [K.estep_stats(block, p, row_offset=row_offset) for p in params_list]


def _using_local_threads(scheduler) -> bool:
    # None: nothing configured, so dask arrays and delayed use the threaded scheduler.
    return get_scheduler(scheduler=scheduler) in (None, dask.threaded.get)


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


def estep_pass(
    blocks: Blocks,
    params_list: Sequence[K.Params],
    scheduler=None,
    pieces: Sequence[tuple[int, int, int]] | None = None,
) -> list[SuffStats]:
    """One pass over the data: summed statistics for each parameter set.

    All parameter sets are scored in the same read of each block, so ``n_init``
    restarts cost one pass of I/O, not ``n_init``. The parameters enter the
    graph once, as a single key. ``pieces``, triples ``(block index, start,
    stop)`` of rows within a block, restrict the pass to those rows (a
    minibatch); their packets are computed in parallel and tree-summed.
    """
    graph = pass_graph(blocks, _estep_block, (list(params_list),), pieces=pieces)
    (total,) = compute(graph, scheduler=scheduler)
    return total


def block_pass(blocks: Blocks, fn: Callable, *args, combine: Callable = _sum_group,
               scheduler=None):
    """Reduce ``fn(block, row_offset, block_index, *args)`` over all blocks in one pass.

    Results are tree-summed unless another order-keeping ``combine`` is given.
    """
    (total,) = compute(pass_graph(blocks, fn, args, combine), scheduler=scheduler)
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


# --------------------------------------------------------------------------
# Stepwise (online) EM driver: running normalised statistics s, and for each
# minibatch t with packet s_t: s <- (1 - rho_t) s + rho_t s_t / n_t, then an
# M-step from s; rho_t = (t + offset) ** -decay.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class OnlineState:
    """Everything stepwise EM carries from one step to the next (immutable).

    Attributes
    ----------
    params, covariances
        The model the next E-step uses (the M-step of ``stats``).
    stats : SuffStats
        Running normalised statistics (``n`` = 1 up to rounding); ``n_rows``
        counts the rows that have entered them.
    n_steps : int
        Steps taken, ``t``.
    step_size : float
        ``rho`` of the last step (NaN before the first).
    """

    params: K.Params
    covariances: np.ndarray
    stats: SuffStats
    n_steps: int = 0
    step_size: float = float("nan")

    @classmethod
    def from_params(
        cls, params: K.Params, covariances: np.ndarray, reg_covar: float, n_rows: int = 0
    ) -> OnlineState:
        """A state whose running statistics reproduce ``params`` (no steps taken)."""
        stats = replace(K.stats_from_params(params, covariances, reg_covar), n_rows=n_rows)
        return cls(params, covariances, stats)


def step_size(t: int, decay: float, offset: float) -> float:
    """``rho_t = (t + offset) ** -decay`` for step ``t`` >= 1."""
    return float((t + offset) ** -decay)


def stepwise_step(
    states: Sequence[OnlineState],
    packets: Sequence[SuffStats],
    *,
    reg_covar: float,
    decay: float,
    offset: float,
) -> tuple[OnlineState, SuffStats]:
    """One stepwise-EM step: the new state and the packet it used.

    ``packets[i]`` holds the statistics of the minibatch under
    ``states[i].params``. With several candidates (initialisations, first step
    only) the one under which the minibatch is most likely is kept. The inputs
    are left untouched, so a caller commits the new state only on success.
    """
    best = int(np.argmax([p.loglik / p.n for p in packets]))
    state, packet = states[best], packets[best]
    t = state.n_steps + 1
    rho = step_size(t, decay, offset)
    stats = state.stats.stepped(packet, rho)
    params, covariances = params_from_stats(stats, reg_covar)
    return OnlineState(params, covariances, stats, t, rho), packet


def epoch_plan(
    sizes: Sequence[int], batch_size: int, rng: np.random.Generator | None
) -> list[list[tuple[int, int, int]]]:
    """The minibatches of one epoch, as lists of ``(block, start, stop)`` pieces.

    Blocks larger than ``batch_size`` are cut into equal slices of at most
    ``batch_size`` rows; the pieces are shuffled by ``rng`` (kept in order if
    ``None``) and grouped, in that order, into about ``round(n_rows / batch_size)``
    minibatches of about equal row counts (a piece goes to the minibatch its
    middle row falls in). Every row is in exactly one minibatch.
    """
    pieces = []
    for b, n in enumerate(sizes):
        m = -(-n // batch_size)
        pieces += [(b, n * j // m, n * (j + 1) // m) for j in range(m)]
    if rng is not None:
        pieces = [pieces[i] for i in rng.permutation(len(pieces))]
    n_rows = sum(sizes)
    n_batches = max(1, round(n_rows / batch_size))
    ends = np.cumsum([stop - start for _, start, stop in pieces])
    mids = ends - np.diff(ends, prepend=0) / 2
    group = np.floor(mids * n_batches / n_rows).astype(int)
    return [
        [p for p, g in zip(pieces, group, strict=True) if g == j]
        for j in np.unique(group)
    ]


def minibatch_em(
    blocks: Blocks,
    states: list[OnlineState],
    *,
    batch_size: int,
    max_iter: int,
    tol: float,
    reg_covar: float,
    decay: float,
    offset: float,
    rng: np.random.Generator | None,
    scheduler=None,
    log: Callable[[str], None] | None = None,
    verbose_interval: int = 10,
    on_step: Callable[[OnlineState], None] | None = None,
) -> tuple[OnlineState, Run]:
    """Stepwise EM over the row blocks, an epoch (a full pass) at a time.

    Each minibatch is one E-step over its pieces, computed in parallel and
    tree-summed, then one :func:`stepwise_step`. Several ``states``
    (initialisations) compete on the first minibatch only. An epoch's
    log-likelihood is the mean over its rows under the parameters in force
    when each row was visited; the loop stops after ``max_iter`` epochs or
    when that changes by less than ``tol``. ``on_step`` is called with each
    new state (for progress reports, checkpoints or measurements).

    Returns the final state and a :class:`Run` with one ``lower_bounds`` entry
    per epoch (``n_iter`` epochs).
    """
    run = Run(states[0].params, states[0].covariances)
    t_last = time.perf_counter()
    for epoch in range(1, max_iter + 1):
        loglik = n = 0.0
        for pieces in epoch_plan(blocks.sizes, batch_size, rng):
            packets = estep_pass(blocks, [s.params for s in states], scheduler, pieces=pieces)
            state, packet = stepwise_step(
                states, packets, reg_covar=reg_covar, decay=decay, offset=offset
            )
            states = [state]
            if on_step is not None:
                on_step(state)
            loglik += packet.loglik
            n += packet.n
        prev = run.lower_bound
        run.lower_bound = loglik / n
        run.lower_bounds.append(run.lower_bound)
        run.n_iter = epoch
        run.converged = abs(run.lower_bound - prev) < tol
        if log is not None and (epoch % verbose_interval == 0 or run.converged
                                or epoch == max_iter):
            now = time.perf_counter()
            log(
                f"  epoch {epoch}: mean log-likelihood {run.lower_bound:.6f}, "
                f"{state.n_steps} steps, step size {state.step_size:.4g}, {now - t_last:.2f}s"
            )
            t_last = now
        if run.converged:
            break
    state = states[0]
    run.params, run.covariances = state.params, state.covariances
    return state, run


# --------------------------------------------------------------------------
# Cache policy: persist the data once, or stream it on every pass
# --------------------------------------------------------------------------

# Share of the active scheduler's memory that cache='auto' lets the data use
# (config ``dgmm.cache-fraction``): the rest is headroom for the chunks in
# flight, the workers' own bookkeeping and other users of the machine.
DEFAULT_CACHE_FRACTION = 0.5
CACHE_OPTIONS = ("auto", True, False)


def _distributed_client(scheduler):
    """The ``distributed.Client`` that would run a compute, or None."""
    owner = getattr(get_scheduler(scheduler=scheduler), "__self__", None)
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    return owner if isinstance(owner, Client) else None


def memory_budget(scheduler=None) -> tuple[int, str]:
    """Bytes that persisted data may occupy, and a description of that memory.

    With a ``distributed.Client`` active: a fraction of the sum of its workers'
    memory limits (0 if any worker has no limit, since its size is unknown).
    With local schedulers: a fraction of this machine's available memory.
    """
    fraction = float(dask.config.get("dgmm.cache-fraction", DEFAULT_CACHE_FRACTION))
    client = _distributed_client(scheduler)
    if client is not None:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        limits = [int(w.get("memory_limit") or 0) for w in workers]
        if not limits or min(limits) <= 0:
            return 0, "distributed workers without a memory limit"
        return int(fraction * sum(limits)), f"{len(limits)} distributed worker(s)"
    return int(fraction * psutil.virtual_memory().available), "available memory of this machine"


def apply_cache_policy(
    X: da.Array, cache, scheduler=None, log: Callable[[str], None] | None = None
) -> da.Array:
    """``X`` persisted for the whole fit, or unchanged so every pass streams it.

    ``cache='auto'`` persists when ``X.nbytes`` fits in :func:`memory_budget`;
    ``True``/``False`` force either choice. The choice is logged.
    """
    size = f"{X.nbytes / 2**30:.2f} GiB"
    if cache == "auto":
        budget, where = memory_budget(scheduler)
        persist = X.nbytes <= budget
        reason = f"cache='auto': data {size}, budget {budget / 2**30:.2f} GiB ({where})"
    else:
        persist = bool(cache)
        reason = f"cache={cache!r}: data {size}"
    if log is not None:
        choice = "persisting it in memory" if persist else "streaming it from its source every pass"
        log(f"{reason}: {choice}")
    return X.persist(scheduler=scheduler) if persist else X


def as_blocks(X: da.Array) -> Blocks:
    """Blocks of ``X`` (rows chunked, one column chunk)."""
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return Blocks.from_array(X)

