"""The ``dgmm`` command line, for interactive use and scheduled batch jobs.

Exit codes: 0 success; 2 usage errors (bad flags, a missing or unusable store,
an output that exists, overlaps an input or cannot be written) with a one-line
message, found before any work; 1 any other failure, with a one-line cause (the
traceback too with ``--verbose``); 3 ``report --fail-above`` found drift above
the threshold (the report is written). Progress and warnings go to stderr as plain
lines (one per EM iteration), so logs stay readable; ``--quiet`` leaves errors
only. Messages are for people: no Python class names, no Python advice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import click
import dask
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline

from dgmm import _init, _lock, io, provenance
from dgmm import _kernels as kernels
from dgmm._variational import PRIOR_TYPES as _BAYESIAN_PRIOR_TYPES
from dgmm.mixture import ALGORITHMS
from dgmm.models import load, save
from dgmm.selection import CRITERIA


class CommandError(click.UsageError):
    """A usage problem found by a command itself (exit code 2)."""


class _Cli(click.Group):
    """A click group whose errors are one line on stderr with dgmm's exit codes."""

    def main(self, args=None, prog_name=None, **extra):
        args = list(sys.argv[1:] if args is None else args)
        verbose = "--verbose" in args or "-v" in args
        quiet = "--quiet" in args or "-q" in args
        where = f"dgmm {args[0]}" if args and args[0] in self.commands else "dgmm"
        if not verbose:  # their tracebacks would bury the one line that says what to do
            for name in ("distributed", "asyncio"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings(), _sigterm_as_interrupt():
                warnings.showwarning = _plain_warnings(quiet)
                super().main(args=args, prog_name=prog_name or "dgmm", standalone_mode=False,
                             **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            _error(exc.format_message(), exc.ctx.command_path if exc.ctx else "dgmm")
            sys.exit(2)
        except _lock.PathLockedError as exc:  # another run holds an output: a usage error
            _error(str(exc), where)
            sys.exit(2)
        except click.Abort as exc:
            if isinstance(exc.__cause__, _Terminated):
                _error("terminated (SIGTERM): stopped and cleaned up; no output was left "
                       "half-written", where)
                sys.exit(128 + signal.SIGTERM)
            _error("aborted")
            sys.exit(1)
        except Exception as exc:  # the last line of defence: one line, exit 1
            if verbose:
                traceback.print_exc()
            _error(_describe(exc), where)
            sys.exit(1)
        sys.exit(0)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that everything cleans up as for Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Handle SIGTERM as Ctrl-C while a command runs (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Exceptions by which distributed says the cluster is gone (checked by name, so that
# describing an error never imports distributed).
_CLUSTER_LOST = ("FutureCancelledError", "CommClosedError", "StreamClosedError")


def _cluster_lost(exc: BaseException) -> str | None:
    """What went wrong, if ``exc`` says the Dask scheduler or workers were lost."""
    seen = exc
    while seen is not None:
        name, module = type(seen).__name__, type(seen).__module__ or ""
        if name == "KilledWorker":
            return "workers died while running a task (often: out of memory)"
        if (name in _CLUSTER_LOST and module.split(".")[0] in ("distributed", "tornado")) or (
                "scheduler-connection-lost" in str(seen)):
            return "the connection to the Dask scheduler was lost"
        seen = seen.__cause__ or seen.__context__
    return None


def _describe(exc: Exception) -> str:
    """An exception as a sentence for people, without Python's class names."""
    lost = _cluster_lost(exc)
    if lost is not None:
        return (f"lost the Dask cluster: {lost}; nothing was saved from this run. Restart the "
                "cluster and run the command again (a fit with --checkpoint DIR --resume "
                "continues from its last checkpoint)")
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    if isinstance(exc, (ValueError, OSError)):
        return str(exc)
    return f"unexpected internal error ({type(exc).__name__}: {exc}); --verbose shows where"


def _error(message: str, where: str = "dgmm") -> None:
    click.echo(f"{where}: error: {' '.join(str(message).split())}", err=True)


def _warning(message: str) -> None:
    ctx = click.get_current_context(silent=True)  # None in Dask's worker threads
    where = ctx.command_path if ctx else "dgmm"
    click.echo(f"{where}: warning: {' '.join(str(message).split())}", err=True)


def _plain_warnings(quiet: bool):
    """A ``warnings.showwarning`` that prints one plain line (no file:line)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if quiet:
            return
        ctx = click.get_current_context(silent=True)
        if issubclass(category, ConvergenceWarning) and ctx and "max_iter" in ctx.params:
            message = (f"the fit did not converge in {ctx.params['max_iter']} iterations; "
                       "raise --max-iter or --tol")
        _warning(message)

    return show


def _progress(quiet: bool, what: str = "log-likelihood"):
    """Per-iteration progress lines on stderr (None when quiet); ``what`` names the bound."""
    if quiet:
        return None

    def report(info: dict) -> None:
        change = f"{info['change']:+.3e}" if np.isfinite(info["change"]) else "-"
        click.echo(
            f"iteration {info['iteration']:>4}  {what} {info['lower_bound']:.6f}  "
            f"change {change:>10}  {info['seconds']:.2f}s",
            err=True,
        )

    return report


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(message, err=True)


def _open_store(store: str, array: str | None):
    """The Zarr array to read, checked for what dgmm needs, in words for people."""
    try:
        X = io.open_array(store, array)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    where = f"the Zarr array at {store}" + (f"/{array}" if array else "")
    shape = " x ".join(map(str, X.shape))
    if X.ndim != 2:
        raise CommandError(f"{where} has {X.ndim} dimensions (shape {shape}); dgmm needs a "
                           "2-D array (rows, features)")
    if X.dtype.kind not in "biuf":
        raise CommandError(f"{where} holds {X.dtype} values; dgmm needs numbers (floats or "
                           "integers)")
    if 0 in X.shape:
        raise CommandError(f"{where} is empty (shape {shape}); dgmm needs at least one row "
                           "and one feature")
    return X


def _check_output(path: str, inputs, *, overwrite: bool, kind: str) -> None:
    """Refuse, before any work, an output that could destroy data or fail late."""
    try:
        io.check_output_path(path, [i for i in inputs if i is not None], overwrite=overwrite,
                             kind=kind)
    except FileExistsError:
        raise CommandError(f"{path} exists; pass --overwrite to replace it") from None
    except (ValueError, OSError) as exc:
        raise CommandError(_describe(exc)) from None


def _hold(*paths: str | None) -> None:
    """Lock the outputs this command writes until it ends: a second run on them is refused."""
    click.get_current_context().with_resource(_lock.locked(*paths))


def _load(model_path: str):
    """The fitted model in a file: a mixture, or a pipeline that ends in one."""
    if not Path(model_path).exists():
        raise CommandError(f"model file not found: {model_path}")
    try:
        model = load(model_path)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    last = model[-1] if isinstance(model, Pipeline) else model
    if not hasattr(last, "means_"):
        raise CommandError(f"{model_path} holds a {type(last).__name__}, not a mixture model")
    return model


def _mixture_and_input(model, X):
    """The mixture of a loaded model, and X in its space.

    A pipeline's preprocessing is applied lazily, row block by row block, as
    the mixture's pass reads them.
    """
    if isinstance(model, Pipeline):
        return model[-1], model[:-1].transform(X)
    return model, X


def _open_side(store: str, array: str | None, name: str | None, option: str):
    """A per-row array named by --sample-weight/--labels: in STORE's group, or a path."""
    if name is None:
        return None
    try:
        v = io.open_array(store, name) if array is not None else io.open_array(name)
    except ValueError as exc:
        hint = "" if array is not None else (" (without --array, give a path to a Zarr "
                                              "array; with --array, a name in STORE's group)")
        raise CommandError(f"{option} {name}: {exc}{hint}") from None
    return v


def _preprocess(X, standardize: bool, pca: int | None, quiet: bool, sample_weight=None):
    """Preprocessing steps fitted on X in one pass, and X lazily transformed by them."""
    from dgmm.preprocessing import fit_preprocessing

    if not standardize and pca is None:
        return [], X
    if pca is not None and pca > X.shape[1]:
        raise CommandError(f"--pca {pca} exceeds the {X.shape[1]} features of the data")
    start = time.perf_counter()
    steps = fit_preprocessing(X, standardize=standardize, n_components=pca,
                              sample_weight=sample_weight)
    names = " and ".join("standardization" if name == "standardscaler" else
                         f"PCA to {pca} components" for name, _ in steps)
    _say(quiet, f"fitted {names} in one pass in {time.perf_counter() - start:.1f}s")
    return steps, Pipeline(steps).transform(X)


def _save(steps: list, model, out: str, overwrite: bool) -> None:
    """Save the mixture, with its preprocessing steps as a pipeline if there are any."""
    save(Pipeline([*steps, ("gaussianmixture", model)]) if steps else model, out,
         overwrite=overwrite)


def _parse_components(text: str) -> list[int]:
    """'4', '1:12' (inclusive) or '2,4,8'."""
    try:
        if ":" in text:
            lo, hi = (int(v) for v in text.split(":"))
            values = list(range(lo, hi + 1))
        else:
            values = [int(v) for v in text.split(",")]
    except ValueError:
        raise CommandError(f"--n-components must be an int, a range LO:HI or a list; "
                           f"got {text!r}") from None
    if not values or min(values) < 1:
        raise CommandError(f"--n-components must be >= 1; got {text!r}")
    return values


def _check_plot(path: str | None, inputs, *, overwrite: bool) -> None:
    """Refuse, before any work, a --plot PATH that cannot be written, or no matplotlib."""
    if path is None:
        return
    _check_output(path, inputs, overwrite=overwrite, kind="file")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError('--plot needs matplotlib: pip install "dgmm[plot]"') from None


def _save_plot(fig, path: str, quiet: bool) -> None:
    fig.savefig(path, dpi=100)
    _say(quiet, f"wrote {path}")


def _view(n_features: int):
    """The 2-D view of the ellipses: the two features, or the principal axes beyond 2."""
    return "pca" if n_features > 2 else (0, 1)


def _parse_covariance_types(text: str) -> list[str]:
    """'full' or a comma list such as 'full,diag'."""
    values = [v.strip() for v in text.split(",")]
    wrong = [v for v in values if v not in kernels.COVARIANCE_TYPES]
    if wrong:
        raise CommandError(f"--covariance-type takes one or more of "
                           f"{', '.join(kernels.COVARIANCE_TYPES)}, comma-separated; got {text!r}")
    return values


@contextlib.contextmanager
def _cluster(spec: str | None, quiet: bool):
    if spec is None:
        yield None
        return
    from dgmm import cluster

    with cluster.connect(spec) as client:
        _say(quiet, f"using Dask cluster at {client.scheduler.address}")
        yield client


_quiet = click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
_verbose = click.option("-v", "--verbose", is_flag=True,
                        help="More detail, and a traceback on failure.")
_array = click.option("--array", default=None, help="Array name inside a Zarr group.")
_covariance_type = click.option("--covariance-type", type=click.Choice(kernels.COVARIANCE_TYPES),
                                default="full", show_default=True)
_reg_covar = click.option("--reg-covar", type=click.FloatRange(min=0), default=1e-6,
                          show_default=True)
_init_opt = click.option("--init", "init_params", type=click.Choice(_init.INIT_METHODS),
                         default="kmeans", show_default=True)
_n_init = click.option("--n-init", type=click.IntRange(min=1), default=1, show_default=True)
_algorithm = click.option("--algorithm", type=click.Choice(ALGORITHMS), default="batch",
                          show_default=True)
_batch_size = click.option("--batch-size", type=click.IntRange(min=1), default=10_000,
                           show_default=True, help="Rows per minibatch (--algorithm minibatch).")


def _overwrite(text: str):
    return click.option("--overwrite", is_flag=True, help=text)


_standardize = click.option(
    "--standardize", is_flag=True,
    help="Scale every feature to zero mean and unit variance before the mixture (one extra "
         "pass, shared with --pca); saved in the model file.")
_pca = click.option(
    "--pca", type=click.IntRange(min=1), default=None, metavar="N",
    help="Fit the mixture on the first N principal components (after --standardize if "
         "given; the same one extra pass); saved in the model file.")


_sample_weight = click.option(
    "--sample-weight", "sample_weight", default=None, metavar="NAME",
    help="Per-row weights: an array NAME in STORE's group (with --array), else a path.")
_labels_opt = click.option(
    "--labels", "labels", default=None, metavar="NAME",
    help="Known component per row (-1: unknown), an array found as for --sample-weight.")
_missing = click.option(
    "--missing", type=click.Choice(["error", "marginalize"]), default="error",
    show_default=True, help="Rows with NaN: refuse them, or fit them through their observed "
                            "features.")


_features = click.option(
    "--features", default=None, metavar="VAR[,VAR...]",
    help="STORE is a Zarr group written by xarray (xr.open_zarr): fit on these data variables; "
         "every other dimension is a sample dimension, and points NaN in every feature are "
         "skipped. --sample-weight and --labels then name variables of STORE.")
_sample_dims = click.option(
    "--sample-dims", default=None, metavar="DIM[,DIM...]",
    help="With --features: the sample dimensions (default: the first feature's).")


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


def _open_dataset(store: str):
    """A Zarr group written by xarray, lazily (for --features and models fitted on one)."""
    from dgmm import _xarray

    if not Path(store).exists() and "://" not in store:
        raise CommandError(f"Zarr store not found: {store} does not exist")
    try:
        return _xarray.open_dataset(store)
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    except Exception as exc:  # xarray and zarr raise several types for an unreadable group
        raise CommandError(f"cannot open {store} as an xarray Zarr group ({exc})") from None


def _dataset_fit_input(store, array, features, sample_dims, sample_weight, labels, refused):
    """For --features: the Dataset, its weight and label variables, and fit's xarray arguments."""
    if array is not None:
        raise CommandError("--features reads a whole xarray group: drop --array")
    wrong = [flag for flag, given in refused.items() if given]
    if wrong:
        raise CommandError(f"{', '.join(wrong)} cannot be used with --features")
    ds = _open_dataset(store)
    side = {}
    for option, name in (("--sample-weight", sample_weight), ("--labels", labels)):
        if name is not None and name not in ds.data_vars:
            raise CommandError(f"{option} {name}: {store} has no variable {name!r}; it has "
                               f"{sorted(map(str, ds.data_vars))}")
        side[option] = None if name is None else ds[name]
    kwargs = {"features": _names(features), "sample_dims": _names(sample_dims)}
    return ds, side["--sample-weight"], side["--labels"], kwargs


_contamination = click.option("--contamination", type=click.FloatRange(0, 0.5, min_open=True),
                               default=None, help="Share of outliers in STORE, in (0, 0.5].")


def _plot_opt(text: str):
    return click.option("--plot", "plot_path", default=None, metavar="PNG",
                        help=f"Write a PNG of {text} (needs matplotlib; replaced with "
                             "--overwrite).")


def _allow_missing(ctx: click.Context, param, value: bool) -> None:
    if value:  # for this command only
        ctx.with_resource(dask.config.set({"dgmm.allow-missing-chunks": True}))


_allow_missing_chunks = click.option(
    "--allow-missing-chunks", is_flag=True, expose_value=False, callback=_allow_missing,
    help="Read chunks missing from STORE as its fill value (for stores sparse on purpose); "
         "by default a missing chunk stops the command, naming it.")


_cluster_opt = click.option("--cluster", "cluster_spec", default=None, metavar="CONFIG_OR_ADDRESS",
                            help="Cluster YAML config or scheduler address (default: local "
                                 "threads).")


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dgmm")
def main() -> None:
    """Gaussian mixture models for data larger than memory, on Dask."""


@main.command()
@click.argument("out")
@click.option("--n-samples", type=click.IntRange(min=1), required=True)
@click.option("--n-features", type=click.IntRange(min=1), required=True)
@click.option("--n-components", type=click.IntRange(min=1), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True)
@_overwrite("Replace an existing store that dgmm wrote.")
@_quiet
@_verbose
def generate(out, n_samples, n_features, n_components, seed, chunk_rows, dtype, overwrite,
             quiet, verbose):
    """Write a synthetic Gaussian mixture to the Zarr group OUT, chunk by chunk."""
    from dgmm.datasets import make_mixture_zarr

    _check_output(out, (), overwrite=overwrite, kind="store")
    _hold(out)
    start = time.perf_counter()
    make_mixture_zarr(out, n_samples, n_features, n_components, seed=seed,
                      chunk_rows=chunk_rows, dtype=dtype, overwrite=overwrite)
    _say(quiet, f"wrote {n_samples} x {n_features} {dtype} rows of a {n_components}-component "
                f"mixture to {out} (array 'X') in {time.perf_counter() - start:.1f}s")


@main.command()
@click.argument("store")
@_array
@click.option("--n-components", "n_components", required=True, type=click.IntRange(min=1))
@_covariance_type
@click.option("--max-iter", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--tol", type=click.FloatRange(min=0), default=1e-3, show_default=True)
@_reg_covar
@_init_opt
@_n_init
@click.option("--seed", type=int, default=0, show_default=True)
@_algorithm
@_batch_size
@_standardize
@_pca
@_sample_weight
@_labels_opt
@_missing
@_features
@_sample_dims
@click.option("--out", required=True, help="Model file to write (atomically).")
@_overwrite("Replace an existing model file (never a directory).")
@_allow_missing_chunks
@_cluster_opt
@click.option("--checkpoint", type=click.Path(file_okay=False), default=None,
              help="Directory for a checkpoint written after every iteration.")
@click.option("--resume", is_flag=True,
              help="Continue from the checkpoint in --checkpoint; a finished one is saved "
                   "again without any pass over the data.")
@_plot_opt("the covariance ellipses over a sample of STORE and the lower bound per iteration")
@click.option("--bayesian", is_flag=True,
              help="Fit a variational Bayesian mixture: --n-components is then an upper "
                   "bound, and the components the data do not need get weights near 0.")
@click.option("--weight-concentration-prior-type", "prior_type",
              type=click.Choice(_BAYESIAN_PRIOR_TYPES), default=_BAYESIAN_PRIOR_TYPES[0],
              show_default=True, help="Prior on the weights (--bayesian).")
@click.option("--weight-concentration-prior", "prior", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Concentration of the weight prior (--bayesian); smaller "
                                 "values switch more components off [default: 1/K].")
@_quiet
@_verbose
def fit(store, array, n_components, covariance_type, max_iter, tol, reg_covar, init_params,
        n_init, seed, algorithm, batch_size, standardize, pca, sample_weight, labels, missing,
        features, sample_dims, out, overwrite, cluster_spec, checkpoint, resume, plot_path,
        bayesian, prior_type, prior, quiet, verbose):
    """Fit a mixture to the Zarr array STORE (or xarray group, with --features); save to --out."""
    from dgmm import BayesianGaussianMixture, GaussianMixture

    xarray_args = {}
    if features is not None:
        refused = {"--standardize": standardize, "--pca": pca is not None,
                   "--plot": plot_path is not None}
        X, weight, known, xarray_args = _dataset_fit_input(
            store, array, features, sample_dims, sample_weight, labels, refused)
    elif sample_dims is not None:
        raise CommandError("--sample-dims goes with --features")
    else:
        X = _open_store(store, array)
        weight = _open_side(store, array, sample_weight, "--sample-weight")
        known = _open_side(store, array, labels, "--labels")
    if resume and checkpoint is None:
        raise CommandError("--resume needs --checkpoint DIR")
    _check_output(out, [store, checkpoint], overwrite=overwrite, kind="file")
    _check_plot(plot_path, [store, checkpoint, out], overwrite=overwrite)
    if checkpoint is not None:
        if algorithm != "batch":
            raise CommandError("--checkpoint is supported with --algorithm batch only")
        _check_output(checkpoint, [store], overwrite=True, kind="directory")
    _hold(out, checkpoint, plot_path)
    if checkpoint is not None and not resume and io.has_checkpoint(checkpoint):
        raise CommandError(f"{checkpoint} already holds a checkpoint; pass --resume to "
                           "continue it, or choose another --checkpoint directory")
    if not bayesian and (prior is not None or prior_type != _BAYESIAN_PRIOR_TYPES[0]):
        raise CommandError("--weight-concentration-prior(-type) needs --bayesian")
    common = dict(
        covariance_type=covariance_type, max_iter=max_iter, tol=tol,
        reg_covar=reg_covar, init_params=init_params, n_init=n_init, random_state=seed,
        algorithm=algorithm, batch_size=batch_size, verbose=1 if verbose else 0,
        missing=missing,
    )
    model = (BayesianGaussianMixture(n_components, weight_concentration_prior_type=prior_type,
                                     weight_concentration_prior=prior, **common)
             if bayesian else GaussianMixture(n_components, **common))
    start = time.perf_counter()
    with _cluster(cluster_spec, quiet):
        steps, Xt = _preprocess(X, standardize, pca, quiet, weight)
        model.fit(Xt, sample_weight=weight, labels=known, checkpoint=checkpoint, resume=resume,
                  callback=_progress(quiet, "lower bound" if bayesian else "log-likelihood"),
                  **xarray_args)
        if not xarray_args:  # provenance describes array stores (rows of a 2-D array)
            model.provenance_ = _history_entry(None, "fit", X, store, array, (0, X.shape[0]))
        _save(steps, model, out, overwrite)
        size = (f"the points of {', '.join(model.feature_names_in_)}" if xarray_args
                else f"{X.shape[0]} x {X.shape[1]} rows")
        _say(quiet, f"fitted {n_components} {covariance_type} components to {size} "
                    f"in {time.perf_counter() - start:.1f}s: "
                    f"{model.n_iter_} iterations, converged={model.converged_}, "
                    f"lower bound {model.lower_bound_:.6f}; saved {out}")
        if plot_path:
            from dgmm import plot

            fig, axes = plot.panels(2)
            plot.ellipses(model, Xt, features=_view(Xt.shape[1]), ax=axes[0], random_state=seed)
            plot.lower_bounds(model, ax=axes[1])
            _save_plot(fig, plot_path, quiet)


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("store")
@_array
@click.option("--out", required=True, help="Zarr group to write (atomically).")
@click.option("--labels/--no-labels", default=True, show_default=True)
@click.option("--proba", is_flag=True, help="Also write responsibilities.")
@click.option("--log-density", is_flag=True, help="Also write per-row log-density.")
@click.option("--outliers", is_flag=True,
              help="Also write 'outlier' flags: the --contamination share of STORE's rows "
                   "with the lowest log-density (two more passes find the exact threshold).")
@_contamination
@_plot_opt("the histogram of log-densities with the outlier threshold (--outliers)")
@_overwrite("Replace an existing output store that dgmm wrote.")
@_allow_missing_chunks
@_cluster_opt
@_quiet
@_verbose
def predict(model_path, store, array, out, labels, proba, log_density, outliers, contamination,
            plot_path, overwrite, cluster_spec, quiet, verbose):
    """Stream predictions of MODEL for STORE into the Zarr group --out.

    A model fitted with --features reads STORE as an xarray group and writes
    an xarray group: its outputs on STORE's sample dimensions and coordinates.
    """
    model = _load(model_path)
    named = getattr(model, "feature_names_in_", None) is not None and array is None
    X = _open_dataset(store) if named else _open_store(store, array)
    if not (labels or proba or log_density or outliers):
        raise CommandError("nothing to write: pass --labels, --proba, --log-density or "
                           "--outliers")
    if outliers and contamination is None:
        raise CommandError("--outliers needs --contamination, e.g. --contamination 0.01")
    if contamination is not None and not outliers:
        raise CommandError("--contamination is used with --outliers only")
    if plot_path is not None and not outliers:
        raise CommandError("--plot draws the outlier threshold: pass --outliers too")
    _check_output(out, [store, model_path], overwrite=overwrite, kind="store")
    _check_plot(plot_path, [store, model_path, out], overwrite=overwrite)
    _hold(out, plot_path)
    start = time.perf_counter()
    if named:
        if plot_path is not None:
            raise CommandError("--plot cannot be used with a model fitted with --features")
        with _cluster(cluster_spec, quiet):
            _predict_dataset(model, X, store, model_path, out, labels=labels, proba=proba,
                             log_density=log_density, contamination=contamination if outliers
                             else None, overwrite=overwrite, quiet=quiet)
        _say(quiet, f"wrote predictions on {dict(X.sizes)} to {out} "
                    f"in {time.perf_counter() - start:.1f}s")
        return
    with _cluster(cluster_spec, quiet):
        mixture, Xt = _mixture_and_input(model, X)
        detector = _outlier_detector(mixture, Xt, contamination, quiet) if outliers else None
        io.write_predictions(mixture, Xt, out, labels=labels, proba=proba,
                             log_density=log_density,
                             outlier_threshold=None if detector is None else detector.threshold_,
                             overwrite=overwrite)
    _say(quiet, f"wrote predictions for {X.shape[0]} rows to {out} "
                f"in {time.perf_counter() - start:.1f}s")
    if plot_path:
        from dgmm import plot

        _save_plot(plot.log_density_histogram(detector), plot_path, quiet)


def _predict_dataset(model, ds, store, model_path, out, *, labels, proba, log_density,
                     contamination, overwrite, quiet) -> None:
    """Per-point outputs of a model fitted with feature names, as an xarray group at ``out``."""
    import xarray as xr

    from dgmm import _xarray

    try:
        outputs = [model.predict(ds)] if labels else []
        outputs += [model.predict_proba(ds)] if proba else []
        outputs += [model.score_samples(ds)] if log_density else []
    except ValueError as exc:  # a feature the model needs is missing from STORE
        raise CommandError(f"{store}: {exc}") from None
    if contamination is not None:
        detector = _outlier_detector(model, ds, contamination, quiet)
        outputs.append(detector.predict(ds) == -1)
    result = xr.merge([o.rename(o.name or "outlier") for o in outputs], join="exact")
    if contamination is not None:
        result = result.assign_attrs(outlier_threshold=float(detector.threshold_))
    _xarray.write_dataset(result, out, [store, model_path], overwrite=overwrite)


def _outlier_detector(model, X, contamination: float, quiet: bool):
    from dgmm.outliers import GaussianMixtureOutlierDetector

    detector = GaussianMixtureOutlierDetector(model, contamination=contamination).fit(X)
    _say(quiet, f"outlier threshold at contamination {contamination}: log-density "
                f"{detector.threshold_:.6f}")
    return detector


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("store")
@_array
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--contamination", type=click.FloatRange(0, 0.5, min_open=True), default=None,
              help="Also report the outlier threshold: the exact log-density quantile at "
                   "this share of STORE's rows (two more passes).")
@_allow_missing_chunks
@_cluster_opt
@_quiet
@_verbose
def score(model_path, store, array, as_json, contamination, cluster_spec, quiet, verbose):
    """Mean log-likelihood, BIC and AIC of MODEL on STORE (one data pass).

    For a model saved with --standardize or --pca, the rows are transformed
    first, and the log-likelihood is that of the transformed rows (the space
    the mixture was fitted in).
    """
    model = _load(model_path)
    X = _open_store(store, array)
    with _cluster(cluster_spec, quiet):
        mixture, Xt = _mixture_and_input(model, X)
        mean = mixture.score(Xt)
        detector = None if contamination is None else _outlier_detector(
            mixture, Xt, contamination, quiet=True)
    n = X.shape[0]
    result = {"n_samples": int(n), "mean_log_likelihood": mean, **mixture.criteria(mean, n)}
    if detector is not None:
        result.update(contamination=contamination, outlier_threshold=detector.threshold_)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for key, value in result.items():
            click.echo(f"{key:<20} {value}")


@main.command()
@click.argument("store")
@_array
@click.option("--n-components", "n_components", required=True, metavar="LO:HI|LIST",
              help="Candidates, e.g. 1:12 (inclusive) or 2,4,8.")
@click.option("--covariance-type", default="full", show_default=True, metavar="TYPE[,TYPE...]",
              help=f"Candidate covariance types, comma-separated, among "
                   f"{', '.join(kernels.COVARIANCE_TYPES)}.")
@click.option("--criterion", type=click.Choice(CRITERIA), default="bic", show_default=True)
@click.option("--max-iter", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--tol", type=click.FloatRange(min=0), default=1e-3, show_default=True)
@_reg_covar
@_init_opt
@_n_init
@click.option("--seed", type=int, default=0, show_default=True)
@_algorithm
@_batch_size
@_standardize
@_pca
@_sample_weight
@_labels_opt
@_missing
@click.option("--out", required=True, help="Model file for the best candidate.")
@_overwrite("Replace an existing model file (never a directory).")
@_plot_opt("the criteria against n_components")
@_allow_missing_chunks
@_cluster_opt
@_quiet
@_verbose
def select(store, array, n_components, covariance_type, criterion, max_iter, tol, reg_covar,
           init_params, n_init, seed, algorithm, batch_size, standardize, pca, sample_weight,
           labels, missing, out, overwrite, plot_path, cluster_spec, quiet, verbose):
    """Fit every candidate (components x covariance types, sharing data passes); save the best."""
    from dgmm import select_n_components

    candidates = _parse_components(n_components)
    types = _parse_covariance_types(covariance_type)
    X = _open_store(store, array)
    weight = _open_side(store, array, sample_weight, "--sample-weight")
    known = _open_side(store, array, labels, "--labels")
    _check_output(out, [store], overwrite=overwrite, kind="file")
    _check_plot(plot_path, [store, out], overwrite=overwrite)
    _hold(out, plot_path)
    # The table below says which candidates did not converge, after the table.
    with _cluster(cluster_spec, quiet), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        steps, Xt = _preprocess(X, standardize, pca, quiet, weight)
        result = select_n_components(
            Xt, candidates, criterion=criterion, covariance_type=types,
            max_iter=max_iter, tol=tol, reg_covar=reg_covar, init_params=init_params,
            n_init=n_init, random_state=seed, algorithm=algorithm, batch_size=batch_size,
            callback=_progress(quiet), sample_weight=weight, labels=known, missing=missing,
        )
    best, table = result
    best.provenance_ = _history_entry(None, "select", X, store, array, (0, X.shape[0]))
    _save(steps, best, out, overwrite)
    if plot_path:
        _save_plot(result.plot(), plot_path, quiet)
    if quiet:
        return
    click.echo(f"{'K':>4} {'covariance':>10} {'bic':>16} {'aic':>16} {'mean loglik':>12} "
               f"{'iters':>6} {'converged':>9}", err=True)
    for row in table:
        chosen = (row["n_components"], row["covariance_type"]) == (best.n_components,
                                                                    best.covariance_type)
        click.echo(f"{row['n_components']:>4} {row['covariance_type']:>10} {row['bic']:>16.2f} "
                   f"{row['aic']:>16.2f} {row['score']:>12.5f} {row['n_iter']:>6} "
                   f"{'yes' if row['converged'] else 'no':>9}{' *' if chosen else ''}", err=True)
    stuck = [f"{row['n_components']}" + (f" {row['covariance_type']}" if len(types) > 1 else "")
             for row in table if not row["converged"]]
    if stuck:
        _warning(f"{len(stuck)} of {len(table)} candidates (K = {', '.join(stuck)}) did not "
                 f"converge in {max_iter} iterations; raise --max-iter or --tol")
    click.echo(f"best by {criterion}: {best.n_components} components, "
               f"{best.covariance_type} covariance; saved {out}", err=True)
    click.echo(f"data passes: {result.n_passes:g}", err=True)


@main.command()
@click.argument("model_path", metavar="MODEL")
@_verbose
def info(model_path, verbose):
    """A readable summary of a model file.

    For a model saved with --standardize or --pca, the preprocessing is shown
    first; the means and the lower bound are in the transformed space.
    """
    loaded = _load(model_path)
    model = loaded[-1] if isinstance(loaded, Pipeline) else loaded
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    click.echo(f"model file        {model_path} ({Path(model_path).stat().st_size} bytes)")
    if isinstance(loaded, Pipeline):
        click.echo(f"preprocessing     {_describe_steps(loaded[:-1])}; the mixture below and "
                   "its scores are in that transformed space")
    click.echo(f"covariance type   {model.covariance_type}")
    click.echo(f"components        {model.n_components}")
    names = getattr(model, "feature_names_in_", None)
    named = "" if names is None else f" ({', '.join(names)})"
    click.echo(f"features          {model.n_features_in_}{named}")
    click.echo(f"iterations        {model.n_iter_} (converged={model.converged_})")
    click.echo(f"lower bound       {model.lower_bound_:.6f}")
    order = np.argsort(model.weights_)[::-1]
    if hasattr(model, "weight_concentration_"):
        # a variational mixture switches components off rather than removing them
        threshold = 1.0 / (100 * model.n_components)
        effective = int(np.sum(model.weights_ > threshold))
        click.echo(f"prior             {model.weight_concentration_prior_type}, concentration "
                   f"{model.weight_concentration_prior_:g}")
        click.echo(f"effective         {effective} of {model.n_components} components "
                   f"(weight > 1/(100 K) = {threshold:.3g})")
        order = [k for k in order if model.weights_[k] > threshold]
    click.echo("components by weight:")
    for k in order:
        means = np.array2string(model.means_[k][:6], separator=", ")
        more = ", ..." if model.n_features_in_ > 6 else ""
        click.echo(f"  {k:>3}  weight {model.weights_[k]:.4f}  mean {means[:-1]}{more}]")
    if hasattr(model, "n_steps_"):
        click.echo(f"stream            {model.n_steps_} stepwise-EM steps, last step size "
                   f"{model.step_size_:.4g}")
    if hasattr(model, "n_samples_seen_"):
        click.echo(f"rows learnt       {model.n_samples_seen_}")
    if hasattr(model, "outlier_threshold_"):
        click.echo(f"outlier threshold {model.outlier_threshold_:.6f} (log-density)")
    lines = provenance.describe(getattr(model, "provenance_", None))
    if lines:
        click.echo("provenance (oldest first):")
        for line in lines:
            click.echo(f"  {line}")


def _describe_steps(steps: Pipeline) -> str:
    parts = []
    for _, step in steps.steps:
        if hasattr(step, "components_"):
            kept = float(np.sum(step.explained_variance_ratio_))
            parts.append(f"PCA to {step.n_components_} of {step.n_features_in_} features "
                         f"({kept:.1%} of the variance)")
        else:
            parts.append(f"standardization of {step.n_features_in_} features")
    return ", then ".join(parts)


# --------------------------------------------------------------------------
# Scheduled jobs over growing stores: update and report
# --------------------------------------------------------------------------


def _history_entry(record: dict | None, action: str, X, store: str, array: str | None,
                   rows: tuple[int, int], **details) -> dict:
    """``record`` with an entry saying that ``action`` learnt ``rows`` of the store, now."""
    described = provenance.describe_store(X, store, array)
    return provenance.appended(record, provenance.entry(action, described, rows, **details))


def _where(store: str, array: str | None) -> str:
    return store + (f"/{array}" if array else "")


def _rows_for(loaded, X, store: str, array: str | None, model_path: str, rows: str | None,
              *, learn: bool) -> tuple[int, int]:
    """The rows of X a job over MODEL takes, after checking X has MODEL's features.

    ``learn``: the rows must be new to MODEL (default: those after every row
    it has seen of this store). Otherwise, by default the rows new to MODEL
    if it knows this store, else all rows.
    """
    where = _where(store, array)
    expected = (loaded[0] if isinstance(loaded, Pipeline) else loaded).n_features_in_
    if X.shape[1] != expected:
        raise CommandError(f"{where} has {X.shape[1]} features, but {model_path} was fitted on "
                           f"{expected}; pass the store it was fitted on")
    record = getattr(_mixture_of(loaded), "provenance_", None)
    try:
        chosen = None if rows is None else provenance.parse_rows(rows, X.shape[0])
        if not learn and (chosen is not None or not provenance.rows_seen(record, X)):
            return chosen or (0, int(X.shape[0]))
        return provenance.new_rows(record, X, chosen, where, model_path)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _mixture_of(loaded):
    return loaded[-1] if isinstance(loaded, Pipeline) else loaded


_rows_opt = click.option("--rows", default=None, metavar="START:STOP",
                         help="Rows of STORE (STOP excluded; either may be left out, e.g. "
                              "1000:). Default: the rows MODEL has not seen, after every row "
                              "its provenance says it learnt from STORE.")


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("store")
@_array
@_rows_opt
@click.option("--out", required=True, help="Model file to write (atomically).")
@_overwrite("Replace an existing model file, MODEL itself included (never a directory).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Rows per minibatch, one stepwise-EM step each (default: MODEL's).")
@click.option("--decay", type=click.FloatRange(0.5, 1, min_open=True), default=None,
              help="kappa in the step size rho_t = max((t + offset)^-kappa, forget) "
                   "(default: MODEL's learning_decay, 0.6 for a new model).")
@click.option("--offset", type=click.FloatRange(min=0), default=None,
              help="t0 in the step size (default: MODEL's learning_offset).")
@click.option("--forget", type=click.FloatRange(0, 1), default=None, metavar="RHO",
              help="Floor on the step size, so old data fade: the model weighs about the last "
                   "1/RHO minibatches (default: MODEL's min_step_size, 0 for a new model).")
@click.option("--contamination", type=click.FloatRange(0, 0.5, min_open=True), default=None,
              help="Also store an outlier threshold in the new model (what `dgmm report` "
                   "counts against): the exact log-density quantile at this share of the "
                   "rows learnt, under the new model (two more passes over them).")
@_cluster_opt
@_quiet
@_verbose
def update(model_path, store, array, rows, out, overwrite, batch_size, decay, offset, forget,
           contamination, cluster_spec, quiet, verbose):
    """Continue MODEL's stepwise EM over new rows of STORE; save the new model to --out.

    The rows are read in storage order in minibatches of --batch-size rows,
    each one step from MODEL's running statistics (exactly
    GaussianMixture.partial_fit on those rows). A model fitted by batch EM
    starts its running statistics from its parameters, its fitted rows
    counting as rows // batch-size steps already taken. MODEL is never
    changed unless --out names it (with --overwrite); the new model replaces
    it atomically once complete. The new model's provenance gains an entry.
    """
    loaded = _load(model_path)
    X = _open_store(store, array)
    start, stop = _rows_for(loaded, X, store, array, model_path, rows, learn=True)
    if not overwrite and Path(out).exists() and os.path.samefile(out, model_path):
        raise CommandError(f"--out {out} is MODEL itself; pass --overwrite to replace it (once "
                           "the new model is complete)")
    _check_output(out, [store], overwrite=overwrite, kind="file")
    _hold(out)
    mixture = _mixture_of(loaded)
    given = {"batch_size": batch_size, "learning_decay": decay, "learning_offset": offset,
             "min_step_size": forget}
    mixture.set_params(**{name: v for name, v in given.items() if v is not None})
    n_batches = max(1, round((stop - start) / mixture.batch_size))
    _say(quiet, f"learning rows {start}:{stop} of {_where(store, array)} in {n_batches} "
                f"minibatches of about {mixture.batch_size} rows")
    begin = time.perf_counter()
    with _cluster(cluster_spec, quiet):
        _, Xt = _mixture_and_input(loaded, io.as_dask_array(X)[0][start:stop])
        mixture.partial_fit(Xt)
        if contamination is not None:
            detector = _outlier_detector(mixture, Xt, contamination, quiet)
            mixture.outlier_threshold_ = float(detector.threshold_)
            mixture.outlier_contamination_ = float(contamination)
    taken = n_batches  # one storage-order epoch: a step per minibatch
    mixture.provenance_ = _history_entry(
        getattr(mixture, "provenance_", None), "update", X, store, array, (start, stop),
        steps=int(taken), batch_size=int(mixture.batch_size),
        learning_decay=float(mixture.learning_decay),
        learning_offset=float(mixture.learning_offset),
        min_step_size=float(mixture.min_step_size),
        mean_log_likelihood=float(mixture.lower_bound_))
    save(loaded, out, overwrite=overwrite)
    _say(quiet, f"updated in {time.perf_counter() - begin:.1f}s: {taken} steps (now "
                f"{mixture.n_steps_}), last step size {mixture.step_size_:.4g}, mean "
                f"log-likelihood of the new rows {mixture.lower_bound_:.6f}; saved {out}")


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("store")
@_array
@click.option("--rows", default=None, metavar="START:STOP",
              help="Rows of STORE (STOP excluded; either may be left out). Default: the rows "
                   "MODEL has not learnt from, if its provenance knows STORE; all rows if not.")
@click.option("--json", "json_path", required=True, metavar="OUT",
              help="JSON file to write the report to (atomically).")
@click.option("--fail-above", type=float, default=None, metavar="NATS",
              help="Exit with code 3 (after writing the report) when the drift exceeds NATS "
                   "per row.")
@_overwrite("Replace an existing --json file.")
@_cluster_opt
@_quiet
@_verbose
def report(model_path, store, array, rows, json_path, fail_above, overwrite, cluster_spec, quiet,
           verbose):
    """Compare rows of STORE with MODEL in one pass; write a JSON drift report.

    drift = MODEL's training mean log-likelihood (its lower bound: after an
    update, that of the rows it learnt, each scored before its own step)
    minus the mean log-likelihood of the rows, in nats per row: 0 when they
    fit as well as the training rows, 0.1 when they are about 10% less likely
    on average. Also: component occupancy (summed responsibilities) against
    MODEL's weights with a chi-square statistic, the share of rows below
    MODEL's outlier threshold when it stores one (`dgmm update
    --contamination`), and per-feature means against the mixture mean. For a
    model saved with --standardize or --pca, all of it is in that space.
    """
    from dgmm.drift import drift_report

    loaded = _load(model_path)
    X = _open_store(store, array)
    start, stop = _rows_for(loaded, X, store, array, model_path, rows, learn=False)
    _check_output(json_path, [store, model_path], overwrite=overwrite, kind="file")
    _hold(json_path)
    with _cluster(cluster_spec, quiet):
        _, Xt = _mixture_and_input(loaded, io.as_dask_array(X)[0][start:stop])
        result = drift_report(_mixture_of(loaded), Xt)
    drift = result["drift"]
    drifted = fail_above is not None and drift is not None and drift > fail_above
    body = {"model": os.path.realpath(model_path),
            "store": provenance.describe_store(X, store, array), "rows": [start, stop],
            "time": provenance.now(), "dgmm_version": io._version(), **result,
            "fail_above": fail_above, "drifted": drifted}
    io.write_text(json_path, json.dumps(body, indent=2, allow_nan=False) + "\n",
                  overwrite=overwrite)
    outliers = ("" if result["outlier_fraction"] is None
                else f", {result['outlier_fraction']:.2%} of rows below the outlier threshold")
    _say(quiet, f"rows {start}:{stop}: mean log-likelihood {result['mean_log_likelihood']:.6f}"
                f", drift {'-' if drift is None else f'{drift:+.4f}'} nats/row, occupancy "
                f"chi-square {result['chi_square']:.1f} (dof {result['chi_square_dof']})"
                f"{outliers}; wrote {json_path}")
    if drifted:
        _error(f"drift {drift:.4f} nats/row exceeds --fail-above {fail_above:g}",
               "dgmm report")
        sys.exit(3)  # SystemExit passes through click: the scheduler sees 3


DEMO_CONTAMINATION = 0.01


@main.command()
@click.option("--n-samples", type=click.IntRange(min=1000), default=200_000, show_default=True)
@click.option("--n-features", type=click.IntRange(min=2), default=8, show_default=True)
@click.option("--n-components", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="LocalCluster worker processes.")
@click.option("--plot", "plot_path", default="dgmm-demo.png", show_default=True,
              help="Where to write a plot (needs matplotlib); '' for none.")
@_quiet
@_verbose
def demo(n_samples, n_features, n_components, seed, workers, plot_path, quiet, verbose):
    """Generate a synthetic store, fit it on a LocalCluster, compare with the truth."""
    from distributed import Client, LocalCluster

    from dgmm import GaussianMixture
    from dgmm.datasets import make_mixture_zarr

    if plot_path:
        _check_output(plot_path, (), overwrite=True, kind="file")
    with tempfile.TemporaryDirectory(prefix="dgmm-demo-") as tmp:
        store = os.path.join(tmp, "demo.zarr")
        truth = make_mixture_zarr(store, n_samples, n_features, n_components, seed=seed)
        _say(quiet, f"generated {n_samples} x {n_features} rows from {n_components} "
                    f"components in {store}")
        with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None,
                          processes=True) as cluster, Client(cluster):
            _say(quiet, f"LocalCluster with {workers} worker processes")
            model = GaussianMixture(n_components, random_state=seed, max_iter=200)
            start = time.perf_counter()
            model.fit(f"{store}/X", callback=_progress(quiet))
            elapsed = time.perf_counter() - start
            fig = _demo_figure(model, f"{store}/X", seed, quiet) if plot_path else None
        err, weight_err = _compare_to_truth(model, truth)
    click.echo(f"fitted in {elapsed:.1f}s: {model.n_iter_} iterations, "
               f"converged={model.converged_}, mean log-likelihood {model.lower_bound_:.4f}")
    click.echo(f"largest distance between a fitted and a true mean: {err:.4f}; "
               f"largest weight error: {weight_err:.4f}")
    if err > 0.1 * float(np.sqrt(n_features)):
        raise click.ClickException(f"the fit did not recover the true means (error {err:.3f})")
    if fig is not None:
        fig.savefig(plot_path, dpi=100)
        click.echo(f"figure: {plot_path}")


def _compare_to_truth(model, truth) -> tuple[float, float]:
    from scipy.optimize import linear_sum_assignment

    cost = ((model.means_[:, None, :] - truth.means[None]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    err = float(np.sqrt(cost[rows, cols]).max())
    weight_err = float(np.abs(model.weights_[rows] - truth.weights[cols]).max())
    return err, weight_err


def _demo_figure(model, store: str, seed: int, quiet: bool):
    """The demo's figure, drawn from the data: ellipses, lower bounds, log-densities."""
    try:
        from dgmm import plot

        fig, axes = plot.panels(3)
    except ImportError as exc:
        _say(quiet, f"no figure: {exc}")
        return None
    from dgmm.outliers import GaussianMixtureOutlierDetector

    plot.ellipses(model, store, features=_view(model.n_features_in_), ax=axes[0],
                  random_state=seed)
    plot.lower_bounds(model, ax=axes[1])
    detector = GaussianMixtureOutlierDetector(model, contamination=DEMO_CONTAMINATION).fit(store)
    plot.log_density_histogram(detector, ax=axes[2])
    axes[2].set_title(f"log-density: {DEMO_CONTAMINATION:.0%} of rows are outliers")
    return fig


if __name__ == "__main__":
    main()
