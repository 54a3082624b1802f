"""'kmeans' initialisation plus fit, dgmm versus scikit-learn, in memory.

Reports wall time of initialisation and of the whole fit for both, the final
mean log-likelihood of each, and the number of data passes dgmm's
initialisation made (counted at the orchestration layer). Medians of
``--repeats`` runs measured in one process.

    python -m benchmarks.bench_init [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.mixture import GaussianMixture as SkGM

from benchmarks.bench_em import make_data
from dgmm import GaussianMixture, _init


def dgmm_run(X, k, seed):
    passes = []
    real = _init.block_pass

    def counting(*args, **kwargs):
        passes.append(args[1].__name__)
        return real(*args, **kwargs)

    _init.block_pass = counting
    try:
        t0 = time.perf_counter()
        init_only = GaussianMixture(k, max_iter=0, random_state=seed).fit(X)
        t_init = time.perf_counter() - t0
        n_init_passes = len(passes)
        t0 = time.perf_counter()
        gm = GaussianMixture(k, random_state=seed).fit(X)
        t_fit = time.perf_counter() - t0
    finally:
        _init.block_pass = real
    del init_only
    return t_init, t_fit, gm.score(X), gm.n_iter_, n_init_passes


def sklearn_run(X, k, seed):
    t0 = time.perf_counter()
    SkGM(k, max_iter=0, random_state=seed).fit(X)
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    gm = SkGM(k, random_state=seed).fit(X)
    return t_init, time.perf_counter() - t0, gm.score(X), gm.n_iter_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=1e5 instead of 1e6")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, d, k = (100_000 if args.quick else 1_000_000), 16, 8
    X = make_data(n, d, k, seed=1)
    rows = {"sklearn": [], "dgmm": []}
    for seed in range(args.repeats):
        rows["sklearn"].append(sklearn_run(X, k, seed))
        rows["dgmm"].append(dgmm_run(X, k, seed))
    print(f"init_params='kmeans', N={n:.0e}, d={d}, K={k}, full covariance, tol=1e-3; "
          f"medians of {args.repeats} seeds\n")
    header = (f"{'':<8} {'init s':>8} {'init+fit s':>11} {'EM iters':>9} "
              f"{'mean loglik':>12} {'init data passes':>17}")
    print(header)
    print("-" * len(header))
    for name, runs in rows.items():
        r = np.median(np.array([run[:4] for run in runs]), axis=0)
        passes = "-" if name == "sklearn" else f"{max(run[4] for run in runs)}"
        print(f"{name:<8} {r[0]:>8.2f} {r[1]:>11.2f} {r[3]:>9.0f} {r[2]:>12.4f} {passes:>17}")
    sk, dg = (np.median([run[1] for run in rows[m]]) for m in ("sklearn", "dgmm"))
    print(f"\ninit+fit speed-up of dgmm over sklearn: {sk / dg:.1f}x")


if __name__ == "__main__":
    main()
