"""Model selection: the number of components and the covariance type, in shared passes.

:func:`select_n_components` fits every candidate ``(n_components,
covariance_type)`` exactly as a lone :class:`~dgmm.GaussianMixture` would,
but through one call of the driver, so all candidates share every data pass
(initialisation, EM, polish, the final scoring). :class:`SelectionResult`
holds the outcome.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sklearn.exceptions import ConvergenceWarning

from dgmm import _em, io
from dgmm import _kernels as kernels
from dgmm._passes import scheduler_for
from dgmm.io import as_dask_array
from dgmm.mixture import GaussianMixture, _check_n_samples, _fit_groups

CRITERIA = ("bic", "aic")


@dataclass
class SelectionResult:
    """The outcome of :func:`select_n_components`.

    Unpacks as ``best, table = select_n_components(...)``.

    Attributes
    ----------
    best_ : GaussianMixture
        The fitted candidate with the lowest criterion.
    table : list of dict
        Per candidate, in order of covariance type then ``n_components``:
        ``n_components``, ``covariance_type``, ``bic``, ``aic``, ``score``
        (mean log-likelihood of the final model), ``n_iter``, ``converged``.
    criterion : str
        The criterion that chose ``best_`` (lower is better).
    n_passes : float
        Passes over the data that the whole selection made, counted by the
        pass engine (blocks read over the number of blocks).
    """

    best_: GaussianMixture
    table: list[dict]
    criterion: str
    n_passes: float

    def __iter__(self) -> Iterator:
        return iter((self.best_, self.table))

    def plot(self, ax=None, path=None):
        """The criterion against ``n_components``, one curve per covariance type.

        Calls :func:`dgmm.plot.selection_curves` (needs matplotlib) and
        returns what it returns.
        """
        from dgmm import plot

        return plot.selection_curves(self.table, criterion=self.criterion, ax=ax, path=path)


def select_n_components(
    X,
    n_components: Iterable[int] = range(1, 11),
    *,
    covariance_type: str | Iterable[str] = "full",
    criterion: str = "bic",
    sample_weight=None,
    labels=None,
    callback=None,
    checkpoint=None,
    resume: bool = False,
    **params,
) -> SelectionResult:
    """Fit one mixture per candidate ``(n_components, covariance_type)``; keep the best.

    Every candidate is fitted exactly as ``GaussianMixture(k,
    covariance_type=t, **params).fit(X)`` would fit it (the same driver, the
    same random streams for an int ``random_state``), but all candidates (and
    their ``n_init`` restarts) share every data pass: initialisation (the
    k-means centres of a given ``n_components`` serve every covariance type),
    EM (batch or minibatch), polish, and one last pass that scores the final
    models. For out-of-core data this costs about as many passes as the
    slowest candidate's fit alone.

    Parameters
    ----------
    X : array-like, dask array, zarr.Array or str of shape (n_samples, n_features)
    n_components : iterable of int, default=range(1, 11)
        Candidate numbers of components.
    covariance_type : str or iterable of str, default='full'
        Candidate covariance types, among ``'full'``, ``'tied'``, ``'diag'``,
        ``'spherical'``.
    criterion : {'bic', 'aic'}, default='bic'
        Lower is better.
    sample_weight, labels : optional
        As in :meth:`GaussianMixture.fit`. With weights the criteria use the
        weighted log-likelihood and the total weight as the sample size;
        labels must fit the smallest candidate.
    callback, checkpoint, resume
        As in :meth:`GaussianMixture.fit`; the checkpoint holds every
        candidate's runs.
    **params
        Other :class:`GaussianMixture` parameters (``algorithm``, ``cache``,
        ``verbose``, ``polish_iter``, ...; not the ``*_init`` arrays). The
        candidates are new estimators, so ``warm_start`` has nothing to
        continue and they start as a cold fit does.

    Returns
    -------
    SelectionResult
        ``best_``, ``table``, ``criterion``, ``n_passes``; unpacks as
        ``best, table``.

    Warns
    -----
    ConvergenceWarning
        Naming the candidates that did not converge (their criteria may be
        too high).

    Examples
    --------
    >>> from dgmm import select_n_components
    >>> from dgmm.datasets import make_mixture
    >>> X, _, _ = make_mixture(5_000, 4, 3, seed=0)
    >>> result = select_n_components(X, range(1, 6), covariance_type=("full", "diag"),
    ...                              random_state=0)
    >>> result.best_.n_components
    3
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {list(CRITERIA)}; got {criterion!r}")
    for name in ("weights_init", "means_init", "precisions_init"):
        if params.get(name) is not None:
            raise ValueError(f"{name} cannot be used when selecting n_components")
    candidates = sorted({int(k) for k in n_components})
    if not candidates:
        raise ValueError("n_components must list at least one candidate")
    types = [covariance_type] if isinstance(covariance_type, str) else list(covariance_type)
    types = list(dict.fromkeys(types))
    if not types or any(t not in kernels.COVARIANCE_TYPES for t in types):
        raise ValueError(f"covariance_type must be one or more of "
                         f"{list(kernels.COVARIANCE_TYPES)}; got {covariance_type!r}")
    Xd, lazy = as_dask_array(X)
    n, d = Xd.shape
    models = [GaussianMixture(k, covariance_type=t, **params) for t in types for k in candidates]
    for m in models:
        m._check_parameters(d)
    _check_n_samples(n, candidates[-1])
    rows = io.row_data(n, sample_weight, labels, candidates[0], scheduler_for(lazy))
    size = n if rows is None else rows.total_weight
    proto = models[0]
    fitted, n_passes = _fit_groups(
        Xd, lazy, _em.Settings.of(proto.get_params()), [m._group() for m in models],
        cache=proto.cache, checkpoint=checkpoint, resume=resume, callback=callback,
        log=proto._log, score=True, source=X, rows=rows,
    )
    table = []
    for model, f in zip(models, fitted, strict=True):
        model._set_fitted(f, n_features=d, dtype=Xd.dtype, n_samples=n)
        table.append({
            "n_components": model.n_components,
            "covariance_type": model.covariance_type,
            **model.criteria(f.score, size),
            "score": f.score,
            "n_iter": model.n_iter_,
            "converged": model.converged_,
        })
    late = [(row["n_components"], row["covariance_type"]) for row in table
            if not row["converged"]]
    if late and proto.max_iter > 0:
        named = ", ".join(f"n_components={k} ({t})" for k, t in late)
        warnings.warn(
            f"Candidate(s) {named} did not converge; their criteria may be too high. "
            "Increase max_iter or tol, or try n_init > 1.",
            ConvergenceWarning,
            stacklevel=2,
        )
    best = min(range(len(models)), key=lambda i: table[i][criterion])
    return SelectionResult(models[best], table, criterion, n_passes)
