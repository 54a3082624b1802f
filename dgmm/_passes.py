"""The pass engine: map a pure per-block function over row blocks, combine in a tree.

Every data pass of a fit (initialisation, E-steps, minibatch steps, scoring,
streamed writes) goes through :func:`pass_graph`. It never creates a
scheduler: it computes with whichever is active (the threaded scheduler by
default, a ``distributed.Client`` if one is the default), unless the caller
names one.

The per-block calling convention
--------------------------------
A per-block function is a :class:`BlockFn`: ``fn(rows, row_offset,
block_index, *args)``, where ``rows`` is an in-memory ``(n, d)`` array (a
whole block or a slice of one), ``row_offset`` the global index of its first
row (so errors name global rows), ``block_index`` the block's position (so
per-block random streams are reproducible), and ``args`` the pass's shared
arguments. Its results are combined by an order-keeping ``combine(*parts)``,
summation of statistics packets by default.

Why not ``da.reduction``
------------------------
``da.reduction`` would optimise and cull the whole graph of ``X`` again on
every pass (seconds per pass with thousands of chunks), cannot restrict a
pass to shuffled slices of chosen blocks (a minibatch) without building a
new array, gives the chunk function no global row offset or block index, and
embeds its arguments per task. Here the input graph is materialised once per
fit (:class:`Blocks`), each pass adds one layer of O(n_blocks) tasks on top,
the reading of a block is fused into the task that uses it, and the
arguments enter the graph once, as one key.

What every pass checks for free
-------------------------------
Every piece task also returns a CRC-32 of the bytes it read (the rows and
their side arrays) and the smallest and largest value of its rows; the tree
carries them, in order, next to the combined result, so neither the
:class:`BlockFn` nor ``combine`` sees them. :meth:`Blocks.observe` compares
them with the first read of the same rows: rows that read differently stop
the pass (:class:`DataChangedError`), so a store rewritten during a fit never
yields a model, and the hashes of the first whole pass make the data's
fingerprint (:attr:`Blocks.fingerprint`) without a pass of its own. A block
whose values lie wildly outside the others' (corruption that still decodes)
stops the first whole pass (:class:`DamagedDataError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from math import nan
from typing import Any, Protocol

import dask
import dask.array as da
import dask.threaded
import google_crc32c
import numpy as np
import psutil
from dask.base import get_scheduler, tokenize
from dask.core import flatten
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import DataNode, Task, TaskRef
from dask.utils import ensure_dict
from threadpoolctl import threadpool_limits

from dgmm import _kernels as kernels
from dgmm._stats import SuffStats, tree_sum

# A block whose values lie further than this many times the typical block's
# spread from the typical block's centre is reported as damaged (config
# ``dgmm.range-factor``; 0 turns the check off).
RANGE_FACTOR = 1e6

# Fan-in of the tree that combines the per-block results (``dgmm.split-every``
# in the Dask config, read at every pass): no task receives more than this many.
SPLIT_EVERY = 8
# Data per task when reading a store (config ``dgmm.read-chunk-bytes``): tens
# of MB keeps scheduler overhead (~1 ms a task) under 1% of the read time while
# a few chunks in flight per thread stay far below 1 GB. Passes fuse runs of
# small blocks into tasks of about this size too (:meth:`Blocks.tasks`).
DEFAULT_READ_CHUNK_BYTES = 32 * 2**20
# Blocks below this share of ``dgmm.read-chunk-bytes`` count as small and are
# fused with their neighbours; larger ones (NumPy input's 4 MiB blocks, a
# store's reads) run one per task, without the copy that fusing costs.
SMALL_BLOCK_SHARE = 1 / 32
# Fused tasks hold at most this share of all the data, so a small array still
# gives every core several tasks.
MIN_TASKS = 16


class DataChangedError(ValueError):
    """Rows read differently from their first read during one fit."""


class DamagedDataError(ValueError):
    """A block of the input holds values that no intact block of it could hold."""


class BlockFn(Protocol):
    """A function mapped over the row blocks of a pass (see the module docstring)."""

    def __call__(self, rows: np.ndarray, row_offset: int, block_index: int, *args: Any) -> Any:
        ...


def scheduler_for(lazy: bool) -> str | None:
    """The scheduler a pass uses: the active one for lazy input, local threads for NumPy.

    In-memory NumPy input is never shipped to a cluster: its blocks already
    sit in this process.
    """
    return None if lazy else "threads"


@dataclass(frozen=True)
class RowData:
    """Validated per-row arrays that travel with the rows of a fit (see :func:`as_blocks`).

    Attributes
    ----------
    weight : dask array of shape (n,), optional
        Non-negative finite sample weights.
    label : dask array of int64, shape (n,), optional
        Known component of a row, -1 where unknown.
    total_weight : float
        Sum of the weights (the row count without weights).
    """

    weight: da.Array | None = None
    label: da.Array | None = None
    total_weight: float = 0.0


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
    side : dict
        Per-row arrays that travel with the rows (``'weight'``, ``'label'``):
        name -> key of each block's part in ``graph``, aligned with ``keys``.
    total_weight : float
        Sum of the sample weights (the row count without weights): the
        weighted size of the data.
    fill : ndarray of shape (n_features,), optional
        While set (:meth:`filled`), every pass sees NaN entries as these
        values: how initialisation treats missing values.
    itemsize : int
        Bytes per value of the array (to size fused tasks).
    block_reads : int
        Blocks read so far by the passes over these blocks (a pass restricted
        to pieces reads each block it touches once per piece).
    seen : dict
        ``(block, start, stop) -> (crc, low, high, check)`` of the first read
        of those rows (see :meth:`observe`).
    resident : bool
        The blocks sit in memory for the whole fit (NumPy input, or data
        persisted by the cache policy), so a second read cannot differ from
        the first: once a whole pass has hashed every block (the
        fingerprint), later passes skip the checksum of what they read.
    """

    graph: dict
    keys: list
    offsets: list[int]
    n_rows: int
    n_features: int
    name: str
    side: dict[str, list] = field(default_factory=dict)
    total_weight: float = 0.0
    block_reads: int = 0
    fill: np.ndarray | None = None
    seen: dict = field(default_factory=dict)
    itemsize: int = 8
    resident: bool = False

    def __post_init__(self):
        if "weight" not in self.side:
            self.total_weight = float(self.n_rows)

    @property
    def n_passes(self) -> float:
        """Data passes made so far: :attr:`block_reads` over the number of blocks."""
        return self.block_reads / len(self.keys)

    def compute(self, *objs, n_reads: int, scheduler=None) -> tuple:
        """Compute ``objs``, which read ``n_reads`` blocks, and count those reads."""
        out = compute(*objs, scheduler=scheduler)
        self.block_reads += n_reads
        return out

    def run_pass(self, graph: Delayed, *, n_reads: int, scheduler=None):
        """Compute a :func:`pass_graph`, check what it read (:meth:`observe`), return its result."""
        ((result, reads),) = self.compute(graph, n_reads=n_reads, scheduler=scheduler)
        self.observe(reads)
        return result

    def observe(self, reads: Sequence[tuple]) -> None:
        """Compare each piece read, ``(block, start, stop, check, crc, low, high)``, with its first.

        ``check`` is the CRC-32C that every read is compared by (None: not
        hashed); ``crc`` (the CRC-32 of the fingerprint), ``low`` and ``high``
        come with the reads of passes before the first whole one (else None
        and NaN), and are kept from a piece's first read.

        Raises
        ------
        DataChangedError
            Rows hash differently from their first read in this fit.
        DamagedDataError
            The first time every block has been read whole, a block lies
            wildly outside the others (see :func:`check_ranges`).
        """
        complete = self.fingerprint is not None
        for b, start, stop, check, crc, low, high in reads:
            stop = self.sizes[b] if stop is None else stop
            first = self.seen.setdefault((b, start, stop), (crc, low, high, check))
            if None not in (first[3], check) and first[3] != check:
                lo, hi = self.offsets[b] + start, self.offsets[b] + stop - 1
                raise DataChangedError(
                    f"the input changed while it was being read: rows {lo}-{hi} differ from "
                    "their first read in this fit, so no model is made from them; rerun once "
                    "the data stop changing (a job should read a finished store)")
        if not complete and self.fingerprint is not None:
            whole = [self.seen[b, 0, n] for b, n in enumerate(self.sizes)]
            check_ranges([w[1] for w in whole], [w[2] for w in whole], self.offsets, self.sizes)

    @property
    def block_hashes(self) -> list[int] | None:
        """CRC-32 of every whole block, in order, once a whole pass has read them (else None)."""
        try:
            return [self.seen[b, 0, n][0] for b, n in enumerate(self.sizes)]
        except KeyError:
            return None

    @property
    def fingerprint(self) -> str | None:
        """A digest of every byte of the data (and side arrays) and of its blocking, or None.

        Available after the first whole pass of a fit, which computes it at
        no extra cost (see :meth:`observe`).
        """
        hashes = self.block_hashes
        if hashes is None:
            return None
        digest = hashlib.sha256(repr((self.sizes, sorted(self.side), hashes)).encode())
        return digest.hexdigest()

    @contextlib.contextmanager
    def filled(self, values: np.ndarray | None):
        """Passes inside the block see NaN entries as ``values`` (None: unchanged)."""
        self.fill = values
        try:
            yield self
        finally:
            self.fill = None

    def fill_nan(self, block: np.ndarray) -> np.ndarray:
        """``block`` with NaN entries replaced by :attr:`fill` (unchanged if unset)."""
        return _filled(block, self.fill)

    @property
    def sizes(self) -> list[int]:
        """Rows per block."""
        return np.diff([*self.offsets, self.n_rows]).tolist()

    def tasks(self) -> list[tuple[int, int]]:
        """Runs ``(first, stop)`` of adjacent blocks that a whole pass processes as one task.

        Blocks smaller than ``SMALL_BLOCK_SHARE`` of ``dgmm.read-chunk-bytes``
        (config, read at every pass) are concatenated with their small
        neighbours into tasks of about that size, or of a ``MIN_TASKS``-th of
        the data if that is less: thousands of tiny chunks would otherwise
        cost a task and a kernel call each. Other blocks run alone.
        """
        target = int(dask.config.get("dgmm.read-chunk-bytes", DEFAULT_READ_CHUNK_BYTES))
        row_bytes = max(1, self.n_features * self.itemsize)
        small = target * SMALL_BLOCK_SHARE / row_bytes
        cap = min(target / row_bytes, self.n_rows / MIN_TASKS)
        runs: list[tuple[int, int]] = []
        rows = 0  # in the open run, runs[-1], if it takes more small blocks
        for b, size in enumerate(self.sizes):
            if size < small and rows and rows + size <= cap:
                runs[-1] = (runs[-1][0], b + 1)
                rows += size
            else:
                runs.append((b, b + 1))
                rows = size if size < small else 0
        return runs

    @cached_property
    def delayed(self) -> list[Delayed]:
        """One delayed object per block (all sharing :attr:`graph`)."""
        return [Delayed(key, self.graph) for key in self.keys]

    @classmethod
    def from_array(cls, X: da.Array, total_weight: float = 0.0, resident: bool = False,
                   **side: da.Array | None) -> Blocks:
        """Blocks of ``X``, with per-row ``side`` arrays (None: absent) cut into its row chunks."""
        keys, graph = _materialise(X)
        side_keys = {}
        for what, arr in side.items():
            if arr is None:
                continue
            arr = arr.rechunk((X.chunks[0],))
            side_keys[what], part = _materialise(arr)
            graph.update(part)
        offsets = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).astype(int).tolist()
        name = X.name if not side_keys else tokenize(X.name, *side_keys.values())
        return cls(graph, keys, offsets, int(X.shape[0]), int(X.shape[1]), name, side_keys,
                   total_weight, itemsize=X.dtype.itemsize, resident=resident)


def _materialise(X: da.Array) -> tuple[list, dict]:
    """The block keys of ``X`` and its optimised low-level graph."""
    keys = list(flatten(X.__dask_keys__()))
    raw = X.__dask_graph__()
    graph = ensure_dict(X.__dask_optimize__(raw, keys))
    # Blocks persisted on a distributed cluster are futures, which the
    # optimisation culls as already computed: keep them as they are.
    graph.update({k: raw[k] for k in keys if k not in graph})
    return keys, graph


def _sum_group(*packets):
    return tree_sum(list(packets))


def _filled(block: np.ndarray, fill: np.ndarray | None) -> np.ndarray:
    if fill is None:
        return block
    return np.where(np.isnan(block), fill.astype(block.dtype), block)


def _crc(arrays: Sequence[np.ndarray]) -> int:
    """CRC-32 of the bytes of ``arrays`` (zlib's: fast, and no copy of contiguous rows)."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(_bytes(a), crc)
    return crc


def _check(arrays: Sequence[np.ndarray]) -> int:
    """CRC-32C of the bytes of ``arrays``: the CPU's instruction, about 4x zlib's CRC-32."""
    crc = 0
    for a in arrays:
        crc = google_crc32c.extend(crc, _bytes(a))
    return crc


def _bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8).reshape(-1)


def _value_range(rows: np.ndarray) -> tuple[float, float]:
    """Smallest and largest value of ``rows`` (NaN where missing values leave them unknown)."""
    if rows.size == 0 or rows.dtype.kind not in "biuf":
        return float("nan"), float("nan")
    return float(rows.min()), float(rows.max())


def _apply(fn, args, row_offset, index, start, stop, names, fill, ranged, hashed, count,
           *parts):
    # ``count`` adjacent blocks, then as many parts of each side array (``names``
    # says which), arrive positionally: dask resolves task references there.
    # Fused blocks are concatenated, so ``fn`` sees one block of their rows;
    # each block's read is recorded on its own, as the fingerprint counts blocks.
    # The CRC-32 (the fingerprint) and value range of a block are only looked
    # at from its first whole read (:meth:`Blocks.observe`): later passes skip
    # them (``ranged`` False) and compare the cheaper CRC-32C alone, which
    # passes over resident blocks skip too once all are known (``hashed``).
    blocks, *sides = [list(p) for p in zip(*[iter(parts)] * count, strict=True)]
    reads = []
    for j, part in enumerate(blocks):
        rows = part[start:stop]
        checked = [rows, *(side[j][start:stop] for side in sides)]
        first = (_crc(checked), *_value_range(rows)) if ranged else (None, nan, nan)
        reads.append((index + j, start, stop, _check(checked) if hashed else None, *first))
    block = blocks[0] if count == 1 else np.concatenate(blocks)
    extra = {k: (v[0] if count == 1 else np.concatenate(v))[start:stop]
             for k, v in zip(names, sides, strict=True)}
    result = fn(_filled(block[start:stop], fill), row_offset + start, index, *args, **extra)
    return result, tuple(reads)


def _combine_reads(combine: Callable, *parts):
    """``combine`` of the results, with the reads of every part kept in order alongside."""
    return combine(*[result for result, _ in parts]), tuple(r for _, reads in parts for r in reads)


def check_ranges(low: Sequence[float], high: Sequence[float], offsets: Sequence[int],
                 sizes: Sequence[int]) -> None:
    """Stop at a block whose values lie far outside those of the typical block.

    A chunk whose bytes were damaged but still decode holds values such as
    1e30 among data of unit scale; fitted, it gives a meaningless model. A
    block is refused when one of its values lies more than
    ``dgmm.range-factor`` (default 1e6) times the median block spread from the
    median block centre. Blocks with NaN (missing values) are left to the
    fit's own checks; fewer than three blocks give no typical block.
    """
    factor = float(dask.config.get("dgmm.range-factor", RANGE_FACTOR))
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    ok = np.isfinite(low) & np.isfinite(high)
    if factor <= 0 or ok.sum() < 3:
        return
    centre = float(np.median((low[ok] + high[ok]) / 2))
    spread = float(np.median(high[ok] - low[ok])) or max(abs(centre), 1.0)
    far = np.maximum(np.abs(low - centre), np.abs(high - centre)) > factor * spread
    for b in np.flatnonzero(far & ~np.isnan(low + high)):
        lo, hi = offsets[b], offsets[b] + sizes[b] - 1
        value = low[b] if abs(low[b] - centre) > abs(high[b] - centre) else high[b]
        raise DamagedDataError(
            f"rows {lo}-{hi} of the input look damaged: they hold {value:.6g}, more than "
            f"{factor:g} times the typical block's spread ({spread:.6g}) from its centre "
            f"({centre:.6g}); check that part of the store (dask config dgmm.range-factor=0 "
            "turns this check off)")


def _node(graph: dict, key):
    """A block's producing task, to fuse into the task that uses it (a reference otherwise)."""
    node = graph[key]
    return node if isinstance(node, (Task, DataNode)) else TaskRef(key)


def pass_graph(
    blocks: Blocks,
    fn: BlockFn,
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
    the graph once, as a single key that every task references. A whole pass
    runs small adjacent blocks as one task (:meth:`Blocks.tasks`): ``fn`` then
    sees their rows as one block, with the index of the first.

    The graph computes ``(result, reads)``: ``reads`` holds ``(block, start,
    stop, check, crc, low, high)`` of every piece, in order, for
    :meth:`Blocks.run_pass`, which checks them and returns ``result``.

    The graph is built directly as one layer on top of the blocks' graph, at
    O(n_pieces) cost with a small constant (a ``dask.delayed`` call per task
    adds a graph layer each, and culling thousands of layers costs seconds
    per pass). Tasks per pass: one per piece, about one per
    ``split_every - 1`` pieces for the tree, and the ``args`` key.
    """
    split_every = int(dask.config.get("dgmm.split-every", SPLIT_EVERY))
    if split_every < 2:
        raise ValueError(f"dask config dgmm.split-every must be >= 2; got {split_every}")
    # (first block, stop block, start row, stop row) of each task
    if pieces is None:
        runs = [(first, stop, 0, None) for first, stop in blocks.tasks()]
    else:
        runs = [(b, b + 1, start, stop) for b, start, stop in pieces]
    ranged = blocks.block_hashes is None  # no whole pass yet, whose ranges are checked
    hashed = ranged or not blocks.resident
    token = tokenize(blocks.name, fn, args, combine, runs, blocks.fill, hashed, ranged)
    name = f"dgmm-pass-{token}"
    args_key = f"{name}-args"
    layer = {args_key: DataNode(args_key, args)}
    args_ref = TaskRef(args_key)
    level = []
    for i, (first, last, start, stop) in enumerate(runs):
        # Producing a block (a read from the store) and using it are one task:
        # half the tasks per pass, and a block never moves between workers.
        parts = [_node(blocks.graph, keys[b]) for keys in (blocks.keys, *blocks.side.values())
                 for b in range(first, last)]
        key = (name, 0, i)
        layer[key] = Task(key, _apply, fn, args_ref, blocks.offsets[first], first, start, stop,
                          tuple(blocks.side), blocks.fill, ranged, hashed, last - first,
                          *parts)
        level.append(key)
    depth = 0
    while len(level) > 1:
        depth += 1
        groups = [level[j : j + split_every] for j in range(0, len(level), split_every)]
        level = []
        for j, group in enumerate(groups):
            key = (name, depth, j)
            layer[key] = Task(key, _combine_reads, combine, *[TaskRef(k) for k in group])
            level.append(key)
    data_layer = f"dgmm-blocks-{blocks.name}"
    graph = HighLevelGraph(
        {data_layer: blocks.graph, name: layer}, {data_layer: set(), name: {data_layer}}
    )
    return Delayed(level[0], graph, layer=name)


def _estep_block(block, row_offset, index, params_list, missing, weight=None, label=None):
    return [kernels.estep_stats(block, p, sample_weight=weight, row_offset=row_offset,
                                label=label, missing=missing)
            for p in params_list]


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
    params_list: Sequence[kernels.Params],
    scheduler=None,
    pieces: Sequence[tuple[int, int, int]] | None = None,
    missing: bool = False,
) -> list[SuffStats]:
    """One pass over the data: summed statistics for each parameter set.

    All parameter sets are scored in the same read of each block, so ``n_init``
    restarts cost one pass of I/O, not ``n_init``. The parameters enter the
    graph once, as a single key. ``pieces``, triples ``(block index, start,
    stop)`` of rows within a block, restrict the pass to those rows (a
    minibatch); their packets are computed in parallel and tree-summed.
    Sample weights and labels come with the blocks (:attr:`Blocks.side`);
    ``missing`` lets rows with NaN enter through their observed coordinates.
    """
    graph = pass_graph(blocks, _estep_block, (list(params_list), missing), pieces=pieces)
    n_reads = len(blocks.keys) if pieces is None else len(pieces)
    return blocks.run_pass(graph, n_reads=n_reads, scheduler=scheduler)


def block_pass(blocks: Blocks, fn: BlockFn, *args, combine: Callable = _sum_group,
               scheduler=None):
    """Reduce ``fn(block, row_offset, block_index, *args)`` over all blocks in one pass.

    Results are tree-summed unless another order-keeping ``combine`` is given.
    """
    graph = pass_graph(blocks, fn, args, combine)
    return blocks.run_pass(graph, n_reads=len(blocks.keys), scheduler=scheduler)


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


def as_blocks(X: da.Array, rows: RowData | None = None, resident: bool = False) -> Blocks:
    """Blocks of ``X`` (rows chunked, one column chunk), with its per-row side arrays.

    ``resident``: ``X`` is in memory for as long as the blocks are used
    (:attr:`Blocks.resident`).
    """
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    if rows is None:
        return Blocks.from_array(X, resident=resident)
    return Blocks.from_array(X, rows.total_weight, resident, weight=rows.weight,
                             label=rows.label)

