"""Save and load fitted dgmm estimators, and scikit-learn pipelines of them.

A model file holds plain arrays and JSON metadata, never a pickle (see
:mod:`dgmm.io`). A pipeline is stored step by step; loading rebuilds a
:class:`sklearn.pipeline.Pipeline` of dgmm estimators from the registry below.
"""

from __future__ import annotations

import os

from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from dgmm.bayesian import BayesianGaussianMixture
from dgmm.io import SavedModel, model_file_error, read_model, save_model, save_pipeline
from dgmm.mixture import GaussianMixture
from dgmm.preprocessing import PCA, StandardScaler

# Estimators that model files can name, by class name.
ESTIMATORS = {cls.__name__: cls for cls in (GaussianMixture, BayesianGaussianMixture,
                                            StandardScaler, PCA)}


def _saved(estimator) -> SavedModel:
    if ESTIMATORS.get(type(estimator).__name__) is not type(estimator):
        raise TypeError(f"Cannot save a {type(estimator).__name__} in a dgmm model file; the "
                        f"steps must be dgmm estimators ({', '.join(ESTIMATORS)})")
    check_is_fitted(estimator)
    return SavedModel.of(estimator)


def save(model, path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Write a fitted dgmm estimator, or a ``Pipeline`` of them, to a model file.

    No pickle: plain arrays and JSON metadata (see :func:`dgmm.io.save_model`
    and :func:`dgmm.io.save_pipeline`), written atomically and read back by
    :func:`load`.

    Parameters
    ----------
    model : GaussianMixture, StandardScaler, PCA or sklearn.pipeline.Pipeline
        Fitted; a pipeline's steps must all be dgmm estimators.
    path : str or PathLike
        Local file path. An existing file is replaced once the new one is
        complete (unless ``overwrite=False``); a directory never is.
    overwrite : bool, default=True
        Whether an existing file may be replaced.

    Examples
    --------
    >>> import numpy as np, dgmm, tempfile, os
    >>> from sklearn.pipeline import make_pipeline
    >>> from dgmm.preprocessing import StandardScaler
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> pipe = make_pipeline(StandardScaler(), dgmm.GaussianMixture(2, random_state=0)).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> dgmm.save(pipe, path)
    >>> [name for name, _ in dgmm.load(path).steps]
    ['standardscaler', 'gaussianmixture']
    """
    if isinstance(model, Pipeline):
        steps = [(name, _saved(step)) for name, step in model.steps]
        save_pipeline(path, steps, overwrite=overwrite)
    else:
        saved = _saved(model)
        save_model(path, saved.estimator, saved.params, saved.fitted, overwrite=overwrite)


def _rebuild(path, saved: SavedModel):
    estimator = ESTIMATORS.get(saved.estimator)
    if estimator is None:
        raise model_file_error(path, f"unknown estimator {saved.estimator!r}")
    try:
        return estimator._from_saved(saved.params, saved.fitted)
    except (ValueError, TypeError) as exc:
        raise model_file_error(path, str(exc)) from exc


def load(path: str | os.PathLike):
    """Read a model written by :func:`save` or :meth:`GaussianMixture.save` (never unpickles).

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    GaussianMixture, StandardScaler, PCA or sklearn.pipeline.Pipeline
        The fitted estimator (or a pipeline of them), with hyper-parameters
        and fitted attributes exactly as saved.

    Raises
    ------
    ValueError
        The file does not exist, is not a dgmm model file, is truncated or
        corrupt, or misses or has an inconsistent field; the message names
        the file and the field.
    """
    saved = read_model(path)
    if saved.steps:
        return Pipeline([(name, _rebuild(path, step)) for name, step in saved.steps])
    return _rebuild(path, saved)
