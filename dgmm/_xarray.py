"""xarray in, xarray out: gridded and labelled data as rows, and per-row outputs back on the grid.

Needs xarray (``pip install "dgmm[xarray]"``), imported only when xarray
input arrives (an object of xarray can only exist once xarray is imported).

The features of a point are the variables of a ``Dataset`` (optionally a
chosen list) or the values along one dimension of a ``DataArray`` (the
feature dimension); every other dimension is a sample dimension. Points
become rows **block by block**: each storage chunk of the (sample dims,
features) array is reshaped into a row block on its own
(:func:`dask.array.reshape_blockwise`), so no chunking of the input, along
time, space or both, costs a rechunk. Rows are therefore in block-major
order, not in NumPy's C order; outputs are reshaped back block by block, so
callers never see that order.

Points that are NaN in every feature (land, clouds, fill values) keep their
rows, so chunk sizes stay known: their values are filled with 0 and they get
sample weight 0 in a fit (a zero weight removes a row from the statistics,
the initial sample and the lower bound), and NaN (-1 for labels) in outputs.
Points with some features missing are left as they are, for the estimator's
``missing=`` policy.

Storage: this module hands plain dask arrays to the estimator's public
methods and never imports an estimator.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from dgmm import io
from dgmm._passes import blas_guard, scheduler_for
from dgmm._version import __version__

COMPONENT_DIM = "component"


def is_xarray(obj) -> bool:
    """Whether ``obj`` is an xarray ``DataArray`` or ``Dataset`` (never imports xarray)."""
    xr = sys.modules.get("xarray")
    return xr is not None and isinstance(obj, (xr.DataArray, xr.Dataset))


def _xr():
    try:
        import xarray
    except ImportError:
        raise ImportError('xarray input needs xarray: pip install "dgmm[xarray]"') from None
    return xarray


# --------------------------------------------------------------------------
# Points as rows, and back
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """The points of an xarray object as rows of a 2-D dask array, and the way back.

    Attributes
    ----------
    X : dask array of shape (n_points, n_features)
        One row per point, block-major (see the module docstring); points
        with no observed feature are filled with 0.
    valid : dask array of bool, shape (n_points,)
        Whether a point has at least one observed feature; row chunks as ``X``.
    dims : tuple of str
        The sample dimensions, in the order of the outputs.
    shape, chunks : tuple
        Their sizes and dask chunks (of the rows' source blocks).
    coords : dict
        Coordinates that lie on sample dimensions only, for the outputs.
    feature_names : tuple of str, optional
        The variable names or feature coordinate values, when all are strings.
    lazy : bool
        Whether the input was dask-backed (outputs then stay lazy).
    """

    X: da.Array
    valid: da.Array
    dims: tuple
    shape: tuple
    chunks: tuple
    coords: dict
    feature_names: tuple | None
    lazy: bool

    @property
    def scheduler(self):
        return scheduler_for(self.lazy)

    def per_point(self, values, what: str) -> da.Array:
        """A per-point DataArray (``sample_weight``, ``labels``) as a 1-D array aligned with rows.

        It is broadcast to the sample dimensions (a weight per latitude is
        fine) and cut into the rows' blocks.
        """
        xr = _xr()
        if not isinstance(values, xr.DataArray):
            raise TypeError(f"with xarray X, pass {what} as an xarray.DataArray on its sample "
                            f"dimensions {list(self.dims)} (or a subset of them); got "
                            f"{type(values).__name__}")
        extra = [d for d in values.dims if d not in self.dims]
        if extra:
            raise ValueError(f"{what} has dimension(s) {extra} that X's points do not have "
                             f"(sample dimensions {list(self.dims)})")
        template = xr.DataArray(da.empty(self.shape, chunks=self.chunks, dtype=bool),
                                dims=self.dims, coords=self.coords)
        full = values.broadcast_like(template).transpose(*self.dims)
        if full.shape != self.shape:
            raise ValueError(f"{what} has shape {full.shape} on {list(self.dims)} after "
                             f"alignment with X; X's points have shape {self.shape}")
        data = (full.data.rechunk(self.chunks) if isinstance(full.data, da.Array)
                else da.from_array(np.asarray(full.data), chunks=self.chunks))
        return da.reshape_blockwise(data, (math.prod(self.shape),))

    def point(self, row: int) -> dict:
        """The sample-dimension index of a row (rows are block-major), as ``{dim: index}``."""
        ends = np.cumsum(self.X.chunks[0])
        block = int(np.searchsorted(ends, row, side="right"))
        within = row - (int(ends[block - 1]) if block else 0)
        grid_block = np.unravel_index(block, tuple(len(c) for c in self.chunks))
        sizes = [c[b] for c, b in zip(self.chunks, grid_block, strict=True)]
        local = np.unravel_index(within, sizes)
        starts = [sum(c[:b]) for c, b in zip(self.chunks, grid_block, strict=True)]
        return {dim: int(s + i) for dim, s, i in zip(self.dims, starts, local, strict=True)}

    def weight(self, sample_weight=None) -> da.Array:
        """Row weights: 0 for points with no observed feature, else 1 or ``sample_weight``."""
        if sample_weight is None:
            return self.valid.astype(np.float64)
        w = self.per_point(sample_weight, "sample_weight").astype(np.float64)
        return da.where(self.valid, w, 0.0)

    def labels(self, labels) -> da.Array:
        """Known components per row, -1 for points with no observed feature."""
        lab = self.per_point(labels, "labels")
        return da.where(self.valid, lab, -1)

    def unstack(self, rows, name: str, fill, component: int | None = None):
        """Per-row outputs (1-D, or 2-D with ``component`` columns) as a DataArray on the grid.

        Points with no observed feature get ``fill``. Lazy for lazy input,
        computed otherwise.
        """
        xr = _xr()
        rows = rows if isinstance(rows, da.Array) else da.from_array(rows, chunks=self.X.chunks[0])
        dims, coords = self.dims, dict(self.coords)
        if component is None:
            masked = da.where(self.valid, rows, fill)
            out = da.reshape_blockwise(masked, self.shape, chunks=self.chunks)
        else:
            masked = da.where(self.valid[:, None], rows, fill)
            out = da.reshape_blockwise(masked, (*self.shape, component),
                                       chunks=(*self.chunks, (component,)))
            dims, coords[COMPONENT_DIM] = (*dims, COMPONENT_DIM), np.arange(component)
        if not self.lazy:
            with blas_guard("threads"):
                out = out.compute(scheduler="threads")
        return xr.DataArray(out, dims=dims, coords=coords, name=name)


def to_grid(obj, *, features: Sequence[str] | None = None, feature_dim: str | None = None,
            sample_dims: Sequence[str] | None = None) -> Grid:
    """The points of an xarray object as rows (see :class:`Grid`).

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        NumPy- or dask-backed.
    features : sequence of str, optional
        A Dataset's variables to use, in this order (default: all of them);
        for a DataArray, values of the feature coordinate to select.
    feature_dim : str, optional
        A DataArray's feature dimension (default: the one whose coordinate
        holds every name in ``features``, else the last dimension). Not for a Dataset.
    sample_dims : sequence of str, optional
        The sample dimensions, in the order the outputs get (default: the
        data's own order); every feature must have exactly these.

    Raises
    ------
    ValueError
        A named variable, feature or dimension does not exist, or the
        features do not share the sample dimensions; the message names it.
    """
    xr = _xr()
    if isinstance(obj, xr.Dataset):
        if feature_dim is not None:
            raise ValueError("feature_dim is for a DataArray; a Dataset's features are its "
                             "data variables (choose them with features=)")
        names = list(obj.data_vars) if features is None else [str(f) for f in features]
        absent = [n for n in names if n not in obj.data_vars]
        if absent:
            raise ValueError(f"the Dataset has no variable(s) {absent} among its features; "
                             f"it has {list(map(str, obj.data_vars))}")
        if not names:
            raise ValueError("the Dataset has no data variables to use as features")
        arrays = [obj[n] for n in names]
        dims = tuple(sample_dims) if sample_dims is not None else arrays[0].dims
        for a in arrays:
            if set(a.dims) != set(dims) or len(a.dims) != len(dims):
                raise ValueError(f"variable {a.name!r} has dimensions {list(a.dims)}; every "
                                 f"feature must have the sample dimensions {list(dims)}")
        datas = [a.transpose(*dims).data for a in arrays]
        source = obj
    elif isinstance(obj, xr.DataArray):
        fdim = _feature_dim(obj, feature_dim, features)
        if features is not None:
            values = [str(v) for v in obj[fdim].values] if fdim in obj.coords else []
            absent = [str(f) for f in features if str(f) not in values]
            if absent:
                raise ValueError(f"feature(s) {absent} are not in the {fdim!r} coordinate "
                                 f"of X; it has {values}")
            obj = obj.sel({fdim: list(features)})
        rest = tuple(d for d in obj.dims if d != fdim)
        dims = tuple(sample_dims) if sample_dims is not None else rest
        if set(dims) != set(rest) or len(dims) != len(rest):
            raise ValueError(f"sample_dims {list(dims)} must be every dimension of X but the "
                             f"feature dimension {fdim!r}: {list(rest)}")
        names = obj[fdim].values.tolist() if fdim in obj.coords else []
        datas = [obj.transpose(*dims, fdim).data]
        source = obj.drop_vars(fdim, errors="ignore")
    else:
        raise TypeError(f"expected an xarray DataArray or Dataset; got {type(obj).__name__}")
    if not dims:
        raise ValueError("X has no sample dimension: every point needs at least one")
    lazy = any(isinstance(d, da.Array) for d in datas)
    stacked = _stack_features(datas, from_dataset=isinstance(obj, xr.Dataset))
    shape, chunks, d = stacked.shape[:-1], stacked.chunks[:-1], stacked.shape[-1]
    X = da.reshape_blockwise(stacked, (math.prod(shape), d))
    if X.dtype.kind == "f":
        valid = ~da.isnan(X).all(axis=1)
        X = da.where(valid[:, None], X, X.dtype.type(0))
    else:
        valid = da.ones(X.shape[0], chunks=X.chunks[0], dtype=bool)
    coords = {k: v.variable for k, v in source.coords.items() if set(v.dims) <= set(dims)}
    names = tuple(names) if names and all(isinstance(n, str) for n in names) else None
    return Grid(X, valid, dims, shape, chunks, coords, names, lazy)


def _feature_dim(obj, feature_dim: str | None, features) -> str:
    """A DataArray's feature dimension: given, found by its coordinate's values, or the last."""
    if feature_dim is not None:
        if feature_dim not in obj.dims:
            raise ValueError(f"feature_dim {feature_dim!r} is not a dimension of X; it has "
                             f"{list(obj.dims)}")
        return feature_dim
    if features is not None:
        wanted = {str(f) for f in features}
        for dim in obj.dims:
            if dim in obj.coords and wanted <= {str(v) for v in obj[dim].values}:
                return dim
    return obj.dims[-1]


def _stack_features(datas: list, from_dataset: bool) -> da.Array:
    """The features as the last axis of one dask array, chunked as the data, one feature chunk."""
    lazy = [x for x in datas if isinstance(x, da.Array)]
    if lazy:  # NumPy-backed variables beside dask ones take the dask chunks
        chunks = lazy[0].chunks
    else:  # blocks of about io.NUMPY_CHUNK_BYTES along the first dimension
        first = datas[0]
        per_slice = math.prod(first.shape[1:]) * first.dtype.itemsize * len(datas)
        chunks = (max(1, io.NUMPY_CHUNK_BYTES // max(1, per_slice)), *(-1,) * (first.ndim - 1))
    datas = [x if isinstance(x, da.Array) else da.from_array(np.asarray(x), chunks=chunks)
             for x in datas]
    if not from_dataset:
        (x,) = datas
        return x if x.numblocks[-1] == 1 else x.rechunk({x.ndim - 1: -1})
    # Variables chunked alike (the usual case) are stacked block by block, with no rechunk.
    datas = [x if x.chunks == datas[0].chunks else x.rechunk(datas[0].chunks) for x in datas]
    dtype = np.result_type(*[x.dtype for x in datas])
    return da.map_blocks(_stack_block, *datas, dtype=dtype, new_axis=datas[0].ndim,
                         chunks=(*datas[0].chunks, (len(datas),)))


def _stack_block(*blocks: np.ndarray) -> np.ndarray:
    return np.stack(blocks, axis=-1)


# --------------------------------------------------------------------------
# What the estimators delegate to
# --------------------------------------------------------------------------


def fitted_names(estimator) -> tuple | None:
    """The feature names an estimator was fitted with, if any."""
    names = getattr(estimator, "feature_names_in_", None)
    return None if names is None else tuple(str(n) for n in names)


def fit(estimator, X, *, sample_weight=None, labels=None, features=None, feature_dim=None,
        sample_dims=None, **kwargs):
    """Fit ``estimator`` on the points of X; rows with no observed feature weigh 0.

    The weights are computed once and kept in the scheduler's memory for the
    fit (a byte per point without ``sample_weight``: ``1 / (8 n_features)``
    of the float64 data), so each EM pass reads the data once. Sets
    ``feature_names_in_`` when the names are strings.
    """
    grid = to_grid(X, features=features, feature_dim=feature_dim, sample_dims=sample_dims)
    keep = grid.valid if sample_weight is None else grid.weight(sample_weight)
    with blas_guard(grid.scheduler):
        keep = keep.persist(scheduler=grid.scheduler)
    extra = {} if labels is None else {"labels": grid.labels(labels)}
    with _rows_as_points(grid):
        estimator.fit(grid.X, sample_weight=keep.astype(np.float64), **extra, **kwargs)
    if grid.feature_names is not None:
        estimator.feature_names_in_ = np.asarray(grid.feature_names, dtype=object)
    return estimator


@contextlib.contextmanager
def _rows_as_points(grid: Grid):
    """Errors that name a row (a point missing some features) name the point too."""
    try:
        yield
    except ValueError as exc:
        found = re.search(r"\brow (\d+)", str(exc))
        if found is None:
            raise
        index = grid.point(int(found.group(1)))
        raise ValueError(f"{exc} Row {found.group(1)} is the point {index} (positions on the "
                         "sample dimensions).") from None


def check_names(estimator, grid: Grid) -> None:
    """Refuse X whose feature names differ from those the estimator was fitted with."""
    expected = fitted_names(estimator)
    if expected is not None and grid.feature_names != expected:
        raise ValueError(f"X has features {list(grid.feature_names or ())}, but "
                         f"{type(estimator).__name__} was fitted with {list(expected)}")


def _grid_for(estimator, X) -> Grid:
    """X's points with the fitted features, selected and ordered by name."""
    grid = to_grid(X, features=fitted_names(estimator))
    check_names(estimator, grid)
    return grid


def per_row(estimator, X, method: str, name: str, fill, component: int | None = None):
    """``estimator.<method>`` of X's points as a DataArray on X's sample dimensions."""
    grid = _grid_for(estimator, X)
    with _rows_as_points(grid):
        rows = getattr(estimator, method)(grid.X)
        return grid.unstack(rows, name, fill, component)


def mean_score(estimator, X, method: str, sample_weight=None) -> float:
    """``score``, ``bic`` or ``aic`` over the points with an observed feature."""
    grid = _grid_for(estimator, X)
    with _rows_as_points(grid):
        return getattr(estimator, method)(grid.X, sample_weight=grid.weight(sample_weight))


# --------------------------------------------------------------------------
# Zarr groups written by xarray
# --------------------------------------------------------------------------


def open_dataset(store: str):
    """A Zarr group written by xarray, lazily, in read chunks of whole storage chunks.

    Dask chunks are multiples of the stored ones of about
    ``dgmm.read-chunk-bytes`` (no stored chunk is read by two tasks).
    """
    xr = _xr()
    size = int(dask.config.get("dgmm.read-chunk-bytes", io.DEFAULT_READ_CHUNK_BYTES))
    with dask.config.set({"array.chunk-size": size}), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a store without consolidated metadata
        return xr.open_zarr(store, chunks="auto")


def write_dataset(ds, out, inputs=(), *, overwrite: bool = False) -> None:
    """Write a Dataset as an xarray-readable Zarr group at ``out``, atomically.

    The rules of :func:`dgmm.io.check_output_path` apply (never into an
    input, replace only a store dgmm wrote); the group carries
    ``dgmm_version`` and consolidated metadata, so ``xr.open_zarr(out)``
    opens it directly.
    """
    target = io.check_output_path(out, inputs, overwrite=overwrite, kind="store")
    ds = ds.assign_attrs(dgmm_version=__version__)
    # Zarr needs equal chunks but the last: merge ragged dask chunks (rare) to the largest.
    ragged = {dim: max(c) for dim, c in ds.chunks.items()
              if len(set(c[:-1])) > 1 or c[-1] > c[0]}
    if ragged:
        ds = ds.chunk(ragged)
    lazy = any(isinstance(v.data, da.Array) for v in ds.variables.values())
    scheduler = scheduler_for(lazy)
    with io._atomic_path(target, overwrite, "store") as tmp, warnings.catch_warnings():
        # Zarr 3 warns that consolidated metadata is not in its spec; xarray reads it.
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata")
        write = ds.to_zarr(str(tmp), mode="w-", consolidated=True, compute=False)
        with blas_guard(scheduler):
            write.compute(scheduler=scheduler)
