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
from sklearn.base import BaseEstimator, DensityMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from dgmm import _em, _init, io
from dgmm import _kernels as K
from dgmm._stats import SuffStats
from dgmm.io import as_dask_array, save_model

ALGORITHMS = ("batch", "minibatch")
CRITERIA = ("bic", "aic")
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
    shuffle : bool, default=True
        Whether 'minibatch' visits the blocks in an order shuffled by
        ``random_state`` (a new order every epoch) or in storage order.
    polish_iter : int, default=0
        Full batch EM iterations run after the 'minibatch' epochs (stopping
        early on ``tol``), to polish the result.

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
    lower_bounds_ : list of float
        ``lower_bound`` per iteration of the best run.
    n_features_in_ : int
    n_steps_ : int
        Stepwise-EM steps taken ('minibatch' fit and :meth:`partial_fit` only).
    n_samples_seen_ : int
        Rows that have entered the running statistics of stepwise EM (rows
        visited again in a later epoch count again).
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
        if self.cache not in _em.CACHE_OPTIONS:
            raise ValueError(
                f"cache must be one of {list(_em.CACHE_OPTIONS)}; got {self.cache!r}"
            )
        _check_int("batch_size", self.batch_size, 1)
        _check_int("polish_iter", self.polish_iter, 0)
        _check_number("learning_offset", self.learning_offset, 0.0)
        decay = self.learning_decay
        if not isinstance(decay, numbers.Real) or isinstance(decay, bool) or not 0.5 < decay <= 1:
            raise ValueError(f"learning_decay must be a number in (0.5, 1]; got {decay!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}; got {self.algorithm!r}")
        if not isinstance(self.shuffle, (bool, np.bool_)):
            raise ValueError(f"shuffle must be True or False; got {self.shuffle!r}")
        if self.covariance_type not in K.COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {list(K.COVARIANCE_TYPES)}; "
                f"got {self.covariance_type!r}"
            )
        if self.init_params not in _init.INIT_METHODS:
            raise ValueError(
                f"init_params must be one of {list(_init.INIT_METHODS)}; got {self.init_params!r}"
            )
        k, d = self.n_components, n_features
        if self.weights_init is not None:
            w = _check_shape("weights_init", self.weights_init, (k,))
            if np.any(w < 0) or np.any(w > 1):
                raise ValueError(
                    f"weights_init must lie in [0, 1]; got min {w.min()}, max {w.max()}"
                )
            if not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
                raise ValueError(f"weights_init must sum to 1; got sum {w.sum():.6f}")
        if self.means_init is not None:
            _check_shape("means_init", self.means_init, (k, d))
        if self.precisions_init is not None:
            shape = K.covariance_shape(self.covariance_type, k, d)
            p = _check_shape("precisions_init", self.precisions_init, shape)
            K.precision_cholesky_from_precisions(p, self.covariance_type)

    def _check_fitted_features(self, n_features: int) -> None:
        check_is_fitted(self, "means_")
        if n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but this GaussianMixture was fitted "
                f"with {self.n_features_in_} features"
            )

    # ------------------------------------------------------------------
    # Fitting
    # ------------------------------------------------------------------

    def fit(self, X, y=None, *, callback=None, checkpoint=None, resume=False) -> GaussianMixture:
        """Estimate the parameters with EM, ``n_init`` times, keeping the best.

        Parameters
        ----------
        X : array-like, dask array, zarr.Array or str of shape (n_samples, n_features)
            The data; a string is a path or URL to a Zarr array.
        y : Ignored
        callback : callable, optional
            Called after every EM iteration with a dict: ``iteration``,
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

        Returns
        -------
        self : GaussianMixture
        """
        Xd, lazy = as_dask_array(X)
        n, d = Xd.shape
        self._check_parameters(d)
        if checkpoint is not None:
            if self.algorithm != "batch":
                raise ValueError("checkpoint is supported with algorithm='batch' only")
            io.check_output_path(checkpoint, [X], overwrite=True, kind="directory")
            if not resume and io.has_checkpoint(checkpoint):
                raise ValueError(f"{checkpoint} already holds a checkpoint; pass resume=True "
                                 "to continue it, or remove it")
        elif resume:
            raise ValueError("resume=True needs a checkpoint directory")
        if n < self.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = "
                f"{self.n_components}, n_samples = {n}"
            )
        scheduler = None if lazy else "threads"
        if lazy:
            log = self._log if self.verbose >= 1 else None
            Xd = _em.apply_cache_policy(Xd, self.cache, scheduler, log=log)
        blocks = _em.as_blocks(Xd)
        warm = self.warm_start and hasattr(self, "means_")
        manifest = _checkpoint_manifest(self, Xd, blocks, scheduler) if checkpoint else None
        with _em.blas_guard(scheduler):
            if resume and io.has_checkpoint(checkpoint):
                runs = [_run_of(m) for m in io.read_checkpoint(checkpoint, manifest)]
            elif not warm:
                runs = self._initial_runs(blocks, scheduler)
            else:
                runs = [_em.Run(self._params(), self.covariances_,
                                lower_bound=getattr(self, "lower_bound_", -np.inf))]
            if self.algorithm == "minibatch":
                self._fit_minibatch(blocks, runs, warm, scheduler, callback)
                return self
            if self.max_iter > 0:
                _em.batch_em(
                    blocks,
                    runs,
                    max_iter=self.max_iter,
                    tol=self.tol,
                    reg_covar=self.reg_covar,
                    scheduler=scheduler,
                    on_iteration=self._iteration_hook(callback, checkpoint, manifest),
                )
        best = runs[-1] if self.max_iter == 0 else _best_run(runs)
        if self.verbose >= 1:
            for i, r in enumerate(runs):
                self._log(f"Initialisation {i}: lower bound {r.lower_bound:.6f} after "
                          f"{r.n_iter} iterations, converged={r.converged}")
        for name in ONLINE_ATTRIBUTES:  # a batch fit starts any later stream afresh
            self.__dict__.pop(name, None)
        self._set_run(best, n_features=d)
        self._warn_not_converged(stacklevel=3)
        return self

    def _warn_not_converged(self, stacklevel: int) -> None:
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "The best initialisation did not converge. Try different init "
                "parameters, increase max_iter or tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=stacklevel,
            )

    def _fit_minibatch(self, blocks: _em.Blocks, runs: list[_em.Run], warm: bool, scheduler,
                       callback=None):
        """Stepwise EM over ``blocks`` from ``runs`` (or the current stream), then polish."""
        if warm:
            states = [self._online_state()]
        else:
            states = [_em.OnlineState.from_params(r.params, r.covariances, self.reg_covar)
                      for r in runs]
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        state, run = _em.minibatch_em(
            blocks,
            states,
            batch_size=self.batch_size,
            max_iter=self.max_iter,
            tol=self.tol,
            reg_covar=self.reg_covar,
            decay=self.learning_decay,
            offset=self.learning_offset,
            rng=np.random.default_rng(seed) if self.shuffle else None,
            scheduler=scheduler,
            log=self._log if self.verbose >= 2 else None,
            verbose_interval=self.verbose_interval,
        )
        if self.polish_iter > 0:
            epochs, run.converged, run.n_iter = run.n_iter, False, 0
            _em.batch_em(
                blocks, [run], max_iter=self.polish_iter, tol=self.tol,
                reg_covar=self.reg_covar, scheduler=scheduler,
                on_iteration=self._iteration_hook(callback),
            )
            run.n_iter += epochs
            # The running statistics restart from the polished model.
            state = replace(
                _em.OnlineState.from_params(
                    run.params, run.covariances, self.reg_covar, n_rows=state.stats.n_rows
                ),
                n_steps=state.n_steps,
                step_size=state.step_size,
            )
        if self.verbose >= 1:
            self._log(f"Minibatch EM: lower bound {run.lower_bound:.6f} after {run.n_iter} "
                      f"passes, {state.n_steps} steps, converged={run.converged}")
        self._set_run(run, n_features=blocks.n_features)
        self._set_online_state(state)
        self._warn_not_converged(stacklevel=4)

    def partial_fit(self, X, y=None) -> GaussianMixture:
        """One stepwise-EM update from a batch of rows.

        The first call (on an unfitted estimator) initialises the model from
        this batch as :meth:`fit` would (``init_params``, ``*_init``; with
        ``n_init > 1`` the initialisation under which the batch is most likely
        is kept). Every call then takes one step: the E-step of the batch under
        the current model, blended into the running normalised statistics with
        step size ``rho_t = (t + learning_offset) ** -learning_decay``, and an
        M-step. A model fitted by batch EM starts a new stream from its
        parameters (``t = 0``). A rejected batch (ValueError) leaves the model
        unchanged.

        Parameters
        ----------
        X : array-like, dask array, zarr.Array or str of shape (n_batch, n_features)
            One batch of rows, from any source (a generator, a message queue,
            rows appended to a Zarr store).
        y : Ignored

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
        scheduler = None if lazy else "threads"
        blocks = _em.as_blocks(Xd)
        with _em.blas_guard(scheduler):
            if fitted:
                states = [self._online_state()]
            else:
                states = [_em.OnlineState.from_params(r.params, r.covariances, self.reg_covar)
                          for r in self._initial_runs(blocks, scheduler)]
            packets = _em.estep_pass(blocks, [s.params for s in states], scheduler)
            state, _ = _em.stepwise_step(
                states, packets, reg_covar=self.reg_covar,
                decay=self.learning_decay, offset=self.learning_offset,
            )
        # Only now, with every check passed, does the model change.
        self._set_params(state.params, state.covariances, n_features=d)
        self._set_online_state(state)
        return self

    def _online_state(self) -> _em.OnlineState:
        """The stream state held in the fitted attributes (fresh if there is none)."""
        if not hasattr(self, "running_stats_"):
            return _em.OnlineState.from_params(self._params(), self.covariances_, self.reg_covar)
        stats = SuffStats.unpack(
            self.running_stats_, self.covariance_type, self.n_components, self.n_features_in_
        )
        return _em.OnlineState(
            self._params(), self.covariances_, stats, int(self.n_steps_), float(self.step_size_)
        )

    def _set_online_state(self, state: _em.OnlineState) -> None:
        self.n_steps_ = int(state.n_steps)
        self.n_samples_seen_ = int(state.stats.n_rows)
        self.step_size_ = float(state.step_size)
        self.running_stats_ = state.stats.pack()

    def save(self, path) -> None:
        """Write the fitted model to a file (NPZ and JSON metadata, no pickle).

        The file is written atomically and read back by :func:`dgmm.load`;
        the format is described in :func:`dgmm.io.save_model`.

        Parameters
        ----------
        path : str or PathLike
            Local file path; an existing file is replaced once the new one is complete.
        """
        save_model(self, path)

    def fit_predict(self, X, y=None):
        """Fit the model, then return the most likely component of every row.

        Returns a dask array for dask/Zarr input, a NumPy array otherwise.
        """
        return self.fit(X).predict(X)

    def _initial_runs(self, blocks: _em.Blocks, scheduler) -> list[_em.Run]:
        rng = check_random_state(self.random_state)
        if self.means_init is not None and self.weights_init is not None and (
            self.precisions_init is not None
        ):
            return [self._run_from_stats(None) for _ in range(self.n_init)]
        # random_from_data draws its rows from ``rng`` itself, as scikit-learn does
        seeds = (
            [0] * self.n_init if self.init_params == "random_from_data"
            else rng.randint(np.iinfo(np.int32).max, size=self.n_init).tolist()
        )
        starts = [(self.n_components, seed) for seed in seeds]
        stats = _init.initial_stats(
            blocks, self.init_params, self.covariance_type, starts, rng, scheduler
        )
        return [self._run_from_stats(st) for st in stats]

    def _run_from_stats(self, st) -> _em.Run:
        cov_type = self.covariance_type
        weights = means = covariances = None
        if st is not None:
            weights, means, covariances, _ = K.m_step(st, self.reg_covar)
        if self.weights_init is not None:
            weights = np.asarray(self.weights_init, dtype=np.float64)
        if self.means_init is not None:
            means = np.asarray(self.means_init, dtype=np.float64)
        if self.precisions_init is not None:
            prec_chol = K.precision_cholesky_from_precisions(self.precisions_init, cov_type)
            covariances = K.covariances_from_cholesky(prec_chol, cov_type)
        else:
            prec_chol = K.precision_cholesky(covariances, cov_type)
        return _em.Run(K.Params(cov_type, weights, means, prec_chol), covariances)

    def _model_of(self, run: _em.Run) -> GaussianMixture:
        """A fitted copy of this estimator holding one run's state (for checkpoints)."""
        model = clone(self)
        model._set_run(run, n_features=run.params.n_features)
        return model

    def _set_run(self, run: _em.Run, n_features: int) -> None:
        self._set_params(run.params, run.covariances, n_features)
        self.converged_ = bool(run.converged)
        self.n_iter_ = int(run.n_iter)
        self.lower_bound_ = float(run.lower_bound)
        self.lower_bounds_ = list(run.lower_bounds)

    def _set_params(self, p: K.Params, covariances: np.ndarray, n_features: int) -> None:
        self.weights_ = p.weights
        self.means_ = p.means
        self.precisions_cholesky_ = p.precisions_cholesky
        self.covariances_ = covariances
        self.precisions_ = K.precisions_from_cholesky(p.precisions_cholesky, p.covariance_type)
        self.n_features_in_ = int(n_features)

    def _params(self) -> K.Params:
        return K.Params(self.covariance_type, self.weights_, self.means_, self.precisions_cholesky_)

    def _iteration_hook(self, callback, checkpoint=None, manifest=None):
        """What runs after every EM pass: checkpoint, verbose lines, the user's callback."""
        best_before = [-np.inf]

        def hook(iteration: int, runs: list[_em.Run], seconds: float) -> None:
            best = max(r.lower_bound for r in runs)
            info = {
                "iteration": iteration,
                "lower_bound": best,
                "change": best - best_before[0],
                "seconds": seconds,
                "active": sum(not r.converged for r in runs),
            }
            best_before[0] = best
            if checkpoint is not None:
                io.write_checkpoint(checkpoint, [self._model_of(r) for r in runs],
                                    {**manifest, "iteration": iteration})
            if self.verbose >= 2 and iteration % self.verbose_interval == 0:
                self._log(f"  iteration {iteration}: lower bound {best:.6f}, "
                          f"change {info['change']:.3e}, {seconds:.2f}s")
            if callback is not None:
                callback(info)

        return hook

    def _log(self, message: str) -> None:
        print(message, file=sys.stdout, flush=True)

    # ------------------------------------------------------------------
    # Per-row outputs: lazy for lazy input, NumPy otherwise
    # ------------------------------------------------------------------

    def _per_row(self, X, what: str):
        Xd, lazy = as_dask_array(X)
        self._check_fitted_features(Xd.shape[1])
        params = dask.delayed(self._params(), pure=True, traverse=False)
        if what == "proba":
            out = Xd.map_blocks(
                _predict_block, params, what, dtype=np.float64,
                chunks=(Xd.chunks[0], (self.n_components,)),
            )
        else:
            dtype = np.int64 if what == "labels" else np.float64
            out = Xd.map_blocks(_predict_block, params, what, drop_axis=1, dtype=dtype)
        if lazy:
            return out
        with _em.blas_guard("threads"):
            return out.compute(scheduler="threads")

    def predict(self, X):
        """Most likely component of every row, shape (n_samples,)."""
        return self._per_row(X, "labels")

    def predict_proba(self, X):
        """Responsibilities of every component for every row, shape (n_samples, n_components)."""
        return self._per_row(X, "proba")

    def score_samples(self, X):
        """Log-likelihood ``log p(x)`` of every row, shape (n_samples,)."""
        return self._per_row(X, "log_density")

    def score(self, X, y=None) -> float:
        """Mean log-likelihood per row (a float, computed even for lazy input)."""
        scores = self.score_samples(X)
        return float(scores.mean().compute() if hasattr(scores, "compute") else scores.mean())

    def _n_parameters(self) -> int:
        return K.n_parameters(self.n_components, self.n_features_in_, self.covariance_type)

    def criteria(self, mean_log_likelihood: float, n_samples: int) -> dict[str, float]:
        """BIC and AIC from a mean log-likelihood already computed on ``n_samples`` rows.

        Lets callers that scored the data once (a CLI job, a model sweep) get
        both criteria without another pass.
        """
        total = -2.0 * mean_log_likelihood * n_samples
        p = self._n_parameters()
        return {"bic": float(total + p * np.log(n_samples)), "aic": float(total + 2.0 * p)}

    def bic(self, X) -> float:
        """Bayesian information criterion on X (lower is better)."""
        return self.criteria(self.score(X), as_dask_array(X)[0].shape[0])["bic"]

    def aic(self, X) -> float:
        """Akaike information criterion on X (lower is better)."""
        return self.criteria(self.score(X), as_dask_array(X)[0].shape[0])["aic"]

    def sample(self, n_samples: int = 1):
        """Draw samples from the fitted mixture.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            The component each sample came from.
        """
        check_is_fitted(self, "means_")
        _check_int("n_samples", n_samples, 1)
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        d = self.n_features_in_
        parts = []
        for k, (mean, count) in enumerate(zip(self.means_, counts, strict=True)):
            if self.covariance_type in ("full", "tied"):
                cov = self.covariances_[k] if self.covariance_type == "full" else self.covariances_
                parts.append(rng.multivariate_normal(mean, cov, int(count)))
            else:
                scale = np.sqrt(self.covariances_[k])
                parts.append(mean + rng.standard_normal(size=(int(count), d)) * scale)
        y = np.repeat(np.arange(self.n_components), counts)
        return np.vstack(parts), y


def _predict_block(block, params, what, block_info=None):
    offset = block_info[0]["array-location"][0][0] if block_info else 0
    return K.predict_block(block, params, what, row_offset=offset)


def _run_of(model: GaussianMixture) -> _em.Run:
    """The EM run state held by a (checkpointed) fitted model."""
    return _em.Run(model._params(), model.covariances_, lower_bound=model.lower_bound_,
                   lower_bounds=list(model.lower_bounds_), n_iter=model.n_iter_,
                   converged=model.converged_)


# Settings that change the numbers a fit produces; a checkpoint must match them.
_CHECKPOINT_SETTINGS = ("n_components", "covariance_type", "tol", "reg_covar", "max_iter",
                        "n_init", "init_params", "random_state")


def _checkpoint_manifest(model: GaussianMixture, Xd, blocks: _em.Blocks, scheduler) -> dict:
    """What identifies a fit: the data (shape, dtype, chunking, first rows) and settings."""
    import hashlib

    (first,) = _em.compute(blocks.delayed[0], scheduler=scheduler)
    digest = hashlib.sha256(np.ascontiguousarray(first[:1000]).tobytes())
    digest.update(repr(Xd.chunks[0]).encode())
    settings = {}
    for name in _CHECKPOINT_SETTINGS:
        value = getattr(model, name)
        settings[name] = value if value is None or isinstance(value, (int, float, str)) else repr(
            value)
    return {
        "data": {"shape": list(Xd.shape), "dtype": str(Xd.dtype), "fingerprint":
                 digest.hexdigest()},
        "settings": settings,
    }


def _best_run(runs: list[_em.Run]) -> _em.Run:
    best = runs[0]
    for r in runs[1:]:
        if r.lower_bound > best.lower_bound:
            best = r
    return best


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _check_number(name: str, value, minimum: float) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= minimum:
        raise ValueError(f"{name} must be a number >= {minimum}; got {value!r}")


def _check_shape(name: str, value, shape: tuple) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def select_n_components(
    X,
    n_components=range(1, 11),
    *,
    criterion: str = "bic",
    **params,
) -> tuple[GaussianMixture, list[dict]]:
    """Fit one mixture per candidate number of components and keep the best.

    All candidates (and their ``n_init`` restarts) are fitted together: every
    initialisation pass and every EM pass over the data scores all of them at
    once, and one last shared pass scores the final models. For out-of-core
    data this costs about as many passes as a single fit.

    Parameters
    ----------
    X : array-like, dask array, zarr.Array or str of shape (n_samples, n_features)
    n_components : iterable of int, default=range(1, 11)
        Candidate numbers of components.
    criterion : {'bic', 'aic'}, default='bic'
        Lower is better.
    **params
        Other :class:`GaussianMixture` parameters (not the ``*_init`` arrays).

    Returns
    -------
    best : GaussianMixture
        The fitted model with the lowest criterion.
    table : list of dict
        Per candidate: ``n_components``, ``bic``, ``aic``, ``score`` (mean
        log-likelihood), ``n_iter``, ``converged``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be 'bic' or 'aic'; got {criterion!r}")
    for name in ("weights_init", "means_init", "precisions_init"):
        if params.get(name) is not None:
            raise ValueError(f"{name} cannot be used when selecting n_components")
    candidates = sorted({int(k) for k in n_components})
    if not candidates:
        raise ValueError("n_components must list at least one candidate")
    Xd, lazy = as_dask_array(X)
    n, d = Xd.shape
    models = [GaussianMixture(k, **params) for k in candidates]
    for m in models:
        m._check_parameters(d)
    if n < candidates[-1]:
        raise ValueError(f"Expected n_samples >= n_components but got n_components = "
                         f"{candidates[-1]}, n_samples = {n}")
    proto = models[0]
    scheduler = None if lazy else "threads"
    blocks = _em.as_blocks(Xd)
    rng = check_random_state(proto.random_state)
    starts = [
        (k, int(seed)) for k in candidates
        for seed in rng.randint(np.iinfo(np.int32).max, size=proto.n_init)
    ]
    with _em.blas_guard(scheduler):
        stats = _init.initial_stats(
            blocks, proto.init_params, proto.covariance_type, starts, rng, scheduler
        )
        runs = [models[candidates.index(k)]._run_from_stats(st)
                for (k, _), st in zip(starts, stats, strict=True)]
        _em.batch_em(blocks, runs, max_iter=proto.max_iter, tol=proto.tol,
                     reg_covar=proto.reg_covar, scheduler=scheduler)
        best_runs = [_best_run(runs[i * proto.n_init : (i + 1) * proto.n_init])
                     for i in range(len(candidates))]
        final = _em.estep_pass(blocks, [r.params for r in best_runs], scheduler=scheduler)
    table = []
    for model, run, st in zip(models, best_runs, final, strict=True):
        model._set_run(run, n_features=d)
        table.append({
            "n_components": model.n_components,
            **model.criteria(st.loglik / n, n),
            "score": float(st.loglik / n),
            "n_iter": run.n_iter,
            "converged": run.converged,
        })
    best = min(range(len(models)), key=lambda i: table[i][criterion])
    return models[best], table
