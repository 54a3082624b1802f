"""Minibatch (stepwise) EM versus batch EM: log-likelihood against time and rows read.

Writes a float32 Zarr store of a synthetic mixture chunk by chunk (N=1e7,
d=16, K=8: about 640 MB), fits it with batch EM run to convergence and with
minibatch EM from the same initialisation, prints both curves and the time
each needs to get within 0.01 nats/sample of the batch optimum, then deletes
the store.

Batch EM's curve is exact and free: each pass returns the full-data mean
log-likelihood of the parameters it started from, which existed at the end of
the previous pass. Minibatch snapshots are scored afterwards (not timed) on
the first ``--eval-rows`` rows, together with the batch optimum, so the gap
is a paired difference with a standard error far below 0.01.

Usage::

    python benchmarks/bench_minibatch.py [--n-samples 10000000] [--chunk-rows 25000]
        [--batch-size 50000] [--store /tmp/dgmm_bench_minibatch.zarr]
"""

from __future__ import annotations

import argparse
import shutil
import time
import warnings

import dask
import dask.array as da
import numpy as np
import zarr
from sklearn.exceptions import ConvergenceWarning

from dgmm import GaussianMixture, _em, _passes
from dgmm import _kernels as K

GAP = 0.01  # nats per sample


def write_store(path: str, n: int, d: int, k: int, chunk_rows: int, seed: int = 0) -> None:
    """A K-component mixture with random full covariances, written chunk by chunk."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.5, size=(k, d))
    mix = np.stack([np.eye(d) + 0.3 * rng.normal(size=(d, d)) for _ in range(k)])
    weights = rng.dirichlet(np.full(k, 5.0))
    arr = zarr.create_array(path, shape=(n, d), chunks=(chunk_rows, d), dtype="float32",
                            overwrite=True)
    for start in range(0, n, chunk_rows):
        m = min(chunk_rows, n - start)
        labels = rng.choice(k, size=m, p=weights)
        z = rng.standard_normal((m, d))
        arr[start : start + m] = (means[labels] + np.einsum("nij,nj->ni", mix[labels], z)).astype(
            np.float32
        )


def _score_block(block, row_offset, index, params_list):
    return np.array([K.predict_block(block, p, "log_density").sum() for p in params_list])


def mean_loglik(X: da.Array, params_list: list[K.Params]) -> np.ndarray:
    """Mean log-likelihood of each parameter set over X, in one read of X."""
    with _passes.blas_guard():
        total = _passes.block_pass(_passes.as_blocks(X), _score_block, params_list)
    return total / X.shape[0]


def first_within(times, rows, logliks, target):
    for t, r, ll in zip(times, rows, logliks, strict=True):
        if ll >= target:
            return t, r
    return float("nan"), -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, default=10_000_000)
    ap.add_argument("--n-features", type=int, default=16)
    ap.add_argument("--n-components", type=int, default=8)
    ap.add_argument("--chunk-rows", type=int, default=25_000)
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--snapshot-every", type=int, default=10, help="minibatch steps")
    ap.add_argument("--eval-rows", type=int, default=1_000_000)
    ap.add_argument("--batch-tol", type=float, default=1e-5)
    ap.add_argument("--batch-max-iter", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default="/tmp/dgmm_bench_minibatch.zarr")
    args = ap.parse_args()
    n, d, k = args.n_samples, args.n_features, args.n_components
    dask.config.set(scheduler="threads")
    warnings.simplefilter("ignore", ConvergenceWarning)

    t = time.perf_counter()
    write_store(args.store, n, d, k, args.chunk_rows, args.seed)
    print(f"store: {n} x {d} float32, chunks of {args.chunk_rows} rows, "
          f"written in {time.perf_counter() - t:.1f}s")
    try:
        X = da.from_zarr(args.store)
        init_model = GaussianMixture(k, init_params="random_from_data", max_iter=0,
                                     random_state=args.seed).fit(X)

        # Batch EM: lower bound of pass i is the log-likelihood of the model
        # that existed at the end of pass i - 1.
        blocks = _passes.as_blocks(X)
        run = _em.Run(init_model._params(), init_model.covariances_)
        ends = [time.perf_counter()]
        t0 = ends[0]
        with _passes.blas_guard():
            _em.batch_em(blocks, [[run]], max_iter=args.batch_max_iter, tol=args.batch_tol,
                         reg_covar=1e-6,
                         on_iteration=lambda *_: ends.append(time.perf_counter()))
        batch_times = [e - t0 for e in ends[: len(run.lower_bounds)]]
        batch_rows = [i * n for i in range(len(run.lower_bounds))]
        optimum = run.lower_bound
        print(f"batch EM: {run.n_iter} passes, converged={run.converged}, "
              f"{ends[-1] - t0:.1f}s, optimum {optimum:.5f}")

        # Minibatch EM from the same initialisation; snapshots are only stored.
        snaps = []
        state0 = _em.OnlineState.from_params(init_model._params(), init_model.covariances_, 1e-6)

        def on_step(group, state):
            if state.n_steps % args.snapshot_every == 0:
                snaps.append((time.perf_counter() - t0, state.stats.n_rows, state.params))

        t0 = time.perf_counter()
        snaps.append((0.0, 0, state0.params))
        with _passes.blas_guard():
            settings = _em.Settings(batch_size=args.batch_size, max_iter=args.epochs, tol=0.0,
                                    learning_decay=0.6, learning_offset=0.0)
            ((state, mrun),) = _em.minibatch_em(
                blocks, [[state0]], settings, rng=np.random.default_rng(args.seed),
                on_step=on_step,
            )
        mini_total = time.perf_counter() - t0
        print(f"minibatch EM: {mrun.n_iter} epoch(s), {state.n_steps} steps of ~"
              f"{args.batch_size} rows, {mini_total:.1f}s")

        # Score snapshots and the batch optimum on the same rows (paired).
        ev = X[: args.eval_rows]
        lls = mean_loglik(ev, [s[2] for s in snaps] + [run.params])
        gaps = lls[:-1] - lls[-1]
        mini_times = [s[0] for s in snaps]
        mini_rows = [s[1] for s in snaps]

        print(f"\nlog-likelihood vs time and rows (gap to the batch optimum, nats/sample; "
              f"minibatch scored on the first {args.eval_rows} rows)")
        print(f"{'algorithm':<10} {'rows read':>12} {'wall s':>8} {'mean loglik':>12} "
              f"{'gap':>9}")
        for tb, rb, lb in zip(batch_times, batch_rows, run.lower_bounds, strict=True):
            print(f"{'batch':<10} {rb:>12d} {tb:>8.1f} {lb:>12.5f} {lb - optimum:>9.5f}")
        for tm, rm, ll, g in zip(mini_times, mini_rows, lls[:-1], gaps, strict=True):
            print(f"{'minibatch':<10} {rm:>12d} {tm:>8.1f} {ll:>12.5f} {g:>9.5f}")

        tb, rb = first_within(batch_times, batch_rows, run.lower_bounds, optimum - GAP)
        tm, rm = first_within(mini_times, mini_rows, gaps, -GAP)
        print(f"\ntime to within {GAP} nats/sample of the batch optimum:")
        print(f"{'algorithm':<10} {'wall s':>8} {'rows read':>12}")
        print(f"{'batch':<10} {tb:>8.1f} {rb:>12d}")
        print(f"{'minibatch':<10} {tm:>8.1f} {rm:>12d}")
        print(f"ratio minibatch / batch: {tm / tb:.3f} (target < 0.333)")
    finally:
        shutil.rmtree(args.store, ignore_errors=True)


if __name__ == "__main__":
    main()
