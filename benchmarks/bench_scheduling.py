"""Scheduling: tiny dask chunks, and the layout of threads and workers, in s/iteration.

1. Tiny chunks: ``--rows`` x 4 float64 as a dask array in chunks of ``--tiny``
   rows against the same data in 4 MiB chunks, K=4 full and diag, on the
   threaded scheduler (passes fuse runs of small blocks into larger tasks).
2. Layouts: ``--rows`` x 16 float64, K=8 full and diag, as a persisted dask
   array, on the threaded scheduler, on ``LocalCluster(n_workers=1,
   threads_per_worker=2)`` and on ``LocalCluster(n_workers=2,
   threads_per_worker=1)``, both made as a user would, with dask's defaults
   (the nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers).

Seconds per iteration are medians over ``--iters`` EM iterations (tol=0, from
the true parameters); user and system CPU seconds per iteration are summed
over this process and its children (the workers), so their sum over the wall
time says how many cores were busy and the system share shows time lost to
the allocator (mapping and faulting in fresh memory).

    python -m benchmarks.bench_scheduling --rows 1000000 --iters 5
"""

from __future__ import annotations

import argparse
import os
import warnings

import dask.array as da
import numpy as np
import psutil
from sklearn.exceptions import ConvergenceWarning

from benchmarks.bench_em import fit_timed, make_data
from dgmm import GaussianMixture, _em


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process and all its children alive now."""
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    user = system = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user += t.user + t.children_user
        system += t.system + t.children_system
    return user, system


def init_from(X: np.ndarray, k: int, cov: str) -> dict:
    """Starting parameters from a k-means-like split of the first rows (no init pass)."""
    from sklearn.mixture import GaussianMixture as SkGM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkGM(k, covariance_type=cov, max_iter=1, tol=0, random_state=0,
                   init_params="random_from_data").fit(X[:20_000])
    return {"weights_init": ref.weights_, "means_init": ref.means_,
            "precisions_init": ref.precisions_}


def seconds_per_iteration(X, k, cov, init, iters) -> tuple[float, float, float]:
    """Median s/iteration of a fit, and user and system CPU seconds per iteration."""
    gm = GaussianMixture(k, covariance_type=cov, max_iter=iters, tol=0, **init)
    u0, s0 = cpu_seconds()
    times = fit_timed(gm, _em, "estep_pass", X)
    u1, s1 = cpu_seconds()
    return float(np.median(times)), (u1 - u0) / len(times), (s1 - s0) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tiny", type=int, default=1_000, help="rows per tiny chunk")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--skip-clusters", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    print(f"{psutil.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print("| data | layout | cov | s/iter | user CPU s/iter | system CPU s/iter | cores busy |")
    print("|---|---|---|---:|---:|---:|---:|")

    def row(data, layout, cov, result):
        s, user, system = result
        print(f"| {data} | {layout} | {cov} | {s:.3f} | {user:.3f} | {system:.3f} | "
              f"{(user + system) / s:.2f} |", flush=True)

    X = make_data(args.rows, 4, 4)
    for cov in ("diag", "full"):
        init = init_from(X, 4, cov)
        for rows in (args.tiny, 4 * 2**20 // (4 * 8)):
            Xd = da.from_array(X, chunks=(rows, 4)).persist(scheduler="threads")
            result = seconds_per_iteration(Xd, 4, cov, init, args.iters)
            row(f"{args.rows:.0e} x 4, {Xd.numblocks[0]} chunks of {rows}", "threads",
                cov, result)
    if args.skip_clusters:
        return
    from distributed import Client, LocalCluster

    X = make_data(args.rows, 16, 8)
    layouts = [("threads", None), ("LocalCluster 1 worker x 2 threads", (1, 2)),
               ("LocalCluster 2 workers x 1 thread", (2, 1))]
    for layout, shape in layouts:
        for cov in ("full", "diag"):
            init = init_from(X, 8, cov)
            if shape is None:
                Xd = da.from_array(X, chunks=(32_768, 16)).persist(scheduler="threads")
                row(f"{args.rows:.0e} x 16", layout, cov,
                    seconds_per_iteration(Xd, 8, cov, init, args.iters))
                continue
            with LocalCluster(n_workers=shape[0], threads_per_worker=shape[1],
                              dashboard_address=None) as cluster, Client(cluster) as client:
                Xd = client.persist(da.from_array(X, chunks=(32_768, 16)))
                row(f"{args.rows:.0e} x 16", layout, cov,
                    seconds_per_iteration(Xd, 8, cov, init, args.iters))


if __name__ == "__main__":
    main()
