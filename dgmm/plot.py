"""Pictures of a fit: covariance ellipses, selection curves, lower bounds, log-densities, maps.

Needs matplotlib (``pip install "dgmm[plot]"``), imported only when a function
is called. Every function draws on ``ax`` when given (so several pictures can
share one figure, see :func:`panels`), else on a new figure; it returns the
figure and also writes it as a PNG when ``path`` is given. Figures are
:class:`matplotlib.figure.Figure` objects made without pyplot, so nothing
opens a window and no global state changes; notebooks display them.

Data are never loaded whole: :func:`ellipses` draws a uniform sample taken in
one pass, and :func:`log_density_histogram` draws an outlier detector's own
histogram of the training log-densities.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from dgmm._covariance import COVARIANCE
from dgmm._init import sample_rows
from dgmm._passes import as_blocks, scheduler_for
from dgmm.io import as_dask_array

SIGMAS = (1, 2)
# Components below this share of 1/K (a variational mixture's switched-off
# ones) are drawn faded, at this opacity.
INACTIVE_SHARE, INACTIVE_ALPHA = 0.01, 0.2
_LINESTYLES = {1: "-", 2: "--"}


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ImportError('dgmm.plot needs matplotlib: pip install "dgmm[plot]"') from None
    return matplotlib


def panels(n: int, size: float = 4.5):
    """A new figure with ``n`` axes side by side: ``(figure, list of axes)``."""
    _matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * n, size), layout="constrained")
    return fig, list(np.atleast_1d(fig.subplots(1, n)))


def _figure_and_axes(ax):
    if ax is None:
        fig, (ax,) = panels(1)
        return fig, ax
    return ax.figure, ax


def _done(fig, path: str | os.PathLike | None):
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


# --------------------------------------------------------------------------
# Covariance ellipses over a sample of the data
# --------------------------------------------------------------------------


def projection(sample: np.ndarray, features) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The origin (d,), the axes (d, 2) and the axis names of a 2-D view.

    ``features`` is a pair of column indices, or 'pca': the first two
    principal axes of ``sample`` about its mean.
    """
    d = sample.shape[1]
    if isinstance(features, str):
        if features != "pca":
            raise ValueError(f"features must be a pair of column indices or 'pca'; "
                             f"got {features!r}")
        origin = sample.mean(axis=0)
        _, vectors = np.linalg.eigh(np.cov(sample, rowvar=False).reshape(d, d))
        return origin, vectors[:, ::-1][:, :2], ["principal axis 1", "principal axis 2"]
    cols = [int(f) for f in features]
    if len(cols) != 2 or not all(0 <= c < d for c in cols):
        raise ValueError(f"features must be two column indices in [0, {d}); got {features!r}")
    return np.zeros(d), np.eye(d)[:, cols], [f"feature {c}" for c in cols]


def ellipse_geometry(cov2: np.ndarray, n_sigma: float) -> tuple[float, float, float]:
    """Width, height and angle (degrees) of the ``n_sigma`` ellipse of a 2x2 covariance."""
    values, vectors = np.linalg.eigh(cov2)
    width, height = 2.0 * n_sigma * np.sqrt(np.maximum(values[::-1], 0.0))
    angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
    return float(width), float(height), float(angle)


def ellipses(model, X, features=(0, 1), n_points: int = 5000, ax=None, path=None,
             random_state=0):
    """Covariance ellipses at 1 and 2 sigma over a uniform sample of the data.

    The sample (about ``n_points`` rows, taken in one pass over X in bounded
    memory) is coloured by its predicted component. For ``d > 2`` and
    ``features='pca'`` the view is the sample's first two principal axes,
    and the covariances are projected onto them. Components whose weight is
    below 1/(100 K), such as those a variational mixture switched off, are
    drawn faded.

    Parameters
    ----------
    model : GaussianMixture
        A fitted mixture.
    X : array-like, dask array, zarr.Array or str of shape (n_samples, n_features)
    features : pair of int or 'pca', default=(0, 1)
    n_points : int, default=5000
    ax : matplotlib Axes, optional
    path : str or PathLike, optional
        Where to write a PNG.
    random_state : int, RandomState instance or None, default=0
        Draws the seed of the sample's random streams (as ``fit`` draws its
        own, so the sample is not tied to a generator seeded with the same int).

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    from matplotlib.patches import Ellipse

    check_is_fitted(model, "means_")
    Xd, lazy = as_dask_array(X)
    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
    sample = sample_rows(as_blocks(Xd), n_points, seed, scheduler_for(lazy)).rows
    labels = model.predict(sample)
    origin, axes, names = projection(sample, features)
    K, d = model.n_components, model.n_features_in_
    covs = COVARIANCE[model.covariance_type].dense(
        np.asarray(model.covariances_, dtype=np.float64), K, d)
    means2 = (np.asarray(model.means_, dtype=np.float64) - origin) @ axes
    covs2 = axes.T @ covs @ axes
    fig, ax = _figure_and_axes(ax)
    colors = [f"C{k % 10}" for k in range(K)]
    points = (sample - origin) @ axes
    ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.35, linewidths=0,
               c=[colors[k] for k in labels])
    active = np.asarray(model.weights_) > INACTIVE_SHARE / K
    for k in range(K):
        for n_sigma in SIGMAS:
            width, height, angle = ellipse_geometry(covs2[k], n_sigma)
            ax.add_patch(Ellipse(means2[k], width, height, angle=angle, fill=False,
                                 edgecolor=colors[k], linewidth=1.5,
                                 linestyle=_LINESTYLES[n_sigma],
                                 alpha=1.0 if active[k] else INACTIVE_ALPHA))
    ax.scatter(means2[:, 0], means2[:, 1], marker="+", s=80, c="black", label="means",
               alpha=np.where(active, 1.0, INACTIVE_ALPHA))
    ax.plot([], [], "k-", label="1 sigma")
    ax.plot([], [], "k--", label="2 sigma")
    ax.legend(loc="best", fontsize="small")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(f"{K} components over {len(sample)} sampled rows")
    return _done(fig, path)


# --------------------------------------------------------------------------
# Model selection, convergence
# --------------------------------------------------------------------------


def selection_curves(table: Sequence[dict], criterion: str = "bic", ax=None, path=None):
    """BIC or AIC against n_components, one line per covariance type.

    Parameters
    ----------
    table : sequence of dict
        One row per candidate, with keys ``n_components``, ``bic``, ``aic``,
        ``converged`` and optionally ``covariance_type`` (rows without it form
        one line), as :func:`dgmm.select_n_components` returns.
    criterion : {'bic', 'aic'}, default='bic'
        Lower is better; the best candidate is marked with a star, candidates
        that did not converge with a red cross.
    ax : matplotlib Axes, optional
    path : str or PathLike, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    if criterion not in ("bic", "aic"):
        raise ValueError(f"criterion must be 'bic' or 'aic'; got {criterion!r}")
    if not table:
        raise ValueError("table has no rows to draw")
    fig, ax = _figure_and_axes(ax)
    lines: dict = {}
    for row in table:
        lines.setdefault(row.get("covariance_type"), []).append(row)
    for cov_type, rows in lines.items():
        rows = sorted(rows, key=lambda r: r["n_components"])
        ax.plot([r["n_components"] for r in rows], [r[criterion] for r in rows], "o-",
                markersize=4, label=cov_type or criterion.upper())
    late = [r for r in table if not r["converged"]]
    if late:
        ax.scatter([r["n_components"] for r in late], [r[criterion] for r in late], marker="x",
                   s=70, c="red", zorder=3, label="did not converge")
    best = min(table, key=lambda r: r[criterion])
    where = f", {best['covariance_type']}" if best.get("covariance_type") else ""
    ax.scatter([best["n_components"]], [best[criterion]], marker="*", s=250, c="gold",
               edgecolors="black", zorder=4, label=f"best: {best['n_components']}{where}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("n_components")
    ax.set_ylabel(f"{criterion.upper()} (lower is better)")
    ax.set_title(f"model selection by {criterion.upper()}")
    ax.legend(loc="best", fontsize="small")
    return _done(fig, path)


def lower_bounds(model, ax=None, path=None):
    """The lower bound (mean log-likelihood) at every EM iteration of ``model``'s best run.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    check_is_fitted(model, "lower_bounds_")
    values = np.asarray(model.lower_bounds_, dtype=np.float64)
    fig, ax = _figure_and_axes(ax)
    ax.plot(np.arange(1, len(values) + 1), values, "o-", markersize=3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel("iteration")
    ax.set_ylabel("lower bound (mean log-likelihood)")
    state = "converged" if getattr(model, "converged_", False) else "not converged"
    ax.set_title(f"EM: {len(values)} iterations, {state}")
    return _done(fig, path)


# --------------------------------------------------------------------------
# Log-densities and the anomaly threshold
# --------------------------------------------------------------------------


def log_density_histogram(scores_or_detector, threshold: float | None = None, bins: int = 60,
                          ax=None, path=None):
    """Histogram of log-densities, with the anomaly threshold.

    Parameters
    ----------
    scores_or_detector : array-like of shape (n_samples,) or fitted GaussianMixtureOutlierDetector
        Log-densities, or a detector, whose histogram of the training
        log-densities is drawn (no pass over the data) with its ``threshold_``.
    threshold : float, optional
        Drawn as a vertical line; default: the detector's ``threshold_``.
    bins : int, default=60
    ax : matplotlib Axes, optional
    path : str or PathLike, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    histogram = getattr(scores_or_detector, "histogram_", None)
    if histogram is not None:
        values, weights = histogram.lower_edges(), histogram.counts
        if threshold is None:
            threshold = scores_or_detector.threshold_
    else:
        values = np.asarray(scores_or_detector, dtype=np.float64).ravel()
        weights = None
    fig, ax = _figure_and_axes(ax)
    weights = np.ones_like(values) if weights is None else weights
    edges = np.histogram_bin_edges(values, bins=bins)
    below = values < (-np.inf if threshold is None else threshold)
    inliers, _ = np.histogram(values[~below], edges, weights=weights[~below])
    ax.stairs(inliers, edges, fill=True, color="C0", alpha=0.8)
    if threshold is not None:
        flagged, _ = np.histogram(values[below], edges, weights=weights[below])
        ax.stairs(flagged, edges, fill=True, color="C3", alpha=0.8, label="outliers")
        ax.axvline(threshold, color="C3", linestyle="--", label=f"threshold {threshold:.4g}")
        ax.legend(loc="best", fontsize="small")
    ax.set_yscale("log")
    ax.set_xlabel("log-density")
    ax.set_ylabel("rows")
    ax.set_title("log-density of every row")
    return _done(fig, path)


# --------------------------------------------------------------------------
# Labels on a map
# --------------------------------------------------------------------------


def label_map(labels, ax=None, path=None, title: str | None = None):
    """Component labels of a 2-D spatial output as a map, one colour per component.

    Parameters
    ----------
    labels : xarray.DataArray
        Labels on two dimensions (e.g. ``predict(ds).isel(time=0)`` on
        (lat, lon)): the first is drawn along y, the second along x, at
        their coordinates when they have them. -1 (no data, such as land)
        is left blank. Lazy labels are computed (only this 2-D slice).
    ax : matplotlib Axes, optional
    path : str or PathLike, optional
    title : str, optional
        Default: the number of components shown.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    from matplotlib.colors import BoundaryNorm, ListedColormap

    if getattr(labels, "ndim", None) != 2 or not hasattr(labels, "dims"):
        shape = getattr(labels, "shape", None)
        raise ValueError(f"label_map draws a 2-D DataArray of labels (select one time step, "
                         f"e.g. labels.isel(time=0)); got shape {shape}")
    ydim, xdim = labels.dims
    values = np.asarray(labels.values)
    k = max(int(values.max()) + 1, 1)
    coord = {dim: (np.asarray(labels[dim].values) if dim in labels.coords
                   else np.arange(labels.sizes[dim])) for dim in (ydim, xdim)}
    fig, ax = _figure_and_axes(ax)
    cmap = ListedColormap([f"C{c % 10}" for c in range(k)])
    mesh = ax.pcolormesh(coord[xdim], coord[ydim], np.ma.masked_less(values, 0), cmap=cmap,
                         norm=BoundaryNorm(np.arange(-0.5, k), k), shading="auto")
    bar = fig.colorbar(mesh, ax=ax, ticks=np.arange(k))
    bar.set_label("component")
    ax.set_xlabel(xdim)
    ax.set_ylabel(ydim)
    ax.set_title(title or f"{k} components")
    return _done(fig, path)
