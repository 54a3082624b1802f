"""Storage: Zarr input, streamed Zarr output, and model files (no pickle).

Sections: reading (any supported input as a row-chunked dask array), atomic
writes, streamed predictions, model files.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr
from scipy import sparse
from sklearn.utils.validation import check_is_fitted

from dgmm import _kernels as kernels
from dgmm import _lock
from dgmm import _variational as variational
from dgmm._passes import (
    DEFAULT_READ_CHUNK_BYTES,
    RowData,
    as_blocks,
    blas_guard,
    block_pass,
    scheduler_for,
)
from dgmm._version import __version__

# Row chunk for in-memory NumPy input: big enough that per-task overhead is
# negligible, small enough that a block's (rows x K*d) work arrays stay modest.
NUMPY_CHUNK_BYTES = 4 * 2**20


def open_array(path: str | os.PathLike, array: str | None = None) -> zarr.Array:
    """Open a Zarr array read-only from a path or URL.

    Parameters
    ----------
    path : str or PathLike
        A local directory store or any URL zarr can open (``s3://...``).
    array : str, optional
        Name of the array inside the group at ``path``.
    """
    where = f"{path}" + (f" (array {array!r})" if array else "")
    recover_leftovers(path)  # a store a killed run was replacing is put back first
    if "://" not in str(path) and not Path(path).exists():
        raise ValueError(f"Zarr store not found: {path} does not exist")
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a bad store
        raise ValueError(f"Cannot open a Zarr array at {where}: {exc}") from exc
    if array is not None:
        if not isinstance(node, zarr.Group):
            raise ValueError(f"{path} is a Zarr array, not a group; do not pass an array name")
        if array not in node:
            names = sorted(node.array_keys())
            raise ValueError(f"Zarr group {path} has no array {array!r}; it has {names}")
        node = node[array]
    if isinstance(node, zarr.Group):
        names = sorted(node.array_keys())
        raise ValueError(f"{path} is a Zarr group; name one of its arrays: {names}")
    return node


def _check_dtype(dtype: np.dtype, where: str) -> None:
    # "Complex data not supported" is scikit-learn's wording, which its checks look for.
    if dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {where} has dtype {dtype}")
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{where} must hold numeric data (float32/float64 or integers); got dtype {dtype}"
        )


def _refuse_sparse(X, where: str) -> None:
    """Refuse sparse input (a SciPy sparse array, or a dask array of them) before any work.

    The message is scikit-learn's (``TypeError``, naming ``.toarray()``), which
    its estimator checks look for.
    """
    if sparse.issparse(X) or (isinstance(X, da.Array) and sparse.issparse(X._meta)):
        raise TypeError(
            f"Sparse data was passed for {where}, but dense data is required. "
            "Use '.toarray()' to convert to a dense numpy array (or "
            "'.map_blocks(lambda b: b.toarray())' for a dask array)."
        )


def _with_known_chunks(X: da.Array) -> da.Array:
    """``X`` with its chunk sizes computed if any is unknown (NaN).

    A boolean-mask selection such as ``X[~da.isnan(X).any(axis=1)]`` does not
    know how many rows each block keeps. Finding out evaluates every block
    once (reading the data and applying the mask) with the active scheduler.
    The user's array is left as it is: the sizes go onto a new array object
    with the same graph.
    """
    if not any(np.isnan(c) for chunks in X.chunks for c in chunks):
        return X
    return X.copy().compute_chunk_sizes()


def _without_empty_blocks(X: da.Array) -> da.Array:
    """``X`` without its row blocks of 0 rows (a mask can empty a block), if it has rows.

    Selecting the other blocks only renames them in the graph: nothing is
    copied or computed, and every pass sees blocks with rows.
    """
    keep = [i for i, rows in enumerate(X.chunks[0]) if rows]
    return X if len(keep) in (0, X.numblocks[0]) else X.blocks[keep]


def read_chunk_rows(array_chunks: tuple[int, ...], shape: tuple[int, ...], itemsize: int) -> int:
    """Rows per dask chunk when reading a stored array.

    A whole number of the store's row chunks (so no stored chunk is read by two
    tasks), about ``dgmm.read-chunk-bytes`` of data per task with every column
    in one chunk. Stores chunked along columns or in tiny chunks are thereby
    read in large, row-aligned pieces without a rechunk step in the graph.
    """
    target = int(dask.config.get("dgmm.read-chunk-bytes", DEFAULT_READ_CHUNK_BYTES))
    stored_rows = max(1, int(array_chunks[0]))
    row_bytes = max(1, int(shape[1]) * itemsize)
    multiple = max(1, target // (stored_rows * row_bytes))
    return int(min(max(1, shape[0]), stored_rows * multiple))


def as_dask_array(X, *, where: str = "X") -> tuple[da.Array, bool]:
    """Any supported input as a 2-D dask array chunked along rows only.

    Zarr input (an array or a path to one) is read in row blocks of
    :func:`read_chunk_rows`; a dask array keeps its row chunks. Other input
    goes through :func:`numpy.asarray`; an object array is converted to
    float64 (as scikit-learn does). Sparse and complex input is refused.

    A dask array with unknown chunk sizes (from a boolean mask, e.g.
    ``X[~da.isnan(X).any(axis=1)]``) has them computed here, which costs one
    pass over its blocks (see :func:`_with_known_chunks`); the input array
    itself is not modified. Call ``X.compute_chunk_sizes()`` once yourself
    to avoid that pass on every call. Row blocks left with 0 rows are
    dropped (see :func:`_without_empty_blocks`).

    Returns
    -------
    X : dask.array.Array
        Of shape (n_samples, n_features): known chunk sizes, no empty row
        block (unless it has no rows at all), one column chunk.
    lazy : bool
        Whether the input was lazy (dask, Zarr or a path), so outputs can
        follow the input's kind.
    """
    _refuse_sparse(X, where)
    if isinstance(X, (str, os.PathLike)):
        where = str(X)
        X = open_array(X)
    if isinstance(X, zarr.Array):
        where = f"Zarr array {X.store_path}" if where == "X" else where
        _check_dtype(X.dtype, where)
        _check_ndim(X.ndim, X.shape, where)
        rows = read_chunk_rows(X.chunks, X.shape, X.dtype.itemsize)
        check_chunks_present(X)
        chunks = (rows, X.shape[1])
        # dask's from_zarr, with a getter that names the chunk a failed read came from
        X = da.from_array(X, chunks, name=f"from-zarr-{dask.base.tokenize(X, chunks)}",
                          getitem=_read_rows)
        lazy = True
    elif isinstance(X, da.Array):
        X = _with_known_chunks(X.astype(np.float64) if X.dtype == object else X)
        X = _without_empty_blocks(X)
        lazy = True
    else:
        X = np.asarray(X)
        if X.dtype == object:  # e.g. a mixed-type DataFrame's values; raises if not numeric
            X = X.astype(np.float64)
        lazy = False
        _check_dtype(X.dtype, where)
        _check_ndim(X.ndim, X.shape, where)
        rows = max(1, NUMPY_CHUNK_BYTES // max(1, X.shape[1] * X.itemsize))
        X = da.from_array(X, chunks=(rows, -1))
    _check_dtype(X.dtype, where)
    _check_ndim(X.ndim, X.shape, where)
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return X, lazy


# Whether a chunk missing from a store (read as the fill value) stops the job
# (config ``dgmm.allow-missing-chunks``: true for stores sparse on purpose).
ALLOW_MISSING_CHUNKS = False


class DamagedStoreError(ValueError):
    """A chunk of a Zarr store is missing or cannot be decoded."""


def _describe_array(array: zarr.Array) -> str:
    root = getattr(array.store, "root", None)
    base = str(root) if root is not None else str(array.store)
    return f"{base}/{array.path}" if array.path else base


def _row_chunks(array: zarr.Array, start: int, stop: int):
    """``(chunk key, first row, last row)`` of every stored chunk holding rows ``start:stop``."""
    step = int(array.chunks[0])
    encode = getattr(array.metadata, "chunk_key_encoding", None)
    across = [-(-int(n) // int(c)) for n, c in zip(array.shape[1:], array.chunks[1:], strict=True)]
    for i in range(start // step, -(-stop // step)):
        for rest in np.ndindex(*across):
            coords = (i, *rest)
            key = (encode.encode_chunk_key(coords) if encode is not None
                   else ".".join(map(str, coords)))
            yield key, i * step, min((i + 1) * step, array.shape[0]) - 1


def _read_rows(array, index, asarray=True, lock=None):
    """dask's getter for a Zarr array, naming the array, the chunk and its rows on failure."""
    try:
        return da.core.getter(array, index, asarray=asarray, lock=lock)
    except Exception as exc:  # a codec, checksum or storage error: find the chunk
        rows = index[0] if isinstance(index, tuple) else index
        start, stop, _ = rows.indices(array.shape[0])
        for key, first, last in _row_chunks(array, start, stop):
            try:
                array[first:last + 1]
            except Exception as cause:  # that chunk is the one
                raise DamagedStoreError(
                    f"cannot read chunk {key} (rows {first}-{last}) of Zarr array "
                    f"{_describe_array(array)}: {str(cause).rstrip('.')}; the store is damaged "
                    "there: restore that chunk (or rewrite the store) and run again") from exc
        raise


def check_chunks_present(array: zarr.Array) -> None:
    """Refuse a Zarr array some of whose chunks are missing from its store.

    A missing chunk reads as the array's fill value, which a fit would take
    for data. Counting the stored chunks is one listing of the store; only
    when some are missing are they looked for (on a local store), to name
    the first. Stores that are sparse on purpose: set the dask config
    ``dgmm.allow-missing-chunks`` (``--allow-missing-chunks``).

    Raises
    ------
    DamagedStoreError
        Naming the first missing chunk's key and rows where they can be found.
    """
    if dask.config.get("dgmm.allow-missing-chunks", ALLOW_MISSING_CHUNKS):
        return
    try:
        stored = array.nchunks_initialized
    except Exception:  # a store that cannot list its keys: nothing to compare
        return
    if stored >= array.nchunks:
        return
    missing = f"{array.nchunks - stored} of its {array.nchunks} chunks are"
    root = getattr(array.store, "root", None)
    if root is not None:
        for key, first, last in _row_chunks(array, 0, array.shape[0]):
            if not (Path(root) / array.path / key).exists():
                missing = f"chunk {key} (rows {first}-{last}) is"
                break
    raise DamagedStoreError(
        f"Zarr array {_describe_array(array)}: {missing} missing from the store although its "
        f"metadata says data are there (they would read as the fill value {array.fill_value}); "
        "restore the store, or allow it with --allow-missing-chunks (dask config "
        "dgmm.allow-missing-chunks) if it is sparse on purpose")


def _as_dask_vector(v, n_rows: int, where: str) -> da.Array:
    """A per-row input (NumPy, dask, Zarr or a path to one) as a 1-D dask array of ``n_rows``."""
    _refuse_sparse(v, where)
    if isinstance(v, (str, os.PathLike)):
        v = open_array(v)
    if isinstance(v, zarr.Array):
        v = da.from_zarr(v)
    elif not isinstance(v, da.Array):
        v = da.from_array(np.asarray(v))
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1 or v.shape[0] != n_rows:
        raise ValueError(f"{where} must have one value per row of X, shape ({n_rows},); "
                         f"got shape {v.shape}")
    _check_dtype(v.dtype, where)
    return v


def row_data(
    n_rows: int,
    sample_weight=None,
    labels=None,
    n_components: int | None = None,
    scheduler=None,
) -> RowData | None:
    """Validate sample weights and partial labels, in one small pass over them.

    Parameters
    ----------
    n_rows : int
        Rows of X; both arrays must have one entry per row.
    sample_weight : array-like, dask array, zarr.Array or path, optional
        Non-negative finite weights, not all zero.
    labels : same kinds, optional
        Integer component index for rows whose component is known, -1 for
        the others; every index must be below ``n_components``.
    n_components : int, optional
        The (smallest) number of components the labels must fit.

    Returns
    -------
    RowData, or None when neither is given.

    Raises ``ValueError`` naming the first offending row before any data pass.
    """
    if sample_weight is None and labels is None:
        return None
    checks = {}
    w = lab = None
    if sample_weight is not None:
        w = _as_dask_vector(sample_weight, n_rows, "sample_weight").astype(np.float64)
        bad = ~da.isfinite(w) | (w < 0)
        checks.update(w_bad=bad.any(), w_first=da.argmax(bad), w_sum=w.sum())
    if labels is not None:
        lab = _as_dask_vector(labels, n_rows, "labels")
        if lab.dtype.kind == "f":
            checks["lab_fraction"] = da.argmax(lab != da.floor(lab))
            checks["lab_nonint"] = (lab != da.floor(lab)).any()
        lab = lab.astype(np.int64)
        high = np.iinfo(np.int64).max if n_components is None else n_components
        bad = (lab < -1) | (lab >= high)
        checks.update(l_bad=bad.any(), l_first=da.argmax(bad))
    names = list(checks)
    with blas_guard(scheduler):
        got = dict(zip(names, dask.compute(*checks.values(), scheduler=scheduler), strict=True))
    if got.get("w_bad"):
        i = int(got["w_first"])
        value = float(w[i].compute(scheduler=scheduler))
        raise ValueError(f"sample_weight must be finite and non-negative; row {i} has {value}")
    if w is not None and not got["w_sum"] > 0:
        raise ValueError("sample_weight must have a positive sum; every weight is zero")
    if got.get("lab_nonint"):
        i = int(got["lab_fraction"])
        raise ValueError(f"labels must be integers (a component index, or -1 for unknown); "
                         f"row {i} is not")
    if got.get("l_bad"):
        i = int(got["l_first"])
        value = int(lab[i].compute(scheduler=scheduler))
        allowed = "-1 or >= 0" if n_components is None else f"-1 .. {n_components - 1}"
        raise ValueError(f"labels must be a component index in {allowed} (-1: unknown); "
                         f"row {i} has {value}")
    return RowData(
        weight=w, label=lab,
        total_weight=float(got["w_sum"]) if w is not None else float(n_rows),
    )


def result_dtype(dtype) -> np.dtype:
    """Float dtype of what a model returns for data of ``dtype``.

    float32 data give float32 fitted attributes and per-row outputs; any other
    dtype (float64, integers, bool) gives float64, as in scikit-learn. The
    arithmetic is float64 throughout either way.
    """
    return np.dtype(np.float32) if np.dtype(dtype) == np.float32 else np.dtype(np.float64)


def _check_ndim(ndim: int, shape: tuple, where: str) -> None:
    # The phrases "Expected 2D array", "Reshape your data" and "0 sample(s)" /
    # "0 feature(s) (shape=...) while a minimum of 1 is required" are
    # scikit-learn's, which its estimator checks look for.
    if ndim != 2:
        advice = (" Reshape your data with X.reshape(-1, 1) if it has a single feature or "
                  "X.reshape(1, -1) if it is a single sample." if ndim == 1 else "")
        raise ValueError(
            f"{where} must be 2-D (n_samples, n_features): expected 2D array, got "
            f"{ndim}D array instead (shape {shape}).{advice}"
        )
    for axis, noun, what in ((0, "rows", "sample(s)"), (1, "features", "feature(s)")):
        if shape[axis] == 0:
            raise ValueError(f"{where} has 0 {noun}: found 0 {what} (shape={tuple(shape)}) "
                             "while a minimum of 1 is required.")


# --------------------------------------------------------------------------
# Output paths: never into an input, never over what dgmm did not write
# --------------------------------------------------------------------------

OUTPUT_KINDS = ("file", "store", "directory")
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
_WRITTEN_BY_DGMM = {
    "store": "a Zarr store written by dgmm",
    "directory": "a dgmm checkpoint directory",
}


def _local_target(path: str | os.PathLike, what: str) -> Path:
    if "://" in str(path):
        raise ValueError(
            f"{what} must be a local path (atomic rename is not available on {path}); "
            "write locally and upload the result"
        )
    target = Path(path)
    if not target.parent.is_dir():
        raise ValueError(f"Cannot write {target}: directory {target.parent} does not exist")
    return target


def _input_root(source) -> Path | None:
    """The real path of the local store (or file) an input is read from, if any.

    A path inside a Zarr hierarchy (``data.zarr/X``) stands for its whole
    store: the outermost enclosing Zarr node.
    """
    if isinstance(source, zarr.Array):
        root = getattr(source.store, "root", None)  # only a LocalStore has one
        if root is None:
            return None
        path = Path(root)
    elif isinstance(source, (str, os.PathLike)) and "://" not in str(source):
        path = Path(source)
    else:
        return None
    path = Path(os.path.realpath(path))
    while path.parent != path and any((path.parent / m).exists() for m in _ZARR_MARKERS):
        path = path.parent
    return path


def _written_by_dgmm(path: Path, kind: str) -> bool:
    """Whether the existing ``path`` is an output dgmm wrote, and so may replace."""
    if not path.is_dir() or path.is_symlink():
        return False
    if kind == "directory":
        if not any(path.iterdir()):
            return True  # an empty directory holds nothing to lose
        try:
            return json.loads((path / _MANIFEST).read_text()).get("format") == CHECKPOINT_FORMAT
        except (OSError, ValueError, AttributeError):
            return False
    try:
        return "dgmm_version" in zarr.open_group(str(path), mode="r").attrs
    except Exception:  # not a Zarr group at all: zarr raises several types
        return False


def _check_replaceable(target: Path, overwrite: bool, kind: str) -> None:
    if not (target.exists() or target.is_symlink()):
        return
    if kind == "file" and target.is_dir():
        raise IsADirectoryError(
            f"{target} is a directory; a model file is never written over a directory"
        )
    if not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    if kind != "file" and not _written_by_dgmm(target, kind):
        raise ValueError(
            f"{target} exists and is not {_WRITTEN_BY_DGMM[kind]}; dgmm replaces only "
            "outputs it wrote itself, so remove it yourself or choose another path"
        )


def check_output_path(
    out: str | os.PathLike,
    inputs=(),
    *,
    overwrite: bool,
    kind: str = "file",
) -> Path:
    """Check that writing ``out`` can neither destroy data nor fail late.

    Call it before any expensive work. What killed runs left next to ``out``
    is settled first (:func:`recover_leftovers`). The rules, in order:

    1. ``out`` is a local path whose directory exists.
    2. ``out`` is not, does not contain, and does not lie inside any local
       input (real paths are compared: symlinks and ``..`` are resolved; a
       path inside a Zarr hierarchy stands for its whole store), whatever
       ``overwrite`` says.
    3. An existing ``out`` is replaced only with ``overwrite``, and only if it
       is of the kind being written: a model file never replaces a directory;
       a store or a checkpoint directory replaces only a Zarr store dgmm
       wrote (its attributes carry ``dgmm_version``) or a dgmm checkpoint
       (or an empty directory).
    4. The directory of ``out`` is writable: a temporary file is created in
       it and removed again.

    Parameters
    ----------
    out : str or PathLike
        The path to be written.
    inputs : iterable
        What the job reads: paths, ``zarr.Array`` objects (their store root
        counts) or anything else (in-memory data, remote URLs: ignored).
    overwrite : bool
        Whether an existing output of the same kind may be replaced.
    kind : {'file', 'store', 'directory'}, default='file'
        A model file, a Zarr store, or a checkpoint directory.

    Returns
    -------
    Path
        ``out`` as a path.

    Raises
    ------
    ValueError
        Rules 1 to 3 (a remote or overlapping path, or an existing output
        dgmm did not write).
    FileExistsError
        ``out`` exists and ``overwrite`` is false.
    IsADirectoryError
        A model file would replace a directory.
    PermissionError
        The directory of ``out`` is not writable.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {list(OUTPUT_KINDS)}; got {kind!r}")
    target = _local_target(out, "out")
    real = Path(os.path.realpath(target))
    for source in inputs:
        root = _input_root(source)
        if root is None:
            continue
        if real == root:
            relation = "is"
        elif root in real.parents:
            relation = "lies inside"
        elif real in root.parents:
            relation = "contains"
        else:
            continue
        raise ValueError(f"{out} {relation} the input {source}; an output is never written "
                         "over or into what a job reads")
    recover_leftovers(target)
    _check_replaceable(target, overwrite, kind)
    try:  # a probe we create and remove ourselves, so a full job cannot fail at the end
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.probe-", dir=target.parent)
    except OSError as exc:
        raise PermissionError(f"Cannot write {out}: directory {target.parent} is not "
                              f"writable ({exc.strerror})") from exc
    os.close(fd)
    os.unlink(probe)
    return target


@contextlib.contextmanager
def _atomic_path(target: Path, overwrite: bool, kind: str):
    """Yield a temporary sibling path; on success move it to ``target``.

    On any exception the temporary is removed and ``target`` is untouched. An
    existing ``target`` is replaced only under the rules of
    :func:`check_output_path` (checked again here: the job may have run for
    hours since), and only after the new content is complete. A file is
    replaced by one atomic rename; a directory is first renamed aside.

    A journal file ``.<name>.dgmm-replace-<tag>`` naming this process exists
    from before the temporary is made until everything is done, so a run
    killed in any window leaves leftovers the next dgmm command touching
    ``target`` recognises and settles (:func:`recover_leftovers`): a
    temporary being written is removed; between the two renames of a
    directory, the complete new version is moved into place; an old version
    not yet removed is removed. A full disk raises one :class:`OSError`
    naming ``target`` and saying nothing was replaced.
    """
    recover_leftovers(target)
    tag = uuid.uuid4().hex[:12]
    tmp, old, journal = (target.with_name(f".{target.name}.{what}-{tag}")
                         for what in ("tmp", "old", _JOURNAL))
    try:
        try:
            _write_journal(journal)
            yield tmp
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _no_space(target, exc) from exc
            raise
        _check_replaceable(target, overwrite, kind)
        if target.is_dir() and not target.is_symlink():
            os.replace(target, old)
            os.replace(tmp, target)
            # Removing the old tree is safe: _check_replaceable just found it to be a
            # store or checkpoint dgmm wrote (or an empty directory).
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)  # a file or a symlink itself, never what a link points to
    finally:
        _remove_own(tmp)
        journal.unlink(missing_ok=True)


_JOURNAL = "dgmm-replace"
_TAG = re.compile(r"[0-9a-f]{12}")


class LeftoverWarning(UserWarning):
    """dgmm settled what an interrupted run left next to an output."""


def _no_space(target: Path, exc: OSError) -> OSError:
    """The error for a full disk: which output, and that nothing was replaced."""
    kept = " (the existing one is unchanged)" if target.exists() else ""
    error = OSError(exc.errno, f"no space left on the device while writing it; nothing was "
                               f"replaced{kept} and no temporary was left")
    error.filename = str(target)
    return error


def _write_journal(journal: Path) -> None:
    """Create the journal of a replace, naming this process (see :func:`_atomic_path`)."""
    fd = os.open(journal, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(_lock.owner()))


def recover_leftovers(target: str | os.PathLike) -> list[str]:
    """Settle what runs killed while replacing ``target`` left next to it.

    Only leftovers of dgmm's own making are touched: those named
    ``.<name>.tmp-<tag>`` and ``.<name>.old-<tag>`` next to a journal
    ``.<name>.dgmm-replace-<tag>`` whose run no longer runs (see
    :func:`dgmm._lock.alive`). A temporary whose writing did not finish is
    removed; if ``target`` is missing because the run was killed between the
    two renames of a directory, the complete new version (or else the old
    one) is moved into place; an old version left after the new one was in
    place is removed. Each settled replace gives one warning line
    (:class:`LeftoverWarning`).

    Returns
    -------
    list of str
        What was done, one sentence per settled replace.
    """
    target = Path(target)
    if "://" in str(target) or not target.parent.is_dir():
        return []
    done = []
    prefix = f".{target.name}.{_JOURNAL}-"
    for journal in sorted(target.parent.glob(f"{glob.escape(prefix)}*")):
        tag = journal.name[len(prefix):]
        if not _TAG.fullmatch(tag) or not _abandoned(journal):
            continue
        tmp, old = (target.with_name(f".{target.name}.{what}-{tag}") for what in ("tmp", "old"))
        if old.exists() and not (target.exists() or target.is_symlink()):
            restored = tmp if tmp.exists() else old
            os.replace(restored, target)
            what = "the new version" if restored == tmp else "the previous version"
            done.append(f"restored {target}: a run was killed while replacing it; {what} "
                        "is now in place")
        elif tmp.exists() or old.exists():
            done.append(f"removed the leftovers of a run killed while writing {target}; "
                        f"{target} is {'as it was' if target.exists() else 'still absent'}")
        for leftover in (tmp, old):
            if leftover.exists() or leftover.is_symlink():
                _remove_own(leftover)
        journal.unlink(missing_ok=True)
    for message in done:
        warnings.warn(message, LeftoverWarning, stacklevel=2)
    return done


def _abandoned(journal: Path) -> bool:
    """Whether the run that wrote ``journal`` is gone (an empty one: if it is not new)."""
    try:
        record = json.loads(journal.read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict):
        return not _lock.alive(record)
    try:  # killed between creating and writing it, or being written right now
        return time.time() - journal.stat().st_mtime > 5.0
    except FileNotFoundError:
        return False


def _remove_own(path: Path) -> None:
    """Remove a temporary that this process created (a file or a directory tree)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class Writers:
    """The tasks of one store write that are running in this process.

    When one task fails, Dask raises at once while other tasks may still be
    writing into the temporary store, or about to start. On an exception,
    leaving the ``with`` block stops tasks from starting to write and waits
    for the running ones, so the temporary store can then be removed for
    good. Pickling gives a fresh, independent instance.

    Tasks on other machines of a cluster are fenced off instead: with a
    ``fence`` (a file path inside the temporary store, created by
    :meth:`open`), a task writes only while that file exists, and a failure
    removes it first. Only a write already under way at that moment can then
    outlast the cleanup.
    """

    def __init__(self, timeout: float = 300.0, fence: Path | None = None):
        self.timeout = timeout
        self.fence = fence
        self._busy = 0
        self._cancelled = False
        self._cond = threading.Condition()

    def __getstate__(self):
        return {"timeout": self.timeout, "fence": self.fence}

    def __setstate__(self, state):
        self.__init__(state["timeout"], state.get("fence"))

    def open(self) -> None:
        """Let tasks write: create the fence (once its directory exists)."""
        if self.fence is not None:
            self.fence.touch()

    @contextlib.contextmanager
    def running(self):
        """Wrap one task's writes; raises if the write was already abandoned."""
        with self._cond:
            if self._cancelled or (self.fence is not None and not self.fence.exists()):
                raise RuntimeError("store write abandoned after an earlier failure")
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def __enter__(self) -> Writers:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.fence is not None:  # no task anywhere starts a write from now on
            self.fence.unlink(missing_ok=True)
        if exc_type is not None:
            with self._cond:
                self._cancelled = True
                self._cond.wait_for(lambda: self._busy == 0, self.timeout)


_FENCE = ".dgmm-writing"


# --------------------------------------------------------------------------
# Streamed predictions
# --------------------------------------------------------------------------


def _regular_rows(X: da.Array) -> da.Array:
    """``X`` with equal row chunks (the last may be shorter), as Zarr requires."""
    rows = X.chunks[0]
    if all(r == rows[0] for r in rows[:-1]) and rows[-1] <= rows[0]:
        return X
    return X.rechunk({0: max(rows)})


def _write_block(block, row_offset, index, params, arrays, whats, writers, threshold, missing):
    with writers.running():
        flag = threshold is not None
        computed = (*whats, "log_density") if flag and "log_density" not in whats else whats
        found = kernels.per_row_outputs(block, params, computed, row_offset, missing)
        outputs = dict(zip(computed, found, strict=True))
        if flag:
            outputs["outlier"] = outputs["log_density"] < threshold
        stop = row_offset + len(block)
        for name, array in arrays.items():
            array[row_offset:stop] = outputs[name]
    return len(block)


def write_predictions(
    model,
    source,
    out: str | os.PathLike,
    *,
    labels: bool = True,
    proba: bool = False,
    log_density: bool = False,
    overwrite: bool = False,
    dtype="float64",
    outlier_threshold: float | None = None,
) -> zarr.Group:
    """Stream per-row outputs of a fitted model into a Zarr group, chunk by chunk.

    Each input row block is read once, scored once, and its outputs are
    written into output chunks covering exactly its rows, so no two tasks
    write one chunk and memory stays bounded by the chunks in flight. Uses
    the active Dask scheduler (threads for in-memory input).

    The group is built under a temporary sibling name and renamed to ``out``
    only when complete: a failure part-way leaves nothing at ``out``, and an
    existing store at ``out`` is kept unless ``overwrite=True`` (it is then
    replaced only after the new one is complete).

    Parameters
    ----------
    model : GaussianMixture
        A fitted model.
    source : array-like, dask array, zarr.Array or str of shape (n_samples, n_features)
        The rows to score; a string is a path or URL to a Zarr array.
    out : str or PathLike
        Local path of the Zarr group to create.
    labels : bool, default=True
        Write ``labels`` (n_samples,), as :meth:`GaussianMixture.predict`, in
        the smallest unsigned integer dtype that holds ``n_components - 1``.
    proba : bool, default=False
        Write ``proba`` (n_samples, n_components), as ``predict_proba``.
    log_density : bool, default=False
        Write ``log_density`` (n_samples,), as ``score_samples``.
    overwrite : bool, default=False
        Replace an existing store at ``out`` that dgmm wrote (its attributes
        carry ``dgmm_version``); anything else there is never replaced.
    dtype : str or dtype, default='float64'
        Floating dtype of ``proba`` and ``log_density``.
    outlier_threshold : float, optional
        Also write ``outlier`` (n_samples,), bool: whether a row's float64
        log-density is below this threshold (as
        :class:`dgmm.outliers.GaussianMixtureOutlierDetector` flags with its
        ``threshold_``), in the same pass; its value is stored in the group's
        attribute ``outlier_threshold``.

    Returns
    -------
    zarr.Group
        The written group, opened read-only.

    Raises
    ------
    ValueError
        Invalid input or nothing requested; ``out`` is, contains or lies
        inside the store ``source`` is read from; ``out`` exists and is not a
        store dgmm wrote. All before anything is read or written.
    FileExistsError
        ``out`` exists and ``overwrite`` is false, before anything is written.
    PermissionError
        The directory of ``out`` is not writable, before anything is read.
    """
    wanted = (labels, proba, log_density)
    whats = tuple(name for name, w in zip(kernels.PER_ROW_OUTPUTS, wanted, strict=True) if w)
    if not whats and outlier_threshold is None:
        raise ValueError("Nothing to write: set at least one of labels, proba, log_density, "
                         "outlier_threshold")
    float_dtype = np.dtype(dtype)
    if float_dtype.kind != "f":
        raise ValueError(f"dtype must be a floating dtype; got {float_dtype}")
    target = check_output_path(out, [source], overwrite=overwrite, kind="store")
    X, lazy = as_dask_array(source)
    check_is_fitted(model, "means_")
    if X.shape[1] != model.n_features_in_:
        raise ValueError(
            f"{source if isinstance(source, (str, os.PathLike)) else 'source'} has "
            f"{X.shape[1]} features, but the model was fitted with {model.n_features_in_}"
        )
    X = _regular_rows(X)
    n, rows = X.shape[0], X.chunks[0][0]
    k = model.n_components
    specs = {
        "labels": ((n,), (rows,), np.min_scalar_type(k - 1)),
        "proba": ((n, k), (rows, k), float_dtype),
        "log_density": ((n,), (rows,), float_dtype),
        "outlier": ((n,), (rows,), np.dtype(bool)),
    }
    names = whats if outlier_threshold is None else (*whats, "outlier")
    scheduler = scheduler_for(lazy)
    with (_atomic_path(target, overwrite, "store") as tmp,
          Writers(fence=tmp / _FENCE) as writers):
        group = zarr.open_group(str(tmp), mode="w-")
        writers.open()
        group.attrs.update({"dgmm_version": _version(), "outputs": list(names)})
        if outlier_threshold is not None:
            group.attrs["outlier_threshold"] = float(outlier_threshold)
        arrays = {}
        for name in names:
            shape, chunks, out_dtype = specs[name]
            arrays[name] = group.create_array(name, shape=shape, chunks=chunks, dtype=out_dtype,
                                              compressors=checksummed())
        params = _e_step_params(model)
        with blas_guard(scheduler):
            missing = getattr(model, "missing", "error") == "marginalize"
            written = block_pass(as_blocks(X), _write_block, params, arrays, whats, writers,
                                 outlier_threshold, missing, scheduler=scheduler)
        if written != n:  # every row block must have reported its rows
            raise RuntimeError(f"wrote {written} of {n} rows to {tmp}")
    return zarr.open_group(str(target), mode="r")


def checksummed(compressors="auto") -> list:
    """The compressors of an array dgmm writes, followed by a CRC-32C of the compressed bytes.

    Damage to a stored chunk is then found when it is read, instead of
    decoding to wrong numbers. ``compressors``: ``'auto'`` (zarr's default,
    Zstandard), None (none) or codecs as :func:`zarr.create_array` takes them.
    """
    from zarr.codecs import Crc32cCodec, ZstdCodec

    if compressors == "auto":
        compressors = [ZstdCodec()]
    elif compressors is None:
        compressors = []
    elif not isinstance(compressors, (list, tuple)):
        compressors = [compressors]
    return [*compressors, Crc32cCodec()]


def _e_step_params(model) -> kernels.Params:
    """The parameters of a fitted mixture's E-step, from its attributes.

    A variational mixture (it has ``weight_concentration_``) scores rows with
    its effective parameters (:func:`dgmm._variational.params_of`).
    """
    if hasattr(model, "weight_concentration_"):
        return variational.params_of(
            model.covariance_type, model.weight_concentration_prior_type,
            model.weight_concentration_, model.mean_precision_, model.means_,
            model.degrees_of_freedom_, model.precisions_cholesky_)
    return kernels.Params(model.covariance_type, model.weights_, model.means_,
                          model.precisions_cholesky_)


def _version() -> str:
    return __version__


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> None:
    """Write a text file (a JSON report, ...) atomically: complete and synced, or absent.

    The rules of :func:`check_output_path` apply (``kind='file'``).
    """
    target = check_output_path(path, overwrite=overwrite, kind="file")
    with _atomic_path(target, overwrite, "file") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------
# Model files: NPZ (allow_pickle=False) with a JSON metadata entry
# --------------------------------------------------------------------------

MODEL_FORMAT = "dgmm-model"
MODEL_SCHEMA_VERSION = 2  # 1: one estimator; 2: also pipelines (``steps``)
_METADATA = "metadata.json"
_ZIP_MAGIC = b"PK\x03\x04"
_FITTED = "fitted/"
_PARAM = "params/"
_STEPS = "steps/"
_FITTED_JSON = "fitted_json"
# Fitted attributes that are records (dicts of JSON values), kept in the metadata.
RECORD_ATTRIBUTES = ("provenance_",)
_SCALARS = {"bool": (bool, np.bool_), "int": (int, np.int64), "float": (float, np.float64)}


def _encode_value(name: str, value) -> tuple[str, np.ndarray]:
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return "array", value
    if isinstance(value, np.ndarray) and value.ndim == 1 and all(
            isinstance(v, str) for v in value.tolist()):
        # e.g. feature_names_in_ (an object array, as scikit-learn's): a unicode array on disk
        return "strings", value.astype(np.str_)
    for kind, (py_type, np_type) in _SCALARS.items():  # bool before int: bool is an int
        if isinstance(value, (py_type, np_type)):
            return kind, np.asarray(value, dtype=np_type)
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return "list", np.asarray(value, dtype=np.float64 if any(
            isinstance(v, float) for v in value) else np.int64)
    if (isinstance(value, tuple) and value and all(
            isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in value)
            and len({v.shape for v in value}) == 1):
        # e.g. the (a, b) Beta parameters of a Dirichlet process, stacked
        return "tuple", np.stack(value)
    raise TypeError(
        f"Cannot save {name} of type {type(value).__name__}: model files "
        "hold numeric arrays, scalars, lists of numbers and arrays of str only"
    )


def _decode_value(kind: str, value: np.ndarray):
    if kind == "array":
        return value
    if kind == "strings":
        return value.astype(object)
    if kind == "list":
        return value.tolist()
    if kind == "tuple":
        return tuple(value)
    return _SCALARS[kind][0](value.item())


def _write_npz(target: Path, arrays: dict[str, np.ndarray], overwrite: bool = True) -> None:
    """Write an NPZ archive at ``target`` atomically (complete and synced, or absent)."""
    with _atomic_path(target, overwrite, "file") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())


@dataclass(frozen=True)
class SavedModel:
    """What a model file holds: plain data from which an estimator rebuilds itself.

    Attributes
    ----------
    estimator : str
        Class name of the estimator that wrote it ('Pipeline' for a pipeline).
    params : dict
        Hyper-parameters (``get_params(deep=False)``), arrays among them as ndarrays.
    fitted : dict
        Fitted attributes (names ending in ``_``).
    steps : tuple of (str, SavedModel)
        A pipeline's named steps, in order; empty for a single estimator.
    """

    estimator: str
    params: dict
    fitted: dict
    steps: tuple = ()

    @classmethod
    def of(cls, estimator) -> SavedModel:
        """The plain data of a fitted scikit-learn style estimator.

        Its class name, ``get_params(deep=False)`` and its public attributes
        ending in ``_`` (those set to None are left out).
        """
        fitted = {name: value for name, value in sorted(vars(estimator).items())
                  if name.endswith("_") and not name.startswith("_") and value is not None}
        return cls(type(estimator).__name__, estimator.get_params(deep=False), fitted)


def _encode_model(saved: SavedModel, prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    """The metadata entry of one estimator; its arrays go into ``arrays`` under ``prefix``."""
    plain, array_params = {}, []
    for name, value in saved.params.items():
        if isinstance(value, np.integer | np.floating | np.bool_):
            value = value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            plain[name] = value
        elif isinstance(value, (np.ndarray, list, tuple)):
            arrays[prefix + _PARAM + name] = np.asarray(value, dtype=np.float64)
            array_params.append(name)
        elif name == "random_state":
            warnings.warn(
                "random_state is a generator object; it is saved as None",
                UserWarning, stacklevel=4,
            )
            plain[name] = None
        else:
            raise TypeError(f"Cannot save hyper-parameter {name}={value!r} in a model file")
    kinds, records = {}, {}
    for name, value in saved.fitted.items():
        if name in RECORD_ATTRIBUTES:  # JSON in the metadata, not an array
            records[name] = _json_record(f"fitted attribute {name}", value)
            continue
        kinds[name], arrays[prefix + _FITTED + name] = _encode_value(
            f"fitted attribute {name}", value)
    entry = {
        "estimator": saved.estimator,
        "covariance_type": plain.get("covariance_type"),
        "params": plain,
        "array_params": array_params,
        "fitted": kinds,
    }
    if records:
        entry[_FITTED_JSON] = records
    return entry


def _json_record(name: str, value: dict) -> dict:
    """``value`` as it reads back from JSON, refused if JSON cannot hold it exactly."""
    if not isinstance(value, dict):
        raise TypeError(f"Cannot save {name} of type {type(value).__name__}: it must be a dict")
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"Cannot save {name}: model files hold records of JSON values only "
                        f"({exc})") from exc


def _write_model(target: Path, schema_version: int, body: dict, arrays: dict,
                 overwrite: bool) -> None:
    """Write ``arrays`` and the metadata (format, versions, then ``body``) as a model file."""
    head = {"format": MODEL_FORMAT, "schema_version": schema_version, "dgmm_version": _version()}
    arrays[_METADATA] = np.asarray(json.dumps({**head, **body}, allow_nan=False))
    _write_npz(target, arrays, overwrite)


def save_model(
    path: str | os.PathLike, estimator: str, params: dict, fitted: dict, *,
    overwrite: bool = True,
) -> None:
    """Write a model file at ``path`` without pickle, atomically.

    Format (schema version 1): an uncompressed NumPy ``.npz`` archive, loadable
    with ``np.load(path, allow_pickle=False)``, holding

    * ``metadata.json``: a 0-d unicode array with a JSON object ``{"format":
      "dgmm-model", "schema_version": 1, "dgmm_version", "estimator",
      "covariance_type", "params": {...}, "array_params": [...],
      "fitted": {name: kind}}``. ``params`` holds the JSON-representable
      hyper-parameters; ``array_params`` names those stored as arrays;
    * ``params/<name>``: array-valued hyper-parameters (e.g. ``means_init``);
    * ``fitted/<name>``: every fitted attribute with ``kind`` ``'array'``,
      ``'bool'``, ``'int'``, ``'float'`` (0-d arrays), ``'list'`` (1-d
      array of a list of numbers), ``'tuple'`` (equal-shape arrays, stacked)
      or ``'strings'`` (1-d unicode array of a 1-d array of str, read back
      with object dtype: ``feature_names_in_``). New estimator state is saved
      by adding such attributes; no schema change is needed;
    * fitted attributes that are records (dicts of JSON values; those named
      in ``RECORD_ATTRIBUTES``: a model's ``provenance_``, see
      :mod:`dgmm.provenance`) are kept in ``metadata.json`` itself, under
      ``"fitted_json": {name: record}`` (absent when there are none); dgmm
      versions that predate them read the file and ignore them.

    Every value round-trips bit for bit. A ``random_state`` given as a
    generator object is saved as ``None`` (with a warning): its state is not
    part of the model. A pipeline is written by :func:`save_pipeline`.

    Parameters
    ----------
    path : str or PathLike
        Local file path (no suffix is added). An existing file is replaced
        by an atomic rename once the new file is complete and synced; a
        directory is never replaced (see :func:`check_output_path`).
    estimator : str
        The estimator's class name.
    params : dict
        Its hyper-parameters (``get_params(deep=False)``).
    fitted : dict
        Its fitted attributes.
    overwrite : bool, default=True
        Whether an existing file may be replaced.

    Raises
    ------
    IsADirectoryError
        ``path`` is a directory.
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    """
    target = check_output_path(path, overwrite=overwrite, kind="file")
    arrays: dict[str, np.ndarray] = {}
    metadata = _encode_model(SavedModel(estimator, params, fitted), "", arrays)
    _write_model(target, 1, metadata, arrays, overwrite)


def save_pipeline(
    path: str | os.PathLike, steps: Sequence[tuple[str, SavedModel]], *, overwrite: bool = True,
) -> None:
    """Write a pipeline of estimators (e.g. scaler, PCA, mixture) as one model file.

    Format (schema version 2): as :func:`save_model`, with ``"estimator":
    "Pipeline"`` and, in place of the top-level ``params``/``fitted``, a
    ``"steps"`` list in ``metadata.json``: one object per step, ``{"name",
    "estimator", "covariance_type", "params", "array_params", "fitted"}``,
    whose arrays are stored under ``steps/<i>/params/<name>`` and
    ``steps/<i>/fitted/<name>``. Files of a single estimator keep schema
    version 1, so dgmm versions that predate pipelines still read them.

    Parameters
    ----------
    path : str or PathLike
        Local file path, replaced atomically as in :func:`save_model`.
    steps : sequence of (str, SavedModel)
        The named steps, in order.
    overwrite : bool, default=True
        Whether an existing file may be replaced.
    """
    target = check_output_path(path, overwrite=overwrite, kind="file")
    arrays: dict[str, np.ndarray] = {}
    entries = []
    for i, (name, saved) in enumerate(steps):
        entries.append({"name": name, **_encode_model(saved, f"{_STEPS}{i}/", arrays)})
    _write_model(target, 2, {"estimator": "Pipeline", "steps": entries}, arrays, overwrite)


def model_file_error(path, message: str) -> ValueError:
    """The error for a model file that cannot be used, naming the file."""
    return ValueError(f"Invalid dgmm model file {path}: {message}")


def _not_a_model(path, why: str) -> ValueError:
    return ValueError(f"{path} is not a dgmm model file ({why})")


def _read_member(npz, path, key: str) -> np.ndarray:
    if key not in npz.files:
        raise model_file_error(path, f"missing field {key!r}")
    try:
        return npz[key]
    except ValueError as exc:  # numpy's refusal of object arrays (its text names allow_pickle)
        message = f"field {key!r} is corrupt or holds Python objects, which dgmm never loads"
        raise model_file_error(path, message) from exc
    except Exception as exc:  # bad CRC, truncated member, ...
        raise model_file_error(path, f"field {key!r} is corrupt ({exc})") from exc


def _read_metadata(npz, path) -> dict:
    if _METADATA not in npz.files:
        raise _not_a_model(path, f"an NPZ archive without {_METADATA}")
    raw = _read_member(npz, path, _METADATA)
    try:
        metadata = json.loads(str(raw[()]))
    except (ValueError, TypeError) as exc:
        raise model_file_error(path, f"field {_METADATA!r} is not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != MODEL_FORMAT:
        raise _not_a_model(path, f"its {_METADATA} does not describe a {MODEL_FORMAT} file")
    version = metadata.get("schema_version")
    if not isinstance(version, int) or not 1 <= version <= MODEL_SCHEMA_VERSION:
        raise model_file_error(
            path, f"schema_version {version!r} is not supported (this dgmm reads "
            f"1..{MODEL_SCHEMA_VERSION}; upgrade dgmm)"
        )
    entries = metadata.get("steps") if "steps" in metadata else [metadata]
    if not isinstance(entries, list) or not entries:
        raise model_file_error(path, "metadata field 'steps' is missing or malformed")
    step_keys = (("name", str),) if "steps" in metadata else ()
    for entry in entries:
        for key, kind in (("params", dict), ("array_params", list), ("fitted", dict),
                          ("estimator", str), *step_keys):
            if not isinstance(entry, dict) or not isinstance(entry.get(key), kind):
                raise model_file_error(path, f"metadata field {key!r} is missing or malformed")
    return metadata


def _open_npz(path) -> np.lib.npyio.NpzFile:
    with open(path, "rb") as f:
        # Anything but a ZIP archive (text, an image, a pickle, a .npy) is refused here:
        # np.load's own message for it would suggest loading pickles.
        if f.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            raise _not_a_model(path, "it is not an NPZ archive")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # BadZipFile, EOFError, OSError
        message = f"not a readable NPZ archive; truncated or corrupt ({exc})"
        raise model_file_error(path, message) from exc
    return npz


def _read_fitted(npz, path, kinds: dict, prefix: str = "") -> dict:
    fitted = {}
    for name, kind in kinds.items():
        value = _read_member(npz, path, prefix + _FITTED + name)
        arrays = ("array", "list", "tuple")
        strings = kind == "strings" and value.dtype.kind == "U" and value.ndim == 1
        if not strings and (kind not in (*arrays, *_SCALARS) or value.dtype.kind not in "biuf"
                            or (kind not in arrays and value.ndim != 0)):
            raise model_file_error(path, f"field {name!r} has unexpected kind {kind!r}")
        fitted[name] = _decode_value(kind, value)
    return fitted


def read_model(path: str | os.PathLike) -> SavedModel:
    """Read a model file written by :func:`save_model` or :func:`save_pipeline`.

    Never unpickles. The estimator (or pipeline) rebuilds itself from the
    result (:func:`dgmm.load`); a pipeline's steps are in ``steps``.

    Raises
    ------
    ValueError
        The file does not exist, is not a model file, is truncated or
        corrupt, or has a missing or unexpected field; the message names the
        file and the field.
    """
    path = Path(path)
    recover_leftovers(path)
    if path.is_dir():
        raise _not_a_model(path, "it is a directory")
    if not path.is_file():
        raise ValueError(f"Model file not found: {path}")
    with _open_npz(path) as npz:
        metadata = _read_metadata(npz, path)
        expected = {_METADATA}
        if "steps" in metadata:
            steps = tuple(
                (entry["name"], _decode_model(npz, path, entry, f"{_STEPS}{i}/", expected))
                for i, entry in enumerate(metadata["steps"])
            )
            saved = SavedModel("Pipeline", {}, {}, steps)
        else:
            saved = _decode_model(npz, path, metadata, "", expected)
        extra = sorted(set(npz.files) - expected)
        if extra:
            raise model_file_error(path, f"unexpected field(s) {extra}")
    return saved


def _decode_model(npz, path, entry: dict, prefix: str, expected: set) -> SavedModel:
    """One estimator's entry of a model file; the fields it names are added to ``expected``."""
    params = dict(entry["params"])
    for name in entry["array_params"]:
        params[name] = _read_member(npz, path, prefix + _PARAM + str(name))
    fitted = _read_fitted(npz, path, entry["fitted"], prefix)
    records = entry.get(_FITTED_JSON, {})
    if not isinstance(records, dict) or not all(isinstance(r, dict) for r in records.values()):
        raise model_file_error(path, f"metadata field {_FITTED_JSON!r} is malformed")
    fitted.update(records)
    expected |= {prefix + _PARAM + str(n) for n in entry["array_params"]}
    expected |= {prefix + _FITTED + n for n in entry["fitted"]}
    return SavedModel(entry["estimator"], params, fitted)


# --------------------------------------------------------------------------
# Checkpoints: a directory with the runs of a fit (plain arrays) and a manifest
# --------------------------------------------------------------------------

CHECKPOINT_FORMAT = "dgmm-checkpoint"
_MANIFEST = "checkpoint.json"
_RUNS = "runs.npz"


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint written by :func:`write_checkpoint`."""
    return (Path(directory) / _MANIFEST).is_file()


def write_checkpoint(directory: str | os.PathLike, records: list[dict], manifest: dict) -> None:
    """Atomically replace the checkpoint in ``directory``.

    ``records`` holds the state of every run as plain values (arrays,
    numbers, lists of numbers); they are stored in ``runs.npz`` (no pickle)
    next to ``checkpoint.json``, which holds ``manifest`` (what a resume must
    match, such as the data fingerprint and settings). The whole directory is
    built under a temporary name and swapped in, so a kill at any moment
    leaves the previous checkpoint or the new one, never a mix.
    """
    target = check_output_path(directory, overwrite=True, kind="directory")
    arrays, kinds = {}, []
    for i, record in enumerate(records):
        entry = {}
        for name, value in record.items():
            entry[name], arrays[f"run-{i}/{name}"] = _encode_value(f"run field {name}", value)
        kinds.append(entry)
    with _atomic_path(target, True, "directory") as tmp:
        tmp.mkdir()
        _write_npz(tmp / _RUNS, arrays)
        body = {"format": CHECKPOINT_FORMAT, "runs": kinds, **manifest}
        (tmp / _MANIFEST).write_text(json.dumps(body, allow_nan=False, sort_keys=True))


def checkpoint_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of the checkpoint in ``directory`` (what :func:`write_checkpoint` was given).

    Raises
    ------
    ValueError
        It is unreadable or not a dgmm checkpoint.
    """
    directory = Path(directory)
    try:
        body = json.loads((directory / _MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"Unreadable checkpoint {directory}: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != CHECKPOINT_FORMAT or not isinstance(
            body.get("runs"), list):
        raise ValueError(f"{directory} does not hold a dgmm checkpoint")
    return body


def read_checkpoint(directory: str | os.PathLike, manifest: dict) -> list[dict]:
    """The run records of a checkpoint, after checking it matches ``manifest``.

    Raises
    ------
    ValueError
        The checkpoint is unreadable, or was made for other data or settings;
        the message names the directory and the first field that differs.
    """
    directory = Path(directory)
    body = checkpoint_manifest(directory)
    for key, expected in manifest.items():
        if body.get(key) != json.loads(json.dumps(expected)):
            raise ValueError(
                f"Checkpoint {directory} was made for different {key}: it has "
                f"{body.get(key)!r}, this fit has {expected!r}. Remove that checkpoint "
                "or checkpoint this fit in another directory."
            )
    path = directory / _RUNS
    with _open_npz(path) as npz:
        return [
            {name: _decode_value(kind, _read_member(npz, path, f"run-{i}/{name}"))
             for name, kind in kinds.items()}
            for i, kinds in enumerate(body["runs"])
        ]
