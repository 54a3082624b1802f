"""The user-facing estimator: a scikit-learn compatible ``GaussianMixture``.

It validates input and parameters, then hands the work to the orchestration
layer (:mod:`dgmm._em`), which maps the pure kernels of :mod:`dgmm._kernels`
over row blocks of a dask array.
"""

from __future__ import annotations

import numbers
import sys
import warnings
from dataclasses import replace

import dask
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from dgmm import _em, _init, _lock, _xarray, io
from dgmm import _kernels as kernels
from dgmm._covariance import COVARIANCE
from dgmm._em import ALGORITHMS
from dgmm._passes import (
    CACHE_OPTIONS,
    apply_cache_policy,
    as_blocks,
    blas_guard,
    scheduler_for,
)
from dgmm._stats import SuffStats
from dgmm.io import SavedModel, as_dask_array, save_model

MISSING = ("error", "marginalize")
ONLINE_ATTRIBUTES = ("n_steps_", "n_samples_seen_", "step_size_", "running_stats_")


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM from per-chunk sufficient statistics.

    A drop-in for :class:`sklearn.mixture.GaussianMixture` that also accepts
    dask arrays, Zarr arrays and paths to Zarr arrays. Each EM iteration is one
    streaming pass over the data; no array of size ``n_samples`` exists outside
    one chunk.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
        Form of the component covariances.
    tol : float, default=1e-3
        Convergence threshold on the change of the mean log-likelihood.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance to keep it positive definite.
    max_iter : int, default=100
        Maximum number of EM iterations (data passes) per initialisation.
    n_init : int, default=1
        Number of initialisations; the best final lower bound is kept. All
        initialisations share each data pass.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        How the starting responsibilities are chosen.
    weights_init : array-like of shape (n_components,), default=None
    means_init : array-like of shape (n_components, n_features), default=None
    precisions_init : array-like, default=None
        Shape (n_components,) spherical, (n_features, n_features) tied,
        (n_components, n_features) diag, (n_components, n_features, n_features) full.
    random_state : int, RandomState instance or None, default=None
    warm_start : bool, default=False
        Continue from the previous fit's parameters (``n_init`` is then ignored).
    verbose : int, default=0
        1 prints a line per initialisation, 2 also per ``verbose_interval`` iterations.
    verbose_interval : int, default=10
    cache : {'auto', True, False}, default='auto'
        For lazy input (a dask array, a Zarr array or a path): whether to
        persist the data in the active scheduler's memory for the whole fit
        (``True``) or stream it from its source on every pass (``False``).
        ``'auto'`` persists when the data fit in a fraction
        (``dgmm.cache-fraction`` in the Dask config, default 0.5) of the
        memory available to the scheduler: the sum of the workers' memory
        limits with a ``distributed.Client``, this machine's available memory
        otherwise. With ``verbose >= 1`` the choice is printed. In-memory
        NumPy input is never copied. Both choices give identical fits.
    algorithm : {'batch', 'minibatch'}, default='batch'
        How :meth:`fit` runs EM. 'batch': one full data pass per M-step.
        'minibatch': stepwise EM, an M-step after every minibatch of about
        ``batch_size`` rows, visiting the row blocks in a shuffled order an
        epoch (pass) at a time; ``max_iter`` then counts epochs and ``tol``
        applies to the change of an epoch's mean log-likelihood (under the
        parameters in force when each row was visited). With ``n_init > 1``
        the initialisations compete on the first minibatch.
    batch_size : int, default=10_000
        Rows per minibatch ('minibatch' only). A minibatch is one or more whole
        blocks of the dask array, or an equal slice of a larger block (which is
        then read once per slice: chunks of at most ``batch_size`` rows read
        the data once per epoch). The blocks of one minibatch are processed in
        parallel.
    learning_decay : float, default=0.6
        ``kappa`` in the step size ``rho_t = (t + learning_offset) ** -kappa``
        of stepwise EM (:meth:`partial_fit` and 'minibatch'); in (0.5, 1].
        Smaller values forget early minibatches faster; 1 with
        ``learning_offset=0`` makes the running statistics the plain average
        of all minibatches.
    learning_offset : float, default=0.0
        ``t0`` in the step size, >= 0. With 0 the first step replaces the
        initial statistics entirely; larger values damp the early steps.
    min_step_size : float, default=0.0
        A floor on the step size of stepwise EM, in [0, 1]: ``rho_t =
        max((t + learning_offset) ** -learning_decay, min_step_size)``. With
        a floor the running statistics weigh the last ``~1 / min_step_size``
        minibatches and let older ones fade (a minibatch's weight falls by
        ``1 - min_step_size`` at every later step), so a model updated night
        after night follows data that drift instead of averaging all of
        history. 0 keeps the decreasing schedule.
    shuffle : bool, default=True
        Whether 'minibatch' visits the blocks in an order shuffled by
        ``random_state`` (a new order every epoch) or in storage order.
    polish_iter : int, default=0
        Full batch EM iterations run after the 'minibatch' epochs (stopping
        early on ``tol``), to polish the result.
    missing : {'error', 'marginalize'}, default='error'
        What rows with NaN do. 'error' refuses them with a message naming the
        first one. 'marginalize' fits them through the marginal Gaussian of
        their observed coordinates (EM for incomplete data, Ghahramani &
        Jordan 1994) and lets ``predict``, ``predict_proba``,
        ``score_samples`` and ``score`` evaluate them the same way; a row with
        no observed value is an error. Complete rows cost what they always do;
        each distinct pattern of missing coordinates within a chunk costs one
        factorisation per component.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_ : ndarray
        Shape as ``precisions_init``.
    precisions_ : ndarray
    precisions_cholesky_ : ndarray
        ``U`` with ``precision = U @ U.T`` (elementwise square for diag/spherical).
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood of the best run's parameters before its last M-step.
        After :meth:`partial_fit`: the mean log-likelihood of its rows, each
        under the model in force when its minibatch was visited (as an epoch
        of 'minibatch'), so an out-of-sample value for the rows it learnt.
    lower_bounds_ : list of float
        ``lower_bound`` per iteration of the best run.
    n_features_in_ : int
    feature_names_in_ : ndarray of str objects, shape (n_features_in_,)
        Names of the features, set by a fit on xarray input whose variable
        names (or feature coordinate values) are strings; predictions on
        xarray input select the features by these names.
    n_steps_ : int
        Stepwise-EM steps taken ('minibatch' fit and :meth:`partial_fit` only).
    n_samples_seen_ : int
        Rows the model has learnt from: after a batch fit, the rows it was
        fitted on; with stepwise EM, the rows that have entered the running
        statistics (rows visited again in a later epoch count again).
    step_size_ : float
        Step size ``rho`` of the last stepwise-EM step.
    running_stats_ : ndarray of shape (n_packed,)
        The running normalised sufficient statistics of stepwise EM, packed
        into one float64 vector (layout: :meth:`dgmm._stats.SuffStats.pack`;
        ``n_packed = 3 + K + 2 K d + d`` plus the scatter statistics: ``K d d``
        full, ``d d`` tied, ``K d`` diag, ``K`` spherical).
        With the parameters and the three attributes above it is the whole
        state of a stream: an estimator with the same constructor parameters
        and these attributes restored continues :meth:`partial_fit` exactly.

    Notes
    -----
    As in scikit-learn, the fitted arrays (``weights_``, ``means_``,
    ``covariances_``, ``precisions_``, ``precisions_cholesky_``) are float32
    for float32 data and float64 otherwise. Statistics are accumulated in
    float64 either way, and continuations (``warm_start``,
    :meth:`partial_fit`) start from the fitted arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from dgmm import GaussianMixture
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(-5, 1, (500, 2)), rng.normal(5, 1, (500, 2))])
    >>> gm = GaussianMixture(n_components=2, random_state=0).fit(X)
    >>> np.round(np.sort(gm.means_[:, 0]))
    array([-5.,  5.])
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        cache: str | bool = "auto",
        algorithm: str = "batch",
        batch_size: int = 10_000,
        learning_decay: float = 0.6,
        learning_offset: float = 0.0,
        shuffle: bool = True,
        polish_iter: int = 0,
        min_step_size: float = 0.0,
        missing: str = "error",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.cache = cache
        self.algorithm = algorithm
        self.batch_size = batch_size
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset
        self.shuffle = shuffle
        self.polish_iter = polish_iter
        self.min_step_size = min_step_size
        self.missing = missing

    # ------------------------------------------------------------------
    # Validation
    # ------------------------------------------------------------------

    def _check_parameters(self, n_features: int) -> None:
        _check_int("n_components", self.n_components, 1)
        _check_int("max_iter", self.max_iter, 0)
        _check_int("n_init", self.n_init, 1)
        _check_int("verbose_interval", self.verbose_interval, 1)
        _check_number("tol", self.tol, 0.0)
        _check_number("reg_covar", self.reg_covar, 0.0)
        if self.cache not in CACHE_OPTIONS:
            raise ValueError(f"cache must be one of {list(CACHE_OPTIONS)}; got {self.cache!r}")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("polish_iter", self.polish_iter, 0)
        _check_number("learning_offset", self.learning_offset, 0.0)
        floor = self.min_step_size
        if not isinstance(floor, numbers.Real) or isinstance(floor, bool) or not 0 <= floor <= 1:
            raise ValueError(f"min_step_size must be a number in [0, 1]; got {floor!r}")
        decay = self.learning_decay
        if not isinstance(decay, numbers.Real) or isinstance(decay, bool) or not 0.5 < decay <= 1:
            raise ValueError(f"learning_decay must be a number in (0.5, 1]; got {decay!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}; got {self.algorithm!r}")
        if self.missing not in MISSING:
            raise ValueError(f"missing must be one of {list(MISSING)}; got {self.missing!r}")
        if not isinstance(self.shuffle, (bool, np.bool_)):
            raise ValueError(f"shuffle must be True or False; got {self.shuffle!r}")
        if self.covariance_type not in kernels.COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {list(kernels.COVARIANCE_TYPES)}; "
                f"got {self.covariance_type!r}"
            )
        if self.init_params not in _init.INIT_METHODS:
            raise ValueError(
                f"init_params must be one of {list(_init.INIT_METHODS)}; got {self.init_params!r}"
            )
        k, d = self.n_components, n_features
        # Messages say what is wrong with dgmm's parameter, then repeat it in
        # scikit-learn's words ("The parameter 'weights' should ..."), which its
        # tests look for.
        if self.weights_init is not None:
            w = _check_shape("weights_init", self.weights_init, (k,), "weights")
            if np.any(w < 0) or np.any(w > 1):
                raise ValueError(
                    "weights_init must lie in [0, 1]: The parameter 'weights' should be in the "
                    f"range [0, 1], but got min value {w.min():.5f}, max value {w.max():.5f}"
                )
            if not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
                raise ValueError("weights_init must sum to 1: The parameter 'weights' should be "
                                 f"normalized, but got sum(weights) = {w.sum():.5f}")
        if self.means_init is not None:
            _check_shape("means_init", self.means_init, (k, d), "means")
        if self.precisions_init is not None:
            cov_type = self.covariance_type
            shape = kernels.covariance_shape(cov_type, k, d)
            p = _check_shape("precisions_init", self.precisions_init, shape,
                             f"{cov_type} precision")
            try:
                kernels.precision_cholesky_from_precisions(p, cov_type)
            except ValueError as exc:
                need = ("positive" if cov_type in ("diag", "spherical")
                        else "symmetric, positive-definite")
                raise ValueError(f"{exc} ('{cov_type} precision' should be {need})") from None

    def _check_fitted_features(self, n_features: int) -> None:
        check_is_fitted(self, "means_")
        if n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input (the number it was fitted with)"
            )

    # ------------------------------------------------------------------
    # Fitting
    # ------------------------------------------------------------------

    def fit(self, X, y=None, *, sample_weight=None, labels=None, callback=None,
            checkpoint=None, resume=False, features=None, feature_dim=None,
            sample_dims=None) -> GaussianMixture:
        """Estimate the parameters with EM, ``n_init`` times, keeping the best.

        Parameters
        ----------
        X : array-like, dask array, zarr.Array or str of shape (n_samples, n_features)
            The data; a string is a path or URL to a Zarr array. An
            ``xarray.Dataset`` or ``DataArray`` (needs ``dgmm[xarray]``) is
            fitted on its points: every dimension but the features is a sample
            dimension, points NaN in every feature are skipped, and
            ``feature_names_in_`` is set (see :mod:`dgmm._xarray`); its
            ``sample_weight`` and ``labels`` are DataArrays on the sample
            dimensions.
        y : Ignored
            Accepted so that scikit-learn pipelines and model selection work;
            ``fit`` never uses ``y`` (known components go in ``labels``).
        sample_weight : array-like, dask array, zarr.Array or str of shape (n_samples,), optional
            Non-negative weight of every row: it scales the row's
            responsibilities in the statistics, so integer weights give the
            model of repeated rows and a zero weight removes the row. The
            lower bound is the weighted mean log-likelihood.
        labels : array-like, dask array, zarr.Array or str of shape (n_samples,), optional
            Partially labelled data: the component of rows whose component is
            known (0 .. n_components-1), -1 for the others. Known rows have
            fixed one-hot responsibilities; the k-means initialisation starts
            from their class means. Opt-in, so pipelines passing ``y`` keep
            the unsupervised fit.
        callback : callable, optional
            Called after every batch EM pass with a dict: ``iteration``,
            ``lower_bound`` (best over restarts), ``change`` (of that since
            the previous iteration), ``seconds`` (of the pass), ``active``
            (restarts still running).
        checkpoint : str or PathLike, optional
            Directory where the state of every run is written atomically after
            each batch EM iteration (see :func:`dgmm.io.write_checkpoint`).
        resume : bool, default=False
            Continue from the checkpoint in ``checkpoint`` (the result equals an
            uninterrupted fit); without one there, start afresh. A checkpoint
            made for other data or settings is refused with a ``ValueError``.
            Resuming a checkpoint whose runs have all finished does no pass
            and gives the finished model again.
        features : sequence of str, optional
            xarray input only: the Dataset variables (or values of the
            DataArray's feature coordinate) to use, in this order.
        feature_dim : str, optional
            xarray input only: the DataArray's feature dimension (default:
            the last).
        sample_dims : sequence of str, optional
            xarray input only: the sample dimensions, in the order outputs get.

        Returns
        -------
        self : GaussianMixture
        """
        if _xarray.is_xarray(X):
            return _xarray.fit(self, X, sample_weight=sample_weight, labels=labels,
                               features=features, feature_dim=feature_dim,
                               sample_dims=sample_dims, callback=callback,
                               checkpoint=checkpoint, resume=resume)
        if (features, feature_dim, sample_dims) != (None, None, None):
            raise ValueError("features, feature_dim and sample_dims apply to xarray input only")
        self.__dict__.pop("feature_names_in_", None)  # names come with xarray input only
        Xd, lazy = as_dask_array(X)
        n, d = Xd.shape
        self._check_parameters(d)
        _check_n_samples(n, self.n_components)
        rows = io.row_data(n, sample_weight, labels, self.n_components, scheduler_for(lazy))
        settings = _em.Settings.of(self.get_params())
        warm = self.warm_start and hasattr(self, "means_")
        self._prepare(Xd, lazy, fresh=not warm, online=False)
        start = stream = None
        if warm and self.algorithm == "minibatch":
            stream = [self._online_state()]
        elif warm:
            start = [[self._warm_run()]]
        (fitted,), _ = _fit_groups(
            Xd, lazy, settings, [self._group()], cache=self.cache, init=self._initial_params(),
            start=start, stream=stream, checkpoint=checkpoint, resume=resume,
            callback=callback, log=self._log, source=X, rows=rows,
        )
        self._set_fitted(fitted, n_features=d, dtype=Xd.dtype, n_samples=n)
        self._warn_not_converged(stacklevel=2)
        return self

    def _prepare(self, Xd, lazy: bool, *, fresh: bool, online: bool) -> None:
        """What a fit learns from the data before the driver runs (nothing for EM).

        ``fresh``: not continuing a fitted model; ``online``: for :meth:`partial_fit`.
        """

    def _warm_run(self) -> _em.Run:
        """The run a warm start continues: the fitted model."""
        return _em.Run(self._params(), self._covariances64(),
                       lower_bound=getattr(self, "lower_bound_", -np.inf))

    def _group(self) -> _em.Group:
        """What the driver fits for this estimator."""
        return _em.Group(self.n_components, self.n_init, self.random_state, self.covariance_type)

    def _initial_params(self) -> _em.InitialParams:
        return _em.InitialParams(self.weights_init, self.means_init, self.precisions_init)

    def _set_fitted(self, fitted: _em.Fitted, n_features: int, dtype=np.float64,
                    n_samples: int | None = None) -> None:
        """Adopt a driver's result: the best run, and the stream after minibatch EM.

        After batch EM there is no stream; ``n_samples`` (the rows fitted on)
        is kept as ``n_samples_seen_``, which a later stream counts as steps
        already taken (see :meth:`partial_fit`).
        """
        self._set_run(fitted.best, n_features, dtype)
        if fitted.state is None:  # a batch fit starts any later stream afresh
            for name in ONLINE_ATTRIBUTES:
                self.__dict__.pop(name, None)
            if n_samples is not None:
                self.n_samples_seen_ = int(n_samples)
        else:
            self._set_online_state(fitted.state)

    def _warn_not_converged(self, stacklevel: int) -> None:
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                # scikit-learn's sentence first: its tests look for it.
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data. "
                f"(It stopped after {self.n_iter_} iterations.)",
                ConvergenceWarning,
                stacklevel=stacklevel + 1,
            )

    def partial_fit(self, X, y=None, *, sample_weight=None, labels=None) -> GaussianMixture:
        """Stepwise-EM updates from new rows, one step per minibatch of ``batch_size`` rows.

        The rows are cut into ``m = max(1, round(n_rows / batch_size))``
        minibatches of consecutive rows in storage order, ``[j n_rows / m, (j
        + 1) n_rows / m)``, whatever the chunking (NumPy rows, a dask array or
        a Zarr store of the same rows take the same steps), so a batch of at
        most about ``batch_size`` rows is one step, and a store of any size
        is streamed minibatch by minibatch. Each step is
        the E-step of the minibatch under the current model, blended into the
        running normalised statistics with step size ``rho_t = max((t +
        learning_offset) ** -learning_decay, min_step_size)``, and an M-step.

        The first call (on an unfitted estimator) initialises the model from
        X as :meth:`fit` would (``init_params``, ``*_init``; with ``n_init >
        1`` the initialisation under which the first minibatch is most likely
        is kept). A model fitted by batch EM starts a stream from its
        parameters, which become the running statistics, and its
        ``n_samples_seen_`` rows count as ``n_samples_seen_ // batch_size``
        steps already taken: ``t`` continues from there, so the rows it was
        fitted on keep the weight of that many minibatches (with
        ``learning_decay=1`` and ``learning_offset=0``, exactly: the running
        statistics stay the average over all minibatches). A model without
        ``n_samples_seen_`` (from a file of an older dgmm) starts at ``t =
        0``. Rejected rows (ValueError), in any minibatch, leave the model
        unchanged. ``lower_bound_`` becomes the mean log-likelihood of X's
        rows, each under the model in force when its minibatch was visited;
        ``n_iter_``, ``converged_`` and ``lower_bounds_`` (of a fit) stay.

        Parameters
        ----------
        X : array-like, dask array, zarr.Array or str of shape (n_batch, n_features)
            New rows, from any source (a generator, a message queue, rows
            appended to a Zarr store: ``da.from_zarr(store)[start:stop]``).
        y : Ignored
        sample_weight, labels : optional
            Per-row weights and known components (-1: unknown) of the batch,
            as in :meth:`fit`. Each step is its weighted minibatch's,
            normalised by the minibatch's total weight.

        Returns
        -------
        self : GaussianMixture
        """
        Xd, lazy = as_dask_array(X)
        n, d = Xd.shape
        fitted = hasattr(self, "means_")
        if fitted:
            self._check_fitted_features(d)
        self._check_parameters(d)
        if not fitted and n < self.n_components:
            raise ValueError(
                f"The first batch initialises the model and needs n_samples >= n_components; "
                f"got n_components = {self.n_components}, n_samples = {n}"
            )
        # One epoch of the minibatch driver, over consecutive row ranges.
        settings = replace(_em.Settings.of(self.get_params()), max_iter=1)
        scheduler = scheduler_for(lazy)
        blocks = as_blocks(Xd, io.row_data(n, sample_weight, labels, self.n_components, scheduler))
        with blas_guard(scheduler):
            self._prepare(Xd, lazy, fresh=not fitted, online=True)
            group = self._group()
            if fitted:
                states = [self._online_state()]
            else:
                (runs,) = _em.initial_runs(blocks, settings, [group],
                                           self._initial_params(), scheduler)
                states = [_em.OnlineState.from_params(r.params, r.covariances, self.reg_covar,
                                                      posterior=r.posterior)
                          for r in runs]
            ((state, run),) = _em.minibatch_em(blocks, [states], settings, rng=None,
                                               scheduler=scheduler, contiguous=True,
                                               m_steps=[group.m_step])
        # Only now, with every check passed, does the model change.
        self._set_state(state, n_features=d, dtype=Xd.dtype)
        self._set_online_state(state)
        self.lower_bound_ = float(run.lower_bound)
        return self

    def _set_state(self, state: _em.OnlineState, n_features: int, dtype) -> None:
        """The fitted attributes from a stream's state (its parameters)."""
        self._set_params(state.params, state.covariances, n_features=n_features, dtype=dtype)

    def _online_state(self) -> _em.OnlineState:
        """The stream state held in the fitted attributes.

        Without one (a batch fit), a stream starts from the parameters, its
        ``n_samples_seen_`` rows counted as ``n_samples_seen_ // batch_size``
        steps taken (see :meth:`partial_fit`).
        """
        if not hasattr(self, "running_stats_"):
            seen = int(getattr(self, "n_samples_seen_", 0))
            fresh = _em.OnlineState.from_params(self._params(), self._covariances64(),
                                                self.reg_covar, n_rows=seen)
            return replace(fresh, n_steps=seen // self.batch_size)
        stats = SuffStats.unpack(
            self.running_stats_, self.covariance_type, self.n_components, self.n_features_in_
        )
        return _em.OnlineState(
            self._params(), self._covariances64(), stats, int(self.n_steps_),
            float(self.step_size_),
        )

    def _set_online_state(self, state: _em.OnlineState) -> None:
        self.n_steps_ = int(state.n_steps)
        self.n_samples_seen_ = int(state.stats.n_rows)
        self.step_size_ = float(state.step_size)
        self.running_stats_ = state.stats.pack()

    def save(self, path, *, overwrite: bool = True) -> None:
        """Write the fitted model to a file (NPZ and JSON metadata, no pickle).

        The file is written atomically and read back by :func:`dgmm.load`
        (:func:`dgmm.save` also writes pipelines);
        the format is described in :func:`dgmm.io.save_model`.

        Parameters
        ----------
        path : str or PathLike
            Local file path. An existing file is replaced once the new one is
            complete (unless ``overwrite=False``); a directory never is.
        overwrite : bool, default=True
            Whether an existing file may be replaced.
        """
        check_is_fitted(self, "means_")
        saved = SavedModel.of(self)
        save_model(path, saved.estimator, saved.params, saved.fitted, overwrite=overwrite)

    @classmethod
    def _from_saved(cls, params: dict, fitted: dict) -> GaussianMixture:
        """A fitted estimator from a model file's hyper-parameters and attributes.

        Raises ``ValueError`` naming what is inconsistent.
        """
        missing = [name for name in _REQUIRED_FITTED if name not in fitted]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        model = cls()
        try:
            model.set_params(**params)
            model._check_parameters(int(fitted["n_features_in_"]))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid hyper-parameter in field 'params' ({exc})") from exc
        for name, value in fitted.items():
            setattr(model, name, value)
        k, d = model.n_components, model.n_features_in_
        cov_shape = kernels.covariance_shape(model.covariance_type, k, d)
        expected = {
            "weights_": (k,), "means_": (k, d), "covariances_": cov_shape,
            "precisions_": cov_shape, "precisions_cholesky_": cov_shape,
        }
        for name, shape in expected.items():
            value = getattr(model, name)
            if not isinstance(value, np.ndarray) or value.shape != shape:
                got = getattr(value, "shape", type(value).__name__)
                raise ValueError(f"field {name!r} must have shape {shape}; got {got}")
            if not np.isfinite(value).all():
                raise ValueError(f"field {name!r} contains NaN or infinity")
        names = getattr(model, "feature_names_in_", None)
        if names is not None and names.shape != (d,):
            raise ValueError(f"field 'feature_names_in_' must have shape ({d},); "
                             f"got {names.shape}")
        return model

    def fit_predict(self, X, y=None):
        """Fit the model, then return the most likely component of every row.

        Returns a dask array for dask/Zarr input, a NumPy array otherwise.
        """
        return self.fit(X).predict(X)

    def _set_run(self, run: _em.Run, n_features: int, dtype=np.float64) -> None:
        self._set_params(run.params, run.covariances, n_features, dtype)
        self.converged_ = bool(run.converged)
        self.n_iter_ = int(run.n_iter)
        self.lower_bound_ = float(run.lower_bound)
        self.lower_bounds_ = list(run.lower_bounds)

    def _set_params(
        self, p: kernels.Params, covariances: np.ndarray, n_features: int, dtype=np.float64
    ) -> None:
        """Set the fitted attributes from float64 parameters, in the result dtype of ``dtype``.

        ``dtype`` is the data's: float32 data give float32 attributes (as in
        scikit-learn), anything else float64, which are then ``p``'s own arrays.
        """
        out = io.result_dtype(dtype)
        prec = kernels.precisions_from_cholesky(p.precisions_cholesky, p.covariance_type)
        self.weights_ = p.weights.astype(out, copy=False)
        self.means_ = p.means.astype(out, copy=False)
        self.precisions_cholesky_ = p.precisions_cholesky.astype(out, copy=False)
        self.covariances_ = np.asarray(covariances).astype(out, copy=False)
        self.precisions_ = prec.astype(out, copy=False)
        self.n_features_in_ = int(n_features)

    def _params(self) -> kernels.Params:
        """The fitted parameters in float64 (what every computation uses)."""
        return kernels.Params(self.covariance_type, self.weights_, self.means_,
                              self.precisions_cholesky_)

    @property
    def _marginalize(self) -> bool:
        """Whether rows with NaN are evaluated through their observed features."""
        return self.missing == "marginalize"

    def _covariances64(self) -> np.ndarray:
        return np.asarray(self.covariances_, dtype=np.float64)

    def _log(self, message: str) -> None:
        print(message, file=sys.stdout, flush=True)

    # ------------------------------------------------------------------
    # Per-row outputs: lazy for lazy input, NumPy otherwise
    # ------------------------------------------------------------------

    def _per_row(self, X, what: str, float_dtype=None):
        """One per-row output of X; float outputs in ``float_dtype`` (default: X's result dtype)."""
        Xd, lazy = as_dask_array(X)
        self._check_fitted_features(Xd.shape[1])
        params = dask.delayed(self._params(), pure=True, traverse=False)
        if what == "labels":
            dtype = np.dtype(np.int64)
        else:
            dtype = np.dtype(float_dtype or io.result_dtype(Xd.dtype))
        if what == "proba":
            out = Xd.map_blocks(
                _predict_block, params, what, dtype, self._marginalize, dtype=dtype,
                chunks=(Xd.chunks[0], (self.n_components,)),
            )
        else:
            out = Xd.map_blocks(_predict_block, params, what, dtype, self._marginalize,
                                drop_axis=1, dtype=dtype)
        if lazy:
            return out
        with blas_guard("threads"):
            return out.compute(scheduler="threads")

    def predict(self, X):
        """Most likely component of every row, shape (n_samples,).

        For xarray input, a DataArray ``labels`` on X's sample dimensions,
        -1 where every feature is NaN.
        """
        if _xarray.is_xarray(X):
            return _xarray.per_row(self, X, "predict", "labels", -1)
        return self._per_row(X, "labels")

    def predict_proba(self, X):
        """Responsibilities of every component for every row, shape (n_samples, n_components).

        float32 for float32 input, float64 otherwise. For xarray input, a
        DataArray ``proba`` on X's sample dimensions and ``component``, NaN
        where every feature is NaN.
        """
        if _xarray.is_xarray(X):
            return _xarray.per_row(self, X, "predict_proba", "proba", np.nan,
                                   component=self.n_components)
        return self._per_row(X, "proba")

    def score_samples(self, X):
        """Log-likelihood ``log p(x)`` of every row, shape (n_samples,).

        float32 for float32 input, float64 otherwise. For xarray input, a
        DataArray ``log_density`` on X's sample dimensions, NaN where every
        feature is NaN.
        """
        if _xarray.is_xarray(X):
            return _xarray.per_row(self, X, "score_samples", "log_density", np.nan)
        return self._per_row(X, "log_density")

    def score(self, X, y=None, sample_weight=None) -> float:
        """Mean log-likelihood per row (a float, computed even for lazy input).

        With ``sample_weight``, the weighted mean. For xarray input, the mean
        over the points with an observed feature.
        """
        if _xarray.is_xarray(X):
            return _xarray.mean_score(self, X, "score", sample_weight)
        return self._mean_log_likelihood(X, sample_weight)[0]

    def _mean_log_likelihood(self, X, sample_weight=None) -> tuple[float, float]:
        """Mean log-likelihood per row, summed in float64 whatever X's dtype, and the row count.

        With ``sample_weight``: the weighted mean and the total weight.
        """
        scores = self._per_row(X, "log_density", float_dtype=np.float64)
        lazy = hasattr(scores, "compute")
        n = int(scores.shape[0])
        if sample_weight is None:
            mean = scores.mean()
            return float(mean.compute() if lazy else mean), n
        rows = io.row_data(n, sample_weight, scheduler=scheduler_for(lazy))
        w = rows.weight.rechunk(scores.chunks) if lazy else rows.weight.compute()
        total = (scores * w).sum()
        total = total.compute() if lazy else total
        return float(total / rows.total_weight), rows.total_weight

    def _n_parameters(self) -> int:
        return kernels.n_parameters(self.n_components, self.n_features_in_, self.covariance_type)

    def criteria(self, mean_log_likelihood: float, n_samples: float) -> dict[str, float]:
        """BIC and AIC from a mean log-likelihood already computed on ``n_samples`` rows.

        Lets callers that scored the data once (a CLI job, a model sweep) get
        both criteria without another pass. With sample weights, ``n_samples``
        is the total weight.
        """
        total = -2.0 * mean_log_likelihood * n_samples
        p = self._n_parameters()
        return {"bic": float(total + p * np.log(n_samples)), "aic": float(total + 2.0 * p)}

    def bic(self, X, sample_weight=None) -> float:
        """Bayesian information criterion on X (lower is better); weighted count with weights."""
        if _xarray.is_xarray(X):
            return _xarray.mean_score(self, X, "bic", sample_weight)
        return self.criteria(*self._mean_log_likelihood(X, sample_weight))["bic"]

    def aic(self, X, sample_weight=None) -> float:
        """Akaike information criterion on X (lower is better)."""
        if _xarray.is_xarray(X):
            return _xarray.mean_score(self, X, "aic", sample_weight)
        return self.criteria(*self._mean_log_likelihood(X, sample_weight))["aic"]

    def sample(self, n_samples: int = 1):
        """Draw samples from the fitted mixture.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            The component each sample came from.
        """
        check_is_fitted(self, "means_")
        # "Invalid value for 'n_samples'" is scikit-learn's wording.
        if not isinstance(n_samples, numbers.Integral) or isinstance(n_samples, bool) or (
            n_samples < 1
        ):
            raise ValueError(f"Invalid value for 'n_samples': {n_samples!r}; sampling needs "
                             "an integer >= 1")
        rng = check_random_state(self.random_state)
        # float64 draws whatever the attributes' dtype, as scikit-learn
        weights = np.asarray(self.weights_, dtype=np.float64)
        if self.weights_.dtype != np.float64:  # rounded weights may sum to more than 1
            weights = weights / weights.sum()
        counts = rng.multinomial(n_samples, weights)
        means = np.asarray(self.means_, dtype=np.float64)
        X = COVARIANCE[self.covariance_type].sample(rng, means, self._covariances64(), counts)
        return X, np.repeat(np.arange(self.n_components), counts)


def _predict_block(block, params, what, dtype, missing, block_info=None):
    offset = block_info[0]["array-location"][0][0] if block_info else 0
    out = kernels.predict_block(block, params, what, row_offset=offset, missing=missing)
    return out.astype(dtype, copy=False)


# Fitted attributes every GaussianMixture model file must hold (a model built by
# partial_fit alone has no n_iter_, converged_ or lower bounds).
_REQUIRED_FITTED = (
    "weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_",
    "n_features_in_",
)
@_lock.holding("checkpoint")  # a second run on the checkpoint is refused until this one ends
def _fit_groups(
    Xd,
    lazy: bool,
    settings: _em.Settings,
    groups: list[_em.Group],
    *,
    cache,
    init: _em.InitialParams = _em.NO_INIT,
    start: list[list[_em.Run]] | None = None,
    stream: list[_em.OnlineState] | None = None,
    checkpoint=None,
    resume: bool = False,
    callback=None,
    log=None,
    score: bool = False,
    source=None,
    rows=None,
) -> tuple[list[_em.Fitted], float]:
    """What every fit does around the one driver: cache, checkpoints, progress.

    ``fit`` and :func:`~dgmm.select_n_components` both come through here, so
    the cache policy, checkpoints, resume, verbosity and callbacks behave the
    same in both. ``source`` is the input as the user gave it (a checkpoint
    may not be written into it); ``rows`` the validated sample weights and
    labels (:func:`dgmm.io.row_data`). Returns the driver's result and the
    data passes it made (counted by the pass engine).
    """
    if checkpoint is not None:
        if settings.algorithm != "batch":
            raise ValueError("checkpoint is supported with algorithm='batch' only")
        io.check_output_path(checkpoint, [source], overwrite=True, kind="directory")
        if not resume and io.has_checkpoint(checkpoint):
            raise ValueError(f"{checkpoint} already holds a checkpoint; pass resume=True "
                             "to continue it, or remove it")
    elif resume:
        raise ValueError("resume=True needs a checkpoint directory")
    scheduler = scheduler_for(lazy)
    streamed = Xd
    if lazy:
        Xd = apply_cache_policy(Xd, cache, scheduler, log=log if settings.verbose >= 1 else None)
    # NumPy input and persisted data cannot change under the fit: hashed once
    blocks = as_blocks(Xd, rows, resident=not lazy or Xd is not streamed)
    save = None
    with blas_guard(scheduler):
        if checkpoint is not None:
            identity = _em.fit_identity(blocks, settings, groups)
            if resume and io.has_checkpoint(checkpoint):
                records = io.read_checkpoint(checkpoint, identity)
                _em.check_same_data(io.checkpoint_manifest(checkpoint).get("content"), blocks,
                                    str(checkpoint), scheduler)
                start = [[_em.Run.from_record(r, group.covariance_type, group.m_step)
                          for r in records if r["group"] == g]
                         for g, group in enumerate(groups)]
                stream = None

            def save(iteration: int, runs: list[list[_em.Run]]) -> None:
                records = [{**r.to_record(), "group": g}
                           for g, group in enumerate(runs) for r in group]
                io.write_checkpoint(checkpoint, records, {
                    **identity, "iteration": iteration,
                    "content": _em.data_content(blocks, scheduler)})

        hook = _em.iteration_hook(settings, log, callback, save)
        fitted = _em.fit_groups(blocks, settings, groups, init=init, start=start, stream=stream,
                                scheduler=scheduler, on_iteration=hook, log=log, score=score)
    return fitted, blocks.n_passes


def _check_n_samples(n_samples: int, n_components: int) -> None:
    if n_samples < n_components:
        raise ValueError(
            f"Expected n_samples >= n_components but got n_components = "
            f"{n_components}, n_samples = {n_samples}"
        )


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _check_number(name: str, value, minimum: float) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= minimum:
        raise ValueError(f"{name} must be a number >= {minimum}; got {value!r}")


def _check_shape(name: str, value, shape: tuple, sklearn_name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}: The parameter '{sklearn_name}' "
                         f"should have the shape of {shape}, but got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity")
    return arr
