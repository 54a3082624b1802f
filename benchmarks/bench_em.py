"""Seconds per EM iteration, dgmm versus scikit-learn, on in-memory data.

Both fit the same data from the same initial parameters for exactly 20
iterations (tol=0). Per-iteration times are recorded inside each fit and the
median is reported, with their ratio and the achieved GFLOP/s against a
matmul peak measured in the same run (the machine is shared and noisy, so
only same-run ratios mean anything).

    python -m benchmarks.bench_em            # the three cases of the issue
    python -m benchmarks.bench_em --quick    # smaller N, for a smoke run
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGM

from dgmm import GaussianMixture, _em

CASES = [(1_000_000, 16, 8, "full"), (200_000, 64, 16, "full"), (1_000_000, 16, 8, "diag")]
N_ITER = 20


def matmul_peak_gflops(n: int = 4096, repeats: int = 3) -> float:
    a = np.random.default_rng(0).normal(size=(n, n))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_iteration(n, d, k, covariance_type) -> float:
    # full: E-step and scatter matrices, 2 n k d^2 each; diag: four n k d GEMMs of 2 flops
    return 4.0 * n * k * d * d if covariance_type == "full" else 8.0 * n * k * d


def make_data(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=4.0, size=(k, d))
    return means[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))


def initial_parameters(X, k, covariance_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkGM(k, covariance_type=covariance_type, init_params="random_from_data",
                   max_iter=1, tol=0, random_state=0).fit(X[:20_000])
    return {"weights_init": ref.weights_, "means_init": ref.means_,
            "precisions_init": ref.precisions_}


def iteration_times_sklearn(X, k, covariance_type, init):
    stamps = []
    gm = SkGM(k, covariance_type=covariance_type, max_iter=N_ITER, tol=0, **init)
    real = gm._m_step

    def timed(*args, **kwargs):
        out = real(*args, **kwargs)
        stamps.append(time.perf_counter())
        return out

    gm._m_step = timed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        gm.fit(X)
    return np.diff([start, *stamps]), gm


def iteration_times_dgmm(X, k, covariance_type, init):
    stamps = []
    real = _em.estep_pass

    def timed(*args, **kwargs):
        out = real(*args, **kwargs)
        stamps.append(time.perf_counter())
        return out

    _em.estep_pass = timed
    try:
        gm = GaussianMixture(k, covariance_type=covariance_type, max_iter=N_ITER, tol=0, **init)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            gm.fit(X)
    finally:
        _em.estep_pass = real
    # the first interval includes input validation and graph set-up
    return np.diff([start, *stamps]), gm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="divide N by 10")
    args = parser.parse_args()
    peak = matmul_peak_gflops()
    print(f"float64 matmul peak on this machine: {peak:.1f} GFLOP/s\n")
    header = (f"{'case':<26} {'sklearn s/it':>12} {'dgmm s/it':>10} {'speed-up':>9} "
              f"{'dgmm GFLOP/s':>12} {'% peak':>7} {'max rel diff':>12}")
    print(header)
    print("-" * len(header))
    for n, d, k, cov in CASES:
        n = n // 10 if args.quick else n
        X = make_data(n, d, k)
        init = initial_parameters(X, k, cov)
        t_sk, sk = iteration_times_sklearn(X, k, cov, init)
        t_dg, dg = iteration_times_dgmm(X, k, cov, init)
        med_sk, med_dg = np.median(t_sk), np.median(t_dg)
        gflops = flops_per_iteration(n, d, k, cov) / med_dg / 1e9
        diff = max(
            np.abs(dg.means_ - sk.means_).max() / np.abs(sk.means_).max(),
            np.abs(dg.covariances_ - sk.covariances_).max() / np.abs(sk.covariances_).max(),
            np.abs(dg.weights_ - sk.weights_).max() / np.abs(sk.weights_).max(),
        )
        name = f"N={n:.0e} d={d} K={k} {cov}"
        print(f"{name:<26} {med_sk:>12.3f} {med_dg:>10.3f} {med_sk / med_dg:>8.1f}x "
              f"{gflops:>12.1f} {100 * gflops / peak:>6.1f}% {diff:>12.1e}", flush=True)
    print(f"\nmedians of {N_ITER} iterations per fit; same initial parameters, tol=0")


if __name__ == "__main__":
    main()
