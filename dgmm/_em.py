"""Drivers: the EM loops, and the one function that takes starts to fitted runs.

:func:`fit_groups` is the only place where a fit runs from initialisation to
the end (batch or minibatch EM, ``n_init`` restarts, polish passes, warm
start, resume, the per-iteration hook); :class:`~dgmm.GaussianMixture` and
:func:`~dgmm.select_n_components` both call it, so every parameter means the
same everywhere. The loops below it (:func:`batch_em`, :func:`minibatch_em`)
run any number of runs at once and share every data pass between them.
What differs between models is the M-step each group carries
(:class:`~dgmm._kernels.MStep`): EM's maximum-likelihood update
(:data:`GAUSSIAN`) or the variational update of
:class:`~dgmm.BayesianGaussianMixture`; the passes are the same.

Nothing here reads or writes files: checkpoints and progress lines reach the
caller through the per-iteration hook.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
from sklearn.utils import check_random_state

from dgmm import _init
from dgmm import _kernels as kernels
from dgmm._passes import Blocks, block_pass, estep_pass
from dgmm._stats import SuffStats

ALGORITHMS = ("batch", "minibatch")


class EmptyComponentWarning(UserWarning):
    """A mixture component received (almost) no responsibility in an M-step."""


# --------------------------------------------------------------------------
# What a fit is asked to do
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The estimator parameters that drive EM, with the estimator's names and meanings.

    ``covariance_type`` is not among them: it belongs to each :class:`Group`.
    """

    tol: float = 1e-3
    reg_covar: float = 1e-6
    max_iter: int = 100
    init_params: str = "kmeans"
    verbose: int = 0
    verbose_interval: int = 10
    algorithm: str = "batch"
    batch_size: int = 10_000
    learning_decay: float = 0.6
    learning_offset: float = 0.0
    shuffle: bool = True
    polish_iter: int = 0
    min_step_size: float = 0.0
    missing: str = "error"

    @property
    def marginalize(self) -> bool:
        """Whether rows with NaN enter through their observed coordinates."""
        return self.missing == "marginalize"

    @classmethod
    def of(cls, params: Mapping) -> Settings:
        """The settings among an estimator's ``get_params()``.

        Names the estimator does not have keep their defaults (an estimator
        without stepwise EM need not know ``min_step_size``).
        """
        return cls(**{f.name: params[f.name] for f in fields(cls) if f.name in params})


def params_from_stats(stats: SuffStats, reg_covar: float) -> tuple[kernels.Params, np.ndarray]:
    """M-step: new parameters (with precision Cholesky) and covariances.

    Every M-step of every driver goes through here, so an empty component is
    always reported.
    """
    weights, means, covariances, empty = kernels.m_step(stats, reg_covar)
    if empty.size:
        warnings.warn(
            f"Component(s) {empty.tolist()} received no responsibility in this M-step; "
            "they keep their previous means, their covariances fall to reg_covar "
            "and their weights to ~0. Consider fewer components or another init.",
            EmptyComponentWarning,
            stacklevel=4,
        )
    prec_chol = kernels.precision_cholesky(covariances, stats.covariance_type)
    return kernels.Params(stats.covariance_type, weights, means, prec_chol), covariances


@dataclass(frozen=True)
class GaussianMStep:
    """The EM M-step (:class:`~dgmm._kernels.MStep`): the maximum-likelihood update.

    Its bound is the mean log-likelihood of the parameters the pass used, as
    scikit-learn's ``GaussianMixture`` reports it.
    """

    def __call__(self, stats: SuffStats, reg_covar: float,
                 previous: kernels.Params | None) -> kernels.Estimate:
        params, covariances = params_from_stats(stats, reg_covar)
        return kernels.Estimate(params, covariances, None, stats.loglik / stats.n)

    def running(self, stats: SuffStats) -> SuffStats:
        return stats  # the maximum-likelihood update does not depend on the scale

    def restore(self, record: Mapping) -> None:
        return None

    def identity(self) -> list:
        return []


GAUSSIAN = GaussianMStep()


@dataclass(frozen=True)
class Group:
    """Starts competing for one model: ``n_init`` initialisations of ``n_components``.

    ``random_state`` is the estimator's: an int gives every group the same
    random stream, so a group fits exactly as a lone estimator with these
    settings would. Each group has its own ``covariance_type``: its
    initialisations are made for it, and every M-step keeps the type of the
    parameters it updates, so groups of several types share every pass.
    ``m_step`` is the model: EM (:data:`GAUSSIAN`) or the variational update
    of :class:`dgmm._variational.VariationalMStep`.
    """

    n_components: int
    n_init: int = 1
    random_state: object = None
    covariance_type: str = "full"
    m_step: kernels.MStep = GAUSSIAN


@dataclass(frozen=True)
class InitialParams:
    """User-supplied starting parameters (``weights_init``, ...); None where not given."""

    weights: np.ndarray | None = None
    means: np.ndarray | None = None
    precisions: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        return all(v is not None for v in (self.weights, self.means, self.precisions))

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.weights, self.means, self.precisions))


NO_INIT = InitialParams()


# --------------------------------------------------------------------------
# Runs: one initialisation's state, and the M-step that moves it
# --------------------------------------------------------------------------


@dataclass
class Run:
    """The state of one run (one initialisation).

    ``posterior`` is the model's state beyond ``params`` (the variational
    posterior; None for EM).
    """

    params: kernels.Params
    covariances: np.ndarray | None
    lower_bound: float = -np.inf
    lower_bounds: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    posterior: object = None

    def to_record(self) -> dict:
        """The run as plain arrays and numbers (what a checkpoint stores)."""
        p = self.params
        record = {
            "weights": p.weights, "means": p.means,
            "precisions_cholesky": p.precisions_cholesky, "covariances": self.covariances,
            "lower_bound": float(self.lower_bound), "lower_bounds": list(self.lower_bounds),
            "n_iter": int(self.n_iter), "converged": bool(self.converged),
        }
        if p.log_weights is not None:
            record["log_weights"] = p.log_weights
        if self.posterior is not None:
            record.update(self.posterior.to_record())
        return record

    @classmethod
    def from_record(cls, record: Mapping, covariance_type: str,
                    m_step: kernels.MStep = GAUSSIAN) -> Run:
        """Inverse of :meth:`to_record`."""
        params = kernels.Params(covariance_type, record["weights"], record["means"],
                                record["precisions_cholesky"], record.get("log_weights"))
        return cls(params, record["covariances"], float(record["lower_bound"]),
                   [float(v) for v in record["lower_bounds"]], int(record["n_iter"]),
                   bool(record["converged"]), m_step.restore(record))


def initial_run(
    stats: SuffStats | None, settings: Settings, cov_type: str, init: InitialParams,
    m_step: kernels.MStep = GAUSSIAN,
) -> Run:
    """A run starting from the M-step of ``stats``, overridden by the user's ``*_init``.

    As in scikit-learn, the covariances come from the statistics about their
    own means even when ``means_init`` is given; ``stats`` may be None when
    every parameter is supplied.
    """
    if init.complete:
        weights, means = init.weights, init.means
    else:
        estimate = m_step(stats, settings.reg_covar, None)
        if init.empty:
            return Run(estimate.params, estimate.covariances, posterior=estimate.posterior)
        params, covariances = estimate.params, estimate.covariances
        weights = params.weights if init.weights is None else init.weights
        means = params.means if init.means is None else init.means
        prec_chol = params.precisions_cholesky
    if init.precisions is not None:
        prec_chol = kernels.precision_cholesky_from_precisions(init.precisions, cov_type)
        covariances = kernels.covariances_from_cholesky(prec_chol, cov_type)
    params = kernels.Params(cov_type, np.asarray(weights, dtype=np.float64),
                            np.asarray(means, dtype=np.float64), prec_chol)
    return Run(params, covariances)


def initial_runs(
    blocks: Blocks,
    settings: Settings,
    groups: Sequence[Group],
    init: InitialParams = NO_INIT,
    scheduler=None,
) -> list[list[Run]]:
    """The starting runs of every group, all initialised in shared data passes.

    Each group draws its seeds from its own ``check_random_state(random_state)``
    exactly as a lone estimator does, so a group starts where such a fit would.
    With ``settings.missing == 'marginalize'`` one more pass finds the
    observed means that stand in for missing values during initialisation.
    """
    rngs = [check_random_state(g.random_state) for g in groups]
    if init.complete:
        return [[initial_run(None, settings, g.covariance_type, init) for _ in range(g.n_init)]
                for g in groups]
    starts, start_rngs = [], []
    for g, rng in zip(groups, rngs, strict=True):
        # random_from_data draws its rows from ``rng`` itself, as scikit-learn does
        seeds = (
            [0] * g.n_init if settings.init_params == "random_from_data"
            else rng.randint(np.iinfo(np.int32).max, size=g.n_init).tolist()
        )
        starts += [_init.Start(g.n_components, seed, g.covariance_type) for seed in seeds]
        start_rngs += [rng] * g.n_init
    fill = _init.observed_means(blocks, scheduler) if settings.marginalize else None
    with blocks.filled(fill):
        stats = _init.initial_stats(blocks, settings.init_params, starts, start_rngs, scheduler)
    m_steps = [g.m_step for g in groups for _ in range(g.n_init)]
    runs = iter([initial_run(st, settings, st.covariance_type, init, m)
                 for st, m in zip(stats, m_steps, strict=True)])
    return [[next(runs) for _ in range(g.n_init)] for g in groups]


# Lower bounds this close (relative) are equal: runs that reached one optimum
# (often with permuted components) differ only by rounding, which must not choose.
TIED_BOUND_RTOL = 1e-12


def best_run(runs: Sequence[Run]) -> Run:
    """The run with the highest lower bound (the first of equals up to rounding)."""
    best = runs[0]
    for r in runs[1:]:
        margin = TIED_BOUND_RTOL * abs(best.lower_bound) if np.isfinite(best.lower_bound) else 0
        if r.lower_bound > best.lower_bound + margin:
            best = r
    return best


# --------------------------------------------------------------------------
# Batch EM
# --------------------------------------------------------------------------

# on_iteration(iteration, runs, seconds): called after every batch pass, with
# the runs of every group (a list of lists).
IterationHook = Callable[[int, list[list[Run]], float], None]


def batch_em(
    blocks: Blocks,
    runs: list[list[Run]],
    *,
    max_iter: int,
    tol: float,
    reg_covar: float,
    scheduler=None,
    on_iteration: IterationHook | None = None,
    missing: bool = False,
    m_steps: Sequence[kernels.MStep] | None = None,
) -> list[Run]:
    """Run batch EM for several initialisations at once, one data pass per iteration.

    Each pass returns, for every active run, the statistics for its next M-step
    and the log-likelihood of its current parameters (so the convergence test
    needs no extra pass). Runs that converge drop out of later passes.
    Iteration semantics match scikit-learn: ``lower_bound`` is the mean
    log-likelihood of the parameters before the last M-step.

    Runs restored from a checkpoint continue from their ``n_iter``.
    ``runs`` holds one list of runs per group, ``m_steps`` one M-step per
    group (default: EM for all); ``on_iteration(iteration, runs, seconds)``
    is called after every pass.
    """
    m_steps = [GAUSSIAN] * len(runs) if m_steps is None else m_steps
    active = [(r, m) for group, m in zip(runs, m_steps, strict=True) for r in group
              if not r.converged]
    for it in range(max(r.n_iter for group in runs for r in group) + 1, max_iter + 1):
        if not active:
            break
        start = time.perf_counter()
        stats = estep_pass(blocks, [r.params for r, _ in active], scheduler=scheduler,
                           missing=missing)
        still = []
        for (run, m_step), st in zip(active, stats, strict=True):
            prev = run.lower_bound
            estimate = m_step(st, reg_covar, run.params)
            run.lower_bound = estimate.lower_bound
            run.lower_bounds.append(run.lower_bound)
            run.params, run.covariances = estimate.params, estimate.covariances
            run.posterior = estimate.posterior
            run.n_iter = it
            if abs(run.lower_bound - prev) < tol:
                run.converged = True
            else:
                still.append((run, m_step))
        active = still
        if on_iteration is not None:
            on_iteration(it, runs, time.perf_counter() - start)
    return runs


# --------------------------------------------------------------------------
# Stepwise (online) EM: running normalised statistics s, and for each
# minibatch t with packet s_t: s <- (1 - rho_t) s + rho_t s_t / n_t, then an
# M-step from s; rho_t = max((t + offset) ** -decay, floor).
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class OnlineState:
    """Everything stepwise EM carries from one step to the next (immutable).

    Attributes
    ----------
    params, covariances
        The model the next E-step uses (the M-step of ``stats``).
    stats : SuffStats
        Running normalised statistics (``n`` = 1 up to rounding); ``n_rows``
        counts the rows that have entered them.
    n_steps : int
        Steps taken, ``t``.
    step_size : float
        ``rho`` of the last step (NaN before the first).
    posterior : object
        The model's state beyond ``params`` (variational posterior; None for EM).
    """

    params: kernels.Params
    covariances: np.ndarray
    stats: SuffStats
    n_steps: int = 0
    step_size: float = float("nan")
    posterior: object = None

    @classmethod
    def from_params(
        cls, params: kernels.Params, covariances: np.ndarray, reg_covar: float, n_rows: int = 0,
        posterior: object = None,
    ) -> OnlineState:
        """A state whose running statistics reproduce ``params`` (no steps taken).

        For the variational mixture they are the statistics whose EM M-step
        gives its mean weights and covariances: an approximation, which the
        first step replaces entirely when ``learning_offset`` is 0.
        """
        stats = replace(kernels.stats_from_params(params, covariances, reg_covar), n_rows=n_rows)
        return cls(params, covariances, stats, posterior=posterior)


def step_size(t: int, decay: float, offset: float, floor: float = 0.0) -> float:
    """``rho_t = max((t + offset) ** -decay, floor)`` for step ``t`` >= 1.

    A ``floor`` > 0 stops the steps from shrinking to zero: the running
    statistics become an exponentially weighted average in which a minibatch's
    weight decays by ``1 - floor`` at every later step, so data older than
    about ``1 / floor`` minibatches fade (a stream that drifts is followed
    rather than averaged).
    """
    return float(max((t + offset) ** -decay, floor))


def stepwise_step(
    states: Sequence[OnlineState],
    packets: Sequence[SuffStats],
    *,
    reg_covar: float,
    decay: float,
    offset: float,
    floor: float = 0.0,
    m_step: kernels.MStep = GAUSSIAN,
) -> tuple[OnlineState, SuffStats]:
    """One stepwise-EM step: the new state and the packet it used.

    ``packets[i]`` holds the statistics of the minibatch under
    ``states[i].params``. With several candidates (initialisations, first step
    only) the one under which the minibatch is most likely is kept. The inputs
    are left untouched, so a caller commits the new state only on success.
    """
    best = int(np.argmax([p.loglik / p.n for p in packets]))
    state, packet = states[best], packets[best]
    t = state.n_steps + 1
    rho = step_size(t, decay, offset, floor)
    stats = state.stats.stepped(packet, rho)
    estimate = m_step(m_step.running(stats), reg_covar, None)
    return OnlineState(estimate.params, estimate.covariances, stats, t, rho,
                       estimate.posterior), packet


def epoch_plan(
    sizes: Sequence[int], batch_size: int, rng: np.random.Generator | None,
    contiguous: bool = False,
) -> list[list[tuple[int, int, int]]]:
    """The minibatches of one epoch, as lists of ``(block, start, stop)`` pieces.

    Blocks larger than ``batch_size`` are cut into equal slices of at most
    ``batch_size`` rows; the pieces are shuffled by ``rng`` (kept in order if
    ``None``) and grouped, in that order, into about ``round(n_rows /
    batch_size)`` minibatches of about equal row counts (a piece goes to the
    minibatch its middle row falls in). Every row is in exactly one minibatch.

    ``contiguous`` (storage order; ``rng`` is then ignored): the minibatches
    are the consecutive row ranges ``[j n / m, (j + 1) n / m)`` (integer
    division) of the ``n`` rows, ``m = max(1, round(n / batch_size))``,
    whatever the blocks: the same rows in blocks of any sizes (a NumPy array,
    a dask array, a Zarr store) give the same minibatches, each made of the
    pieces of the blocks it spans (what ``partial_fit`` steps through).
    """
    if contiguous:
        return _row_plan(sizes, batch_size)
    pieces = []
    for b, n in enumerate(sizes):
        m = -(-n // batch_size)
        pieces += [(b, n * j // m, n * (j + 1) // m) for j in range(m)]
    if rng is not None:
        pieces = [pieces[i] for i in rng.permutation(len(pieces))]
    n_rows = sum(sizes)
    n_batches = max(1, round(n_rows / batch_size))
    ends = np.cumsum([stop - start for _, start, stop in pieces])
    mids = ends - np.diff(ends, prepend=0) / 2
    group = np.floor(mids * n_batches / n_rows).astype(int)
    return [
        [p for p, g in zip(pieces, group, strict=True) if g == j]
        for j in np.unique(group)
    ]


def _row_plan(sizes: Sequence[int], batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Storage-order minibatches: consecutive row ranges, cut into the blocks they span."""
    n_rows = int(sum(sizes))
    m = max(1, round(n_rows / batch_size))
    cuts = [n_rows * j // m for j in range(m + 1)]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    plan = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        first = int(np.searchsorted(offsets, lo, side="right")) - 1
        last = int(np.searchsorted(offsets, hi, side="left"))
        plan.append([(b, max(lo, offsets[b]) - offsets[b], min(hi, offsets[b + 1]) - offsets[b])
                     for b in range(first, last) if offsets[b] < offsets[b + 1]])
    return [[(int(b), int(a), int(z)) for b, a, z in batch] for batch in plan]


# on_step(group, state): called after every stepwise-EM step of a group.
StepHook = Callable[[int, OnlineState], None]


def minibatch_em(
    blocks: Blocks,
    groups: list[list[OnlineState]],
    settings: Settings,
    *,
    rng: np.random.Generator | None,
    scheduler=None,
    log: Callable[[str], None] | None = None,
    on_step: StepHook | None = None,
    contiguous: bool = False,
    m_steps: Sequence[kernels.MStep] | None = None,
) -> list[tuple[OnlineState, Run]]:
    """Stepwise EM over the row blocks, an epoch (a full pass) at a time.

    Every group runs its own stepwise EM, and all groups share each
    minibatch's E-step pass (its pieces are computed in parallel and
    tree-summed). The states within a group (initialisations) compete on the
    first minibatch only. An epoch's log-likelihood is the mean over its rows
    under the parameters in force when each row was visited; a group stops
    after ``max_iter`` epochs or when that changes by less than ``tol``.
    ``rng`` shuffles the pieces of every epoch (storage order if None);
    ``contiguous`` makes the minibatches consecutive row ranges whatever the
    blocks (see :func:`epoch_plan`).

    Returns, per group, the final state and a :class:`Run` with one
    ``lower_bounds`` entry per epoch (``n_iter`` epochs). ``m_steps`` holds
    one M-step per group (default: EM for all).
    """
    s = settings
    m_steps = [GAUSSIAN] * len(groups) if m_steps is None else m_steps
    current = [list(states) for states in groups]
    runs = [Run(states[0].params, states[0].covariances) for states in groups]
    active = list(range(len(groups)))
    t_last = time.perf_counter()
    for epoch in range(1, s.max_iter + 1):
        totals = {g: [0.0, 0.0] for g in active}
        for pieces in epoch_plan(blocks.sizes, s.batch_size, rng, contiguous):
            flat = [state.params for g in active for state in current[g]]
            packets = iter(estep_pass(blocks, flat, scheduler, pieces=pieces,
                                      missing=s.marginalize))
            for g in active:
                mine = [next(packets) for _ in current[g]]
                state, packet = stepwise_step(current[g], mine, reg_covar=s.reg_covar,
                                              decay=s.learning_decay, offset=s.learning_offset,
                                              floor=s.min_step_size, m_step=m_steps[g])
                current[g] = [state]
                if on_step is not None:
                    on_step(g, state)
                totals[g][0] += packet.loglik
                totals[g][1] += packet.n
        now = time.perf_counter()
        still = []
        for g in active:
            run, state = runs[g], current[g][0]
            prev = run.lower_bound
            run.lower_bound = totals[g][0] / totals[g][1]
            run.lower_bounds.append(run.lower_bound)
            run.n_iter = epoch
            run.converged = abs(run.lower_bound - prev) < s.tol
            if log is not None and (epoch % s.verbose_interval == 0 or run.converged
                                    or epoch == s.max_iter):
                log(f"  {_label(state.params, len(groups))}epoch {epoch}: mean log-likelihood "
                    f"{run.lower_bound:.6f}, {state.n_steps} steps, step size "
                    f"{state.step_size:.4g}, {now - t_last:.2f}s")
            if not run.converged:
                still.append(g)
        t_last = now
        active = still
        if not active:
            break
    out = []
    for states, run in zip(current, runs, strict=True):
        run.params, run.covariances = states[0].params, states[0].covariances
        run.posterior = states[0].posterior
        out.append((states[0], run))
    return out


def _label(params: kernels.Params, n_groups: int) -> str:
    """A prefix naming the candidate in progress lines, when there are several."""
    if n_groups == 1:
        return ""
    return f"n_components={params.n_components}, covariance_type={params.covariance_type!r}: "


# --------------------------------------------------------------------------
# The one driver
# --------------------------------------------------------------------------


@dataclass
class Fitted:
    """The outcome of one group: its best run, all its runs, and its stream state.

    ``state`` is the stepwise-EM state after a minibatch fit (what
    ``partial_fit`` continues), None after batch EM. ``score`` is the mean
    log-likelihood of the best run's final parameters when asked for.
    """

    best: Run
    runs: list[Run]
    state: OnlineState | None = None
    score: float = float("nan")


def fit_groups(
    blocks: Blocks,
    settings: Settings,
    groups: Sequence[Group],
    *,
    init: InitialParams = NO_INIT,
    start: list[list[Run]] | None = None,
    stream: list[OnlineState] | None = None,
    scheduler=None,
    on_iteration: IterationHook | None = None,
    log: Callable[[str], None] | None = None,
    score: bool = False,
) -> list[Fitted]:
    """Fit every group from its initialisation to the end; all groups share every pass.

    Parameters
    ----------
    blocks : Blocks
        The data.
    settings : Settings
        What to run: batch or minibatch EM, iterations, tolerance, polish, ...
    groups : sequence of Group
        One per model wanted (a fit has one; a selection one per candidate).
    init : InitialParams
        User-supplied starting parameters.
    start : list of list of Run, optional
        Runs to continue instead of initialising, per group (a resumed
        checkpoint, or a warm start from a fitted model).
    stream : list of OnlineState, optional
        Per group, the stream a minibatch fit continues (a warm start).
    scheduler
        Dask scheduler for the passes (None: the active one).
    on_iteration : callable, optional
        Called after every batch pass (EM and polish) with
        ``(iteration, runs, seconds)``: progress, callbacks, checkpoints.
    log : callable, optional
        Receives progress lines (``verbose >= 1``: one per run;
        ``verbose >= 2``: also one per epoch of minibatch EM).
    score : bool, default=False
        Score every group's final model in one more shared pass
        (:attr:`Fitted.score`), as a model selection needs.

    Returns
    -------
    list of Fitted, one per group
    """
    s = settings
    if start is None and stream is None:
        start = initial_runs(blocks, s, groups, init, scheduler)
    if s.algorithm == "minibatch":
        states = ([[state] for state in stream] if stream is not None else [
            [OnlineState.from_params(r.params, r.covariances, s.reg_covar, posterior=r.posterior)
             for r in runs]
            for runs in start
        ])
        fitted = _minibatch(blocks, s, groups, states, scheduler, on_iteration, log)
    else:
        if s.max_iter > 0:
            batch_em(blocks, start, max_iter=s.max_iter,
                     tol=s.tol, reg_covar=s.reg_covar, scheduler=scheduler,
                     on_iteration=on_iteration, missing=s.marginalize,
                     m_steps=[g.m_step for g in groups])
        # With no iterations scikit-learn keeps the last initialisation.
        fitted = [Fitted(runs[-1] if s.max_iter == 0 else best_run(runs), runs)
                  for runs in start]
    if log is not None and s.verbose >= 1:
        for f in fitted:
            for i, r in enumerate(f.runs):
                what = "Minibatch EM" if f.state is not None else f"Initialisation {i}"
                log(f"{_label(r.params, len(fitted))}{what}: lower bound {r.lower_bound:.6f} "
                    f"after {r.n_iter} {'iterations' if f.state is None else 'passes'}, "
                    f"converged={r.converged}")
    if score:
        totals = estep_pass(blocks, [f.best.params for f in fitted], scheduler=scheduler,
                            missing=s.marginalize)
        for f, st in zip(fitted, totals, strict=True):
            f.score = float(st.loglik / st.n)
    return fitted


def _minibatch(blocks, s: Settings, groups, states, scheduler, on_iteration, log) -> list[Fitted]:
    """Stepwise EM for every group, then ``polish_iter`` batch passes shared by all."""
    # One epoch order for every group, drawn as a lone estimator would draw it.
    seed = check_random_state(groups[0].random_state).randint(np.iinfo(np.int32).max)
    out = minibatch_em(blocks, states, s, rng=np.random.default_rng(seed) if s.shuffle else None,
                       scheduler=scheduler, log=log if s.verbose >= 2 else None,
                       m_steps=[g.m_step for g in groups])
    if s.polish_iter > 0:
        runs = [run for _, run in out]
        epochs = [run.n_iter for run in runs]
        for run in runs:
            run.converged, run.n_iter = False, 0
        batch_em(blocks, [[run] for run in runs], max_iter=s.polish_iter, tol=s.tol,
                 reg_covar=s.reg_covar, scheduler=scheduler, on_iteration=on_iteration,
                 missing=s.marginalize, m_steps=[g.m_step for g in groups])
        polished = []
        for (state, run), n_epochs in zip(out, epochs, strict=True):
            run.n_iter += n_epochs
            # The running statistics restart from the polished model.
            fresh = OnlineState.from_params(run.params, run.covariances, s.reg_covar,
                                            n_rows=state.stats.n_rows, posterior=run.posterior)
            polished.append((replace(fresh, n_steps=state.n_steps, step_size=state.step_size),
                             run))
        out = polished
    return [Fitted(run, [run], state) for state, run in out]


# --------------------------------------------------------------------------
# What every fit reports after a pass, and what identifies it for a resume
# --------------------------------------------------------------------------


def iteration_hook(
    settings: Settings,
    log: Callable[[str], None] | None = None,
    callback: Callable[[dict], None] | None = None,
    save: Callable[[int, list[list[Run]]], None] | None = None,
) -> IterationHook:
    """What runs after every batch pass: ``save`` (a checkpoint), verbose lines, ``callback``.

    ``callback`` receives a dict: ``iteration``, ``lower_bound`` (best over
    all runs), ``change`` (of that since the previous pass), ``seconds`` (of
    the pass), ``active`` (runs still iterating).
    """
    best_before = [-np.inf]

    def hook(iteration: int, runs: list[list[Run]], seconds: float) -> None:
        best = max(r.lower_bound for group in runs for r in group)
        info = {
            "iteration": iteration,
            "lower_bound": best,
            "change": best - best_before[0],
            "seconds": seconds,
            "active": sum(not r.converged for group in runs for r in group),
        }
        best_before[0] = best
        if save is not None:
            save(iteration, runs)
        if log is not None and settings.verbose >= 2 and iteration % settings.verbose_interval == 0:
            log(f"  iteration {iteration}: lower bound {best:.6f}, "
                f"change {info['change']:.3e}, {seconds:.2f}s")
        if callback is not None:
            callback(info)

    return hook


# Settings that do not change the numbers a fit produces.
_COSMETIC = ("verbose", "verbose_interval")


def fit_identity(blocks: Blocks, settings: Settings, groups: Sequence[Group]) -> dict:
    """What a checkpoint must match before its runs are read: data shape and blocking, settings.

    It costs nothing (no data are read). The data's content is matched
    separately, over every row (:func:`data_content`, :func:`check_same_data`).
    """
    named = {f.name: getattr(settings, f.name) for f in fields(settings)
             if f.name not in _COSMETIC}
    named["groups"] = [[g.n_components, g.n_init, _plain(g.random_state), g.covariance_type,
                        *g.m_step.identity()] for g in groups]
    return {
        "data": {"shape": [blocks.n_rows, blocks.n_features], "rows_per_block": blocks.sizes,
                 "side": sorted(blocks.side), "total_weight": blocks.total_weight},
        "settings": {k: _plain(v) for k, v in named.items()},
    }


def _nothing(block, row_offset, index, **side) -> None:
    return None


def _none(*parts) -> None:
    return None


def data_content(blocks: Blocks, scheduler=None) -> dict:
    """The fingerprint of every row of the data (and its weights and labels), per block.

    A fit's first whole pass (initialisation or its first E-step) computes
    it as a side effect of reading (:meth:`Blocks.observe`), so a checkpoint
    written after any pass costs no read of its own. Only when no whole pass
    has been made yet (resuming a checkpoint) does this read every block, in
    one pass without any computation on the rows.
    """
    if blocks.fingerprint is None:
        block_pass(blocks, _nothing, combine=_none, scheduler=scheduler)
    return {"fingerprint": blocks.fingerprint, "block_hashes": blocks.block_hashes}


def check_same_data(saved: Mapping | None, blocks: Blocks, where: str, scheduler=None) -> None:
    """Refuse to continue a checkpoint of other data: every row is compared, by block hashes.

    Resuming is the rare path, so it pays one read pass (:func:`data_content`)
    before anything is continued; the alternative, checking after the first
    E-step of the resumed fit, would still need that pass for a finished
    checkpoint, which makes no E-step at all. A fresh fit pays nothing.

    Raises
    ------
    ValueError
        ``saved`` (the checkpoint's :func:`data_content`) differs from the
        data's, naming the first block of rows that differs.
    """
    content = data_content(blocks, scheduler)
    if saved == content:
        return
    old = saved.get("block_hashes") if isinstance(saved, Mapping) else None
    if not isinstance(old, list) or len(old) != len(content["block_hashes"]):
        raise ValueError(f"Cannot resume from checkpoint {where}: it has no fingerprint of "
                         "every row of its data (an older dgmm wrote it); remove it to fit "
                         "afresh")
    b = next(i for i, (a, c) in enumerate(zip(old, content["block_hashes"], strict=True))
             if a != c)
    lo, hi = blocks.offsets[b], blocks.offsets[b] + blocks.sizes[b] - 1
    raise ValueError(f"Cannot resume from checkpoint {where}: the data changed since it was "
                     f"written (rows {lo}-{hi} differ, perhaps others too); remove it to fit "
                     "the new data afresh, or checkpoint this fit in another directory")


def _plain(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)
