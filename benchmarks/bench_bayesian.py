"""Seconds per iteration of the variational mixture, dgmm versus scikit-learn.

The cases of :mod:`benchmarks.bench_em`. For each, in one run: scikit-learn's
``BayesianGaussianMixture`` and dgmm's fit the same in-memory data from the
same start (``init_params='random_from_data'``, same ``random_state``) for
exactly ``--iterations`` iterations (tol=0), and the EM pair of bench_em runs
on the same data, so the variational speed-up can be held against the EM one
(the target). Per-iteration times are recorded inside each fit; medians are
reported. The machine is shared and noisy: only same-run ratios mean anything.
Prints a markdown table.

    python -m benchmarks.bench_bayesian              # the three cases at full N
    python -m benchmarks.bench_bayesian --scale 0.1  # N / 10, for a quicker run
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.mixture import BayesianGaussianMixture as SkBGM

from benchmarks import bench_em
from benchmarks.bench_em import (
    CASES,
    fit_timed,
    initial_parameters,
    iteration_times_dgmm,
    iteration_times_sklearn,
    make_data,
)
from dgmm import BayesianGaussianMixture, _em


def bayesian_times(X, k: int, covariance_type: str, n_iter: int):
    """Per-iteration seconds of both variational fits, and their largest relative difference."""
    kw = dict(n_components=k, covariance_type=covariance_type, max_iter=n_iter, tol=0,
              init_params="random_from_data", random_state=0)
    sk = SkBGM(**kw)
    t_sk = fit_timed(sk, sk, "_m_step", X)  # one M-step per iteration
    dg = BayesianGaussianMixture(**kw)
    t_dg = fit_timed(dg, _em, "estep_pass", X)  # one data pass per iteration
    diff = max(
        float(np.max(np.abs(np.asarray(getattr(dg, name)) - np.asarray(getattr(sk, name)))
                     / np.max(np.abs(np.asarray(getattr(sk, name))))))
        for name in ("weights_", "means_", "covariances_", "lower_bound_")
    )
    # the first interval holds the initialisation (and dgmm's prior pass)
    return np.median(t_sk[1:]), np.median(t_dg[1:]), diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N by this")
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    bench_em.N_ITER = args.iterations  # the EM pair runs as many iterations
    print("| case | sklearn BGM s/it | dgmm BGM s/it | BGM speed-up | GMM speed-up (target) "
          "| BGM max rel diff |\n|---|---:|---:|---:|---:|---:|")
    for n, d, k, cov in CASES:
        n = int(n * args.scale)
        X = make_data(n, d, k)
        sk_bgm, dg_bgm, diff = bayesian_times(X, k, cov, args.iterations + 1)
        init = initial_parameters(X, k, cov)
        t_sk, _ = iteration_times_sklearn(X, k, cov, init)
        t_dg, _ = iteration_times_dgmm(X, k, cov, init)
        gmm_ratio = np.median(t_sk) / np.median(t_dg)
        print(f"| N={n:.0e} d={d} K={k} {cov} | {sk_bgm:.3f} | {dg_bgm:.3f} | "
              f"{sk_bgm / dg_bgm:.1f}x | {gmm_ratio:.1f}x | {diff:.1e} |", flush=True)
    print(f"\nmedians of {args.iterations} iterations per variational fit (after the first) "
          f"and per EM fit; tol=0; N scaled by {args.scale:g}")


if __name__ == "__main__":
    main()
