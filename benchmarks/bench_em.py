"""Seconds per EM iteration, dgmm versus scikit-learn, on in-memory data.

Both fit the same data from the same initial parameters for exactly 20
iterations (tol=0). Per-iteration times are recorded inside each fit and the
median is reported, with their ratio and the achieved GFLOP/s against a
matmul peak measured in the same run (the machine is shared and noisy, so
only same-run ratios mean anything).

It also prints where the time of one iteration goes: the kernel's stages
timed one after the other on a single thread over all rows (the linear
route's compiled features, the densities' GEMM, the compiled log-sum-exp,
the statistics; the NumPy reference route, which was the kernel before the
linear route: centring, squared distances, log-sum-exp, statistics), the
rest of the single-threaded kernel (Python, packets), what the pass adds per
block read (CRC-32 and value range of the fingerprint on a block's first
read; CRC-32C on every read of a streamed block) and the pass on the
default threaded scheduler, whose ratio to the kernel says how many cores
were kept busy.

    python -m benchmarks.bench_em            # the cases of the issue
    python -m benchmarks.bench_em --quick    # smaller N, for a smoke run
    python -m benchmarks.bench_em --iters 8 --cases 2 5   # some cases, fewer iterations
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGM
from threadpoolctl import threadpool_limits

from dgmm import GaussianMixture, _em, _passes
from dgmm import _kernels as kernels

# (rows, features, components, covariance type, dtype)
CASES = [
    (1_000_000, 16, 8, "full", "float64"),
    (200_000, 64, 16, "full", "float64"),
    (1_000_000, 16, 8, "diag", "float64"),
    (1_000_000, 8, 4, "full", "float64"),
    (1_000_000, 16, 8, "full", "float32"),
    (1_000_000, 16, 8, "diag", "float32"),
]
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


def fit_timed(gm, owner, name: str, X) -> np.ndarray:
    """Fit ``gm`` on ``X``, timing the intervals between calls of ``owner.name``."""
    stamps = []
    real = getattr(owner, name)

    def timed(*args, **kwargs):
        out = real(*args, **kwargs)
        stamps.append(time.perf_counter())
        return out

    setattr(owner, name, timed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            gm.fit(X)
    finally:
        setattr(owner, name, real)
    return np.diff([start, *stamps])


def iteration_times_sklearn(X, k, covariance_type, init, n_iter=N_ITER):
    gm = SkGM(k, covariance_type=covariance_type, max_iter=n_iter, tol=0, **init)
    return fit_timed(gm, gm, "_m_step", X), gm  # one M-step per iteration


def iteration_times_dgmm(X, k, covariance_type, init, n_iter=N_ITER):
    gm = GaussianMixture(k, covariance_type=covariance_type, max_iter=n_iter, tol=0, **init)
    return fit_timed(gm, _em, "estep_pass", X), gm  # one data pass per iteration


def _clock(stages: dict, name: str, since: float) -> float:
    now = time.perf_counter()
    stages[name] = stages.get(name, 0.0) + now - since
    return now


def profile_iteration(X: np.ndarray, params: kernels.Params) -> dict[str, float]:
    """Seconds of each stage of one E-step over ``X`` on one thread, by route.

    The stages run as in :func:`dgmm._kernels.estep_stats`, one after the
    other per sub-block; 'kernel' is ``estep_stats`` itself over all rows and
    'other' what it spends beyond the stages (Python, packets).
    """
    scorer = kernels.Scorer.of(params)
    k = params.n_components
    stages: dict[str, float] = {}
    with threadpool_limits(limits=1, user_api="blas"), np.errstate(all="ignore"):
        if scorer.lin is not None:
            compiled = kernels._compiled()
            fill, W = compiled.FILL[params.covariance_type], scorer.lin
            rows = kernels.linear_sub_rows(W.shape[1], k)
            F, P = np.empty((rows, W.shape[1])), np.empty((rows, k))
            log_norm, G, no_label = np.empty(rows), np.zeros((k, W.shape[1])), np.empty(0, int)
            hot = np.empty(rows, dtype=np.int64)
            for _, sl in kernels.sub_blocks(len(X), rows):
                n = sl.stop - sl.start
                t = time.perf_counter()
                fill(X[sl], scorer.center, F[:n])
                t = _clock(stages, "features", t)
                np.matmul(F[:n], W.T, out=P[:n])
                t = _clock(stages, "densities GEMM", t)
                _, nonzero = compiled.normalise_rows(P[:n], no_label, log_norm[:n],
                                                     kernels._LOG_NEGLIGIBLE, hot)
                t = _clock(stages, "log-sum-exp", t)
                if nonzero <= kernels.SPARSE_SHARE * P[:n].size:
                    compiled.add_sparse_products(P[:n], F[:n], G, hot)
                else:
                    G += P[:n].T @ F[:n]
                _clock(stages, "statistics", t)
        for _, sl in kernels.sub_blocks(len(X)):
            t = time.perf_counter()
            b = scorer.block(X[sl])
            t = _clock(stages, "ref: centre", t)
            A = kernels._weighted_log_prob_t(b, scorer)
            t = _clock(stages, "ref: distances", t)
            kernels._normalise_t(A)
            t = _clock(stages, "ref: log-sum-exp", t)
            kernels.stats_from_resp(X[sl], A, params.means, scorer.center,
                                    params.covariance_type, block=b)
            _clock(stages, "ref: statistics", t)
        t = time.perf_counter()
        kernels.estep_stats(X, params)
        _clock(stages, "kernel", t)
        reads = [X[sl[0] : sl[-1] + 1]
                 for sl in np.array_split(np.arange(len(X)), max(1, X.nbytes // 2**22))]
        t = time.perf_counter()
        for rows in reads:
            _passes._crc([rows]), _passes._value_range(rows)
        t = _clock(stages, "pass: first reads: CRC-32 and range", t)
        for rows in reads:
            _passes._check([rows])
        _clock(stages, "pass: reads: CRC-32C", t)
        t = time.perf_counter()
        kernels.estep_stats(X, params, reference=True)
        _clock(stages, "ref: kernel", t)
    fast = [v for key, v in stages.items()
            if key != "kernel" and not key.startswith(("ref", "pass"))]
    ref = [v for key, v in stages.items() if key.startswith("ref: ") and key != "ref: kernel"]
    if fast:
        stages["other"] = stages["kernel"] - sum(fast)
    stages["ref: other"] = stages["ref: kernel"] - sum(ref)
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="divide N by 10")
    parser.add_argument("--scale", type=float, default=1.0, help="divide N by this")
    parser.add_argument("--iters", type=int, default=N_ITER, help="EM iterations per fit")
    parser.add_argument("--cases", type=int, nargs="*", help="case numbers (default: all)")
    parser.add_argument("--no-profile", action="store_true", help="skip the stage profile")
    args = parser.parse_args()
    cases = [CASES[i] for i in args.cases] if args.cases else CASES
    peak = matmul_peak_gflops()
    print(f"float64 matmul peak on this machine: {peak:.1f} GFLOP/s, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    header = (f"{'case':<34} {'sklearn s/it':>12} {'dgmm s/it':>10} {'speed-up':>9} "
              f"{'dgmm GFLOP/s':>12} {'% peak':>7} {'max rel diff':>12} {'load':>5}")
    print(header)
    print("-" * len(header))
    profiles = []
    for n, d, k, cov, dtype in cases:
        n = int(n / (10 if args.quick else args.scale))
        X = make_data(n, d, k).astype(dtype)
        init = initial_parameters(X, k, cov)
        t_sk, sk = iteration_times_sklearn(X, k, cov, init, args.iters)
        t_dg, dg = iteration_times_dgmm(X, k, cov, init, args.iters)
        med_sk, med_dg = np.median(t_sk), np.median(t_dg)
        gflops = flops_per_iteration(n, d, k, cov) / med_dg / 1e9
        diff = max(
            np.abs(dg.means_ - sk.means_).max() / np.abs(sk.means_).max(),
            np.abs(dg.covariances_ - sk.covariances_).max() / np.abs(sk.covariances_).max(),
            np.abs(dg.weights_ - sk.weights_).max() / np.abs(sk.weights_).max(),
        )
        name = f"N={n:.0e} d={d} K={k} {cov} {dtype}"
        print(f"{name:<34} {med_sk:>12.3f} {med_dg:>10.3f} {med_sk / med_dg:>8.1f}x "
              f"{gflops:>12.1f} {100 * gflops / peak:>6.1f}% {diff:>12.1e} "
              f"{os.getloadavg()[0]:>5.1f}", flush=True)
        if not args.no_profile:
            params = kernels.Params(cov, dg.weights_, dg.means_, dg.precisions_cholesky_)
            profiles.append((name, med_dg, profile_iteration(X, params)))
    print(f"\nmedians of {args.iters} iterations per fit; same initial parameters, tol=0")
    for name, pass_s, stages in profiles:
        print(f"\none iteration of {name}, seconds on one thread by stage:")
        for route, prefix in (("linear route", ""), ("reference route", "ref: ")):
            keys = [key for key in stages if key.startswith(prefix)
                    and (prefix or not key.startswith(("ref: ", "pass: ")))]
            if not keys:
                continue
            kernel = stages[f"{prefix}kernel"]
            cells = ", ".join(f"{key[len(prefix):]} {stages[key]:.3f}" for key in keys
                              if not key.endswith("kernel"))
            print(f"  {route}: {cells}; kernel {kernel:.3f}")
        print(f"  beside the kernel: a block's first read, CRC-32 and value range "
              f"{stages['pass: first reads: CRC-32 and range']:.3f}; every read of a "
              f"streamed block, CRC-32C {stages['pass: reads: CRC-32C']:.3f}")
        print(f"  pass on the threaded scheduler: {pass_s:.3f} s, "
              f"{stages['kernel'] / pass_s:.2f} cores busy with the kernel's work")


if __name__ == "__main__":
    main()
