"""Drivers: the EM loops, and the one function that takes starts to fitted runs.

:func:`fit_groups` is the only place where a fit runs from initialisation to
the end (batch or minibatch EM, ``n_init`` restarts, polish passes, warm
start, resume, the per-iteration hook); :class:`~dgmm.GaussianMixture` and
:func:`~dgmm.select_n_components` both call it, so every parameter means the
same everywhere. The loops below it (:func:`batch_em`, :func:`minibatch_em`)
run any number of runs at once and share every data pass between them.

Nothing here reads or writes files: checkpoints and progress lines reach the
caller through the per-iteration hook.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
from dask.delayed import Delayed
from sklearn.utils import check_random_state

from dgmm import _init
from dgmm import _kernels as kernels
from dgmm._passes import Blocks, compute, estep_pass
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
    missing: str = "error"

    @property
    def marginalize(self) -> bool:
        """Whether rows with NaN enter through their observed coordinates."""
        return self.missing == "marginalize"

    @classmethod
    def of(cls, params: Mapping) -> Settings:
        """The settings among an estimator's ``get_params()``."""
        return cls(**{f.name: params[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Group:
    """Starts competing for one model: ``n_init`` initialisations of ``n_components``.

    ``random_state`` is the estimator's: an int gives every group the same
    random stream, so a group fits exactly as a lone estimator with these
    settings would. Each group has its own ``covariance_type``: its
    initialisations are made for it, and every M-step keeps the type of the
    parameters it updates, so groups of several types share every pass.
    """

    n_components: int
    n_init: int = 1
    random_state: object = None
    covariance_type: str = "full"


@dataclass(frozen=True)
class InitialParams:
    """User-supplied starting parameters (``weights_init``, ...); None where not given."""

    weights: np.ndarray | None = None
    means: np.ndarray | None = None
    precisions: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        return all(v is not None for v in (self.weights, self.means, self.precisions))


NO_INIT = InitialParams()


# --------------------------------------------------------------------------
# Runs: one initialisation's state, and the M-step that moves it
# --------------------------------------------------------------------------


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
            stacklevel=3,
        )
    prec_chol = kernels.precision_cholesky(covariances, stats.covariance_type)
    return kernels.Params(stats.covariance_type, weights, means, prec_chol), covariances


@dataclass
class Run:
    """The state of one EM run (one initialisation)."""

    params: kernels.Params
    covariances: np.ndarray | None
    lower_bound: float = -np.inf
    lower_bounds: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False

    def to_record(self) -> dict:
        """The run as plain arrays and numbers (what a checkpoint stores)."""
        p = self.params
        return {
            "weights": p.weights, "means": p.means,
            "precisions_cholesky": p.precisions_cholesky, "covariances": self.covariances,
            "lower_bound": float(self.lower_bound), "lower_bounds": list(self.lower_bounds),
            "n_iter": int(self.n_iter), "converged": bool(self.converged),
        }

    @classmethod
    def from_record(cls, record: Mapping, covariance_type: str) -> Run:
        """Inverse of :meth:`to_record`."""
        params = kernels.Params(covariance_type, record["weights"], record["means"],
                                record["precisions_cholesky"])
        return cls(params, record["covariances"], float(record["lower_bound"]),
                   [float(v) for v in record["lower_bounds"]], int(record["n_iter"]),
                   bool(record["converged"]))


def initial_run(
    stats: SuffStats | None, settings: Settings, cov_type: str, init: InitialParams
) -> Run:
    """A run starting from the M-step of ``stats``, overridden by the user's ``*_init``.

    As in scikit-learn, the covariances come from the statistics about their
    own means even when ``means_init`` is given; ``stats`` may be None when
    every parameter is supplied.
    """
    if init.complete:
        weights, means = init.weights, init.means
    else:
        params, covariances = params_from_stats(stats, settings.reg_covar)
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
    runs = iter([initial_run(st, settings, st.covariance_type, init) for st in stats])
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
) -> list[Run]:
    """Run batch EM for several initialisations at once, one data pass per iteration.

    Each pass returns, for every active run, the statistics for its next M-step
    and the log-likelihood of its current parameters (so the convergence test
    needs no extra pass). Runs that converge drop out of later passes.
    Iteration semantics match scikit-learn: ``lower_bound`` is the mean
    log-likelihood of the parameters before the last M-step.

    Runs restored from a checkpoint continue from their ``n_iter``.
    ``runs`` holds one list of runs per group; ``on_iteration(iteration,
    runs, seconds)`` is called after every pass.
    """
    active = [r for group in runs for r in group if not r.converged]
    for it in range(max(r.n_iter for group in runs for r in group) + 1, max_iter + 1):
        if not active:
            break
        start = time.perf_counter()
        stats = estep_pass(blocks, [r.params for r in active], scheduler=scheduler,
                           missing=missing)
        still = []
        for run, st in zip(active, stats, strict=True):
            prev = run.lower_bound
            run.lower_bound = st.loglik / st.n
            run.lower_bounds.append(run.lower_bound)
            run.params, run.covariances = params_from_stats(st, reg_covar)
            run.n_iter = it
            if abs(run.lower_bound - prev) < tol:
                run.converged = True
            else:
                still.append(run)
        active = still
        if on_iteration is not None:
            on_iteration(it, runs, time.perf_counter() - start)
    return runs


# --------------------------------------------------------------------------
# Stepwise (online) EM: running normalised statistics s, and for each
# minibatch t with packet s_t: s <- (1 - rho_t) s + rho_t s_t / n_t, then an
# M-step from s; rho_t = (t + offset) ** -decay.
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
    """

    params: kernels.Params
    covariances: np.ndarray
    stats: SuffStats
    n_steps: int = 0
    step_size: float = float("nan")

    @classmethod
    def from_params(
        cls, params: kernels.Params, covariances: np.ndarray, reg_covar: float, n_rows: int = 0
    ) -> OnlineState:
        """A state whose running statistics reproduce ``params`` (no steps taken)."""
        stats = replace(kernels.stats_from_params(params, covariances, reg_covar), n_rows=n_rows)
        return cls(params, covariances, stats)


def step_size(t: int, decay: float, offset: float) -> float:
    """``rho_t = (t + offset) ** -decay`` for step ``t`` >= 1."""
    return float((t + offset) ** -decay)


def stepwise_step(
    states: Sequence[OnlineState],
    packets: Sequence[SuffStats],
    *,
    reg_covar: float,
    decay: float,
    offset: float,
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
    rho = step_size(t, decay, offset)
    stats = state.stats.stepped(packet, rho)
    params, covariances = params_from_stats(stats, reg_covar)
    return OnlineState(params, covariances, stats, t, rho), packet


def epoch_plan(
    sizes: Sequence[int], batch_size: int, rng: np.random.Generator | None
) -> list[list[tuple[int, int, int]]]:
    """The minibatches of one epoch, as lists of ``(block, start, stop)`` pieces.

    Blocks larger than ``batch_size`` are cut into equal slices of at most
    ``batch_size`` rows; the pieces are shuffled by ``rng`` (kept in order if
    ``None``) and grouped, in that order, into about ``round(n_rows / batch_size)``
    minibatches of about equal row counts (a piece goes to the minibatch its
    middle row falls in). Every row is in exactly one minibatch.
    """
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
) -> list[tuple[OnlineState, Run]]:
    """Stepwise EM over the row blocks, an epoch (a full pass) at a time.

    Every group runs its own stepwise EM, and all groups share each
    minibatch's E-step pass (its pieces are computed in parallel and
    tree-summed). The states within a group (initialisations) compete on the
    first minibatch only. An epoch's log-likelihood is the mean over its rows
    under the parameters in force when each row was visited; a group stops
    after ``max_iter`` epochs or when that changes by less than ``tol``.
    ``rng`` shuffles the pieces of every epoch (storage order if None).

    Returns, per group, the final state and a :class:`Run` with one
    ``lower_bounds`` entry per epoch (``n_iter`` epochs).
    """
    s = settings
    current = [list(states) for states in groups]
    runs = [Run(states[0].params, states[0].covariances) for states in groups]
    active = list(range(len(groups)))
    t_last = time.perf_counter()
    for epoch in range(1, s.max_iter + 1):
        totals = {g: [0.0, 0.0] for g in active}
        for pieces in epoch_plan(blocks.sizes, s.batch_size, rng):
            flat = [state.params for g in active for state in current[g]]
            packets = iter(estep_pass(blocks, flat, scheduler, pieces=pieces,
                                      missing=s.marginalize))
            for g in active:
                mine = [next(packets) for _ in current[g]]
                state, packet = stepwise_step(current[g], mine, reg_covar=s.reg_covar,
                                              decay=s.learning_decay, offset=s.learning_offset)
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
            [OnlineState.from_params(r.params, r.covariances, s.reg_covar) for r in runs]
            for runs in start
        ])
        fitted = _minibatch(blocks, s, groups, states, scheduler, on_iteration, log)
    else:
        if s.max_iter > 0:
            batch_em(blocks, start, max_iter=s.max_iter,
                     tol=s.tol, reg_covar=s.reg_covar, scheduler=scheduler,
                     on_iteration=on_iteration, missing=s.marginalize)
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
                       scheduler=scheduler, log=log if s.verbose >= 2 else None)
    if s.polish_iter > 0:
        runs = [run for _, run in out]
        epochs = [run.n_iter for run in runs]
        for run in runs:
            run.converged, run.n_iter = False, 0
        batch_em(blocks, [[run] for run in runs], max_iter=s.polish_iter, tol=s.tol,
                 reg_covar=s.reg_covar, scheduler=scheduler, on_iteration=on_iteration,
                 missing=s.marginalize)
        polished = []
        for (state, run), n_epochs in zip(out, epochs, strict=True):
            run.n_iter += n_epochs
            # The running statistics restart from the polished model.
            fresh = OnlineState.from_params(run.params, run.covariances, s.reg_covar,
                                            n_rows=state.stats.n_rows)
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


def fit_identity(blocks: Blocks, settings: Settings, groups: Sequence[Group],
                 scheduler=None) -> dict:
    """What identifies a fit for a resume: the data (shape, chunking, first rows) and settings."""
    import hashlib

    (first,) = blocks.compute(blocks.delayed[0], n_reads=1, scheduler=scheduler)
    digest = hashlib.sha256(np.ascontiguousarray(first[:1000]).tobytes())
    digest.update(repr(blocks.sizes).encode())
    for what, keys in sorted(blocks.side.items()):  # the weights and labels are data too
        (part,) = compute(Delayed(keys[0], blocks.graph), scheduler=scheduler)
        digest.update(what.encode() + np.ascontiguousarray(part[:1000]).tobytes())
    digest.update(repr(blocks.total_weight).encode())
    named = {f.name: getattr(settings, f.name) for f in fields(settings)
             if f.name not in _COSMETIC}
    named["groups"] = [[g.n_components, g.n_init, _plain(g.random_state), g.covariance_type]
                       for g in groups]
    return {
        "data": {"shape": [blocks.n_rows, blocks.n_features], "dtype": str(first.dtype),
                 "fingerprint": digest.hexdigest()},
        "settings": {k: _plain(v) for k, v in named.items()},
    }


def _plain(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)
