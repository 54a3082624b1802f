"""Storage: reading Zarr arrays and turning any supported input into a dask array."""

from __future__ import annotations

import os
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

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
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{where} must hold numeric data (float32/float64 or integers); got dtype {dtype}"
        )


def as_dask_array(X, *, where: str = "X") -> tuple[da.Array, bool]:
    """Any supported input as a 2-D dask array chunked along rows only.

    Returns the array and whether the input was lazy (dask, Zarr or a path),
    so outputs can follow the input's kind.
    """
    if isinstance(X, (str, os.PathLike)):
        where = str(X)
        X = open_array(X)
    if isinstance(X, zarr.Array):
        _check_dtype(X.dtype, where)
        _check_ndim(X.ndim, X.shape, where)
        X = da.from_zarr(X)
        lazy = True
    elif isinstance(X, da.Array):
        lazy = True
    else:
        X = np.asarray(X)
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


def _check_ndim(ndim: int, shape: tuple, where: str) -> None:
    if ndim != 2:
        raise ValueError(
            f"{where} must be 2-D (n_samples, n_features); got {ndim}-D shape {shape}. "
            "Reshape 1-D data with X.reshape(-1, 1)."
        )
    if shape[0] == 0:
        raise ValueError(f"{where} has 0 rows; at least one sample is required")
    if shape[1] == 0:
        raise ValueError(f"{where} has 0 features; at least one column is required")
