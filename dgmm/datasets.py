"""Synthetic Gaussian mixtures, in memory or written to a Zarr store of any size.

Both generators draw the true parameters with :func:`make_mixture_params` and
the rows chunk by chunk, each chunk from its own RNG seeded by ``(seed,
chunk index)``: a store can be written in parallel and in bounded memory, and
``make_mixture(...)`` returns exactly the rows ``make_mixture_zarr(...)``
stores for the same arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import dask
import numpy as np
import zarr

from dgmm import _kernels as kernels
from dgmm._covariance import COVARIANCE, COVARIANCE_TYPES
from dgmm.io import _FENCE, Writers, _atomic_path, _version, check_output_path, checksummed

# Rows per generated chunk when none is given: about this many bytes each.
DEFAULT_CHUNK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class MixtureParams:
    """True parameters of a synthetic mixture.

    Attributes
    ----------
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    weights : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, n_features)
    covariances : ndarray
        Shape as ``GaussianMixture.covariances_`` for ``covariance_type``.
    """

    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    def as_init(self) -> dict:
        """``weights_init``, ``means_init`` and ``precisions_init`` for GaussianMixture."""
        prec_chol = kernels.precision_cholesky(self.covariances, self.covariance_type)
        return {
            "weights_init": self.weights,
            "means_init": self.means,
            "precisions_init": kernels.precisions_from_cholesky(prec_chol, self.covariance_type),
        }

    def _full_cholesky(self) -> np.ndarray:
        """Lower Cholesky factor of every component's covariance, (K, d, d)."""
        k, d = self.means.shape
        dense = COVARIANCE[self.covariance_type].dense(self.covariances, k, d)
        return np.linalg.cholesky(dense)


def make_mixture_params(
    n_components: int,
    n_features: int,
    *,
    covariance_type: str = "full",
    separation: float = 3.0,
    seed: int = 0,
) -> MixtureParams:
    """Draw the parameters of a random mixture.

    Weights are uniform in [0.5, 1.5] then normalised; means are
    ``separation`` times standard normal vectors; covariances have
    eigenvalues of order 1 (full and tied: ``0.5 I + A A^T / 2`` with
    ``A`` standard normal scaled by ``1/sqrt(d)``; diag and spherical:
    variances uniform in [0.5, 1.5]).
    """
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {list(COVARIANCE_TYPES)}; got {covariance_type!r}"
        )
    k, d = n_components, n_features
    rng = np.random.default_rng([seed, 2**32 - 1])  # apart from the chunk streams [seed, i]
    weights = rng.uniform(0.5, 1.5, k)
    weights /= weights.sum()
    means = separation * rng.standard_normal((k, d))
    covariances = COVARIANCE[covariance_type].random(rng, k, d)
    return MixtureParams(covariance_type, weights, means, covariances)


def _chunk(params: MixtureParams, chol: np.ndarray, seed: int, index: int, n: int, dtype):
    """Rows and labels of chunk ``index`` (``n`` rows), from its own RNG stream."""
    rng = np.random.default_rng([seed, index])
    y = rng.choice(len(params.weights), size=n, p=params.weights)
    Z = rng.standard_normal((n, params.means.shape[1]))
    X = np.empty_like(Z)
    for k in range(len(params.weights)):
        rows = y == k
        X[rows] = Z[rows] @ chol[k].T + params.means[k]
    return X.astype(dtype, copy=False), y


def _chunk_bounds(n_samples: int, chunk_rows: int):
    return [(i, s, min(s + chunk_rows, n_samples)) for i, s in
            enumerate(range(0, n_samples, chunk_rows))]


def _check_sizes(n_samples, n_features, n_components, chunk_rows, dtype):
    for name, value in (("n_samples", n_samples), ("n_features", n_features),
                        ("n_components", n_components)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating dtype; got {dtype}")
    if chunk_rows is None:
        chunk_rows = max(1, DEFAULT_CHUNK_BYTES // (n_features * dtype.itemsize))
    if not isinstance(chunk_rows, int | np.integer) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an integer >= 1; got {chunk_rows!r}")
    return int(min(chunk_rows, n_samples)), dtype


def make_mixture(
    n_samples: int,
    n_features: int,
    n_components: int,
    *,
    chunk_rows: int | None = None,
    dtype="float64",
    seed: int = 0,
    separation: float = 3.0,
    covariance_type: str = "full",
) -> tuple[np.ndarray, np.ndarray, MixtureParams]:
    """Sample a Gaussian mixture in memory.

    Parameters are as :func:`make_mixture_zarr`; with the same arguments the
    rows equal that store's ``X`` and the labels its ``y``.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
        The component each row was drawn from.
    params : MixtureParams
        The true parameters.
    """
    chunk_rows, dtype = _check_sizes(n_samples, n_features, n_components, chunk_rows, dtype)
    params = make_mixture_params(
        n_components, n_features, covariance_type=covariance_type,
        separation=separation, seed=seed,
    )
    chol = params._full_cholesky()
    parts = [_chunk(params, chol, seed, i, stop - start, dtype)
             for i, start, stop in _chunk_bounds(n_samples, chunk_rows)]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            params)


def _write_chunk(shared, index, start, stop):
    X, y, params, chol, seed, writers = shared
    with writers.running():
        Xc, yc = _chunk(params, chol, seed, index, stop - start, X.dtype)
        X[start:stop] = Xc
        y[start:stop] = yc
    return stop - start


def make_mixture_zarr(
    path: str | os.PathLike,
    n_samples: int,
    n_features: int,
    n_components: int,
    *,
    chunk_rows: int | None = None,
    dtype="float32",
    seed: int = 0,
    separation: float = 3.0,
    covariance_type: str = "full",
    compressors="auto",
    overwrite: bool = False,
) -> MixtureParams:
    """Write a synthetic mixture to a Zarr group, chunk by chunk.

    Memory stays bounded by the chunks in flight whatever ``n_samples`` is;
    chunks are generated in parallel on the active Dask scheduler. The group
    is built under a temporary name and moved to ``path`` when complete.

    Layout of the group at ``path``:

    * ``X`` (n_samples, n_features), ``dtype``, chunks ``(chunk_rows, n_features)``;
      fit it with ``GaussianMixture().fit(f"{path}/X")``;
    * ``y`` (n_samples,), the true component of each row (smallest unsigned dtype);
    * ``weights``, ``means``, ``covariances``: the true parameters (float64);
    * attributes ``covariance_type``, ``seed``, ``separation``, ``dgmm_version``.

    Parameters
    ----------
    path : str or PathLike
        Local path of the group to create.
    n_samples, n_features, n_components : int
    chunk_rows : int, optional
        Rows per stored chunk; by default about 16 MiB of ``X`` per chunk.
    dtype : str or dtype, default='float32'
    seed : int, default=0
        Chunk ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.
    separation : float, default=3.0
        Scale of the means relative to the (order 1) component spread.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    compressors : default='auto'
        Passed to :func:`zarr.create_array` for ``X`` (``None``: uncompressed),
        followed by a CRC-32C checksum, as for every array dgmm writes.
    overwrite : bool, default=False
        Replace an existing store at ``path`` that dgmm wrote (once the new one
        is complete); see :func:`dgmm.io.check_output_path`.

    Returns
    -------
    MixtureParams
        The true parameters.
    """
    chunk_rows, dtype = _check_sizes(n_samples, n_features, n_components, chunk_rows, dtype)
    target = check_output_path(path, overwrite=overwrite, kind="store")
    params = make_mixture_params(
        n_components, n_features, covariance_type=covariance_type,
        separation=separation, seed=seed,
    )
    chol = params._full_cholesky()
    with _atomic_path(target, overwrite, "store") as tmp, Writers(fence=tmp / _FENCE) as writers:
        group = zarr.open_group(str(tmp), mode="w-")
        writers.open()
        group.attrs.update({"covariance_type": covariance_type, "seed": int(seed),
                            "separation": separation, "dgmm_version": _version()})
        for name in ("weights", "means", "covariances"):
            group.create_array(name, data=getattr(params, name), compressors=checksummed())
        X = group.create_array(
            "X", shape=(n_samples, n_features), chunks=(chunk_rows, n_features),
            dtype=dtype, compressors=checksummed(compressors),
        )
        y = group.create_array(
            "y", shape=(n_samples,), chunks=(chunk_rows,),
            dtype=np.min_scalar_type(n_components - 1), compressors=checksummed(),
        )
        shared = dask.delayed((X, y, params, chol, seed, writers), pure=True, traverse=False)
        write = dask.delayed(_write_chunk, pure=True)
        tasks = [write(shared, i, start, stop)
                 for i, start, stop in _chunk_bounds(n_samples, chunk_rows)]
        dask.compute(*tasks)
    return params


def append_mixture_rows(path: str | os.PathLike, n_rows: int, *, shift: float = 0.0) -> int:
    """Append ``n_rows`` rows of a store's own mixture to a group from :func:`make_mixture_zarr`.

    Simulates the new rows that land in a growing store (a night's data):
    the true parameters come back from the group's attributes, and the rows
    are drawn in chunks of the store's chunk size from the RNG streams that
    follow its last chunk, so appending to a store of whole chunks gives the
    rows a larger :func:`make_mixture_zarr` would have written. ``shift``
    moves every drawn row by that amount along every feature (data that
    drift). ``X`` and ``y`` grow in place (not atomically: this stands for
    the process that lands the data).

    Returns
    -------
    int
        The number of rows of ``X`` after the append.
    """
    if not isinstance(n_rows, int | np.integer) or n_rows < 1:
        raise ValueError(f"n_rows must be an integer >= 1; got {n_rows!r}")
    group = zarr.open_group(str(path), mode="a")
    X, y = group["X"], group["y"]
    seed = int(group.attrs["seed"])
    params = MixtureParams(group.attrs["covariance_type"], group["weights"][:],
                           group["means"][:], group["covariances"][:])
    chol = params._full_cholesky()
    chunk_rows = int(X.chunks[0])
    first = -(-X.shape[0] // chunk_rows)
    for j, (_, start, stop) in enumerate(_chunk_bounds(int(n_rows), chunk_rows)):
        Xc, yc = _chunk(params, chol, seed, first + j, stop - start, X.dtype)
        X.append((Xc + shift).astype(X.dtype, copy=False))
        y.append(yc.astype(y.dtype, copy=False))
    return int(X.shape[0])
