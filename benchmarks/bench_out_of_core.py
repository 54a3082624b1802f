"""Out-of-core benchmark: bounded memory and I/O-bound EM passes on Zarr stores.

For each store size (rows of ``--features`` float32 columns) this script

1. writes a synthetic mixture store with :func:`dgmm.datasets.make_mixture_zarr`;
2. times a bare streaming read of ``X`` (dask reads every chunk and sums it);
3. times ``--iters`` EM iterations (one data pass each) for diag and full
   covariance with ``cache=False`` (streamed from the store every pass),
   started from the true parameters so no initialisation pass is timed;
4. samples the resident memory of the whole process tree every 10 ms
   (psutil) and reports the peak of each phase;

on the default threaded scheduler, then deletes the store (unless --keep).
Targets: diag pass <= 1.5x the bare read; peak memory < 1 GB and independent
of the number of rows. Full covariance costs 4*N*K*d^2 flops per pass.

Example (1 GB and 8 GB stores, d=16, K=8)::

    python benchmarks/bench_out_of_core.py --rows 15625000 125000000 --dir /tmp/dgmm-bench
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from dgmm import GaussianMixture
from dgmm.datasets import make_mixture_zarr
from dgmm.io import as_dask_array


class PeakRSS:
    """Peak resident memory of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak = self.rss()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def timed(monitor: PeakRSS, fn):
    """(seconds, peak RSS in bytes, result) of ``fn()``."""
    monitor.reset()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    time.sleep(2 * monitor.interval)
    return seconds, monitor.peak, result


def init_for(truth, covariance_type: str) -> dict:
    """Starting parameters of the given type from the true (full) ones."""
    variances = np.diagonal(truth.covariances, axis1=1, axis2=2)
    if covariance_type == "full":
        precisions = np.linalg.inv(truth.covariances)
    else:
        precisions = 1.0 / variances
    return {"weights_init": truth.weights, "means_init": truth.means,
            "precisions_init": precisions}


def bench_size(args, n_rows: int, monitor: PeakRSS) -> dict:
    d, k = args.features, args.components
    path = Path(args.dir) / f"mixture_{n_rows}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    compressors = None if args.compressors == "none" else "auto"
    gen_s, gen_peak, truth = timed(monitor, lambda: make_mixture_zarr(
        path, n_rows, d, k, chunk_rows=args.chunk_rows, seed=0,
        compressors=compressors, covariance_type="full",
    ))
    source = str(path / "X")
    X = as_dask_array(source)[0]
    row = {"rows": n_rows, "GB": X.nbytes / 1e9, "chunk_MB": X.chunks[0][0] * d * 4 / 1e6,
           "gen_s": gen_s, "gen_peak": gen_peak}
    read_s, read_peak, _ = timed(monitor, lambda: X.sum(axis=0).compute())
    row.update(read_s=read_s, read_peak=read_peak)
    for cov in ("diag", "full"):
        gm = GaussianMixture(k, covariance_type=cov, max_iter=args.iters, tol=0.0,
                             cache=False, **init_for(truth, cov))
        fit_s, fit_peak, _ = timed(monitor, lambda gm=gm: gm.fit(source))
        row[f"{cov}_pass_s"] = fit_s / gm.n_iter_
        row[f"{cov}_peak"] = fit_peak
    row["full_gflops"] = 4 * n_rows * k * d * d / row["full_pass_s"] / 1e9
    if not args.keep:
        shutil.rmtree(path)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[15_625_000, 125_000_000])
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="rows per stored chunk (default: about 16 MiB)")
    parser.add_argument("--compressors", choices=["none", "default"], default="none",
                        help="'none': raw float32 chunks; 'default': zarr's default codec")
    parser.add_argument("--dir", default="/tmp/dgmm-bench")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    args = parser.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    monitor = PeakRSS()
    baseline = monitor.rss()
    rows = [bench_size(args, n, monitor) for n in args.rows]
    monitor.stop()

    mb = 2**20
    print(f"d={args.features} K={args.components} float32, {args.iters} EM iterations per fit, "
          f"threaded scheduler, {psutil.cpu_count()} cores, compressors={args.compressors}, "
          f"baseline RSS {baseline / mb:.0f} MiB")
    print("| rows | store GB | chunk MB | bare read s (GB/s) | diag pass s (x read) "
          "| full pass s (x read) | full GFLOP/s | peak RSS MiB read / diag / full |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['rows']:,} | {r['GB']:.2f} | {r['chunk_MB']:.1f} "
            f"| {r['read_s']:.2f} ({r['GB'] / r['read_s']:.2f}) "
            f"| {r['diag_pass_s']:.2f} ({r['diag_pass_s'] / r['read_s']:.2f}x) "
            f"| {r['full_pass_s']:.2f} ({r['full_pass_s'] / r['read_s']:.2f}x) "
            f"| {r['full_gflops']:.1f} "
            f"| {r['read_peak'] / mb:.0f} / {r['diag_peak'] / mb:.0f} / {r['full_peak'] / mb:.0f} |"
        )
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        scale = b["rows"] / a["rows"]
        print(f"scaling {a['rows']:,} -> {b['rows']:,} rows (x{scale:.1f}): "
              f"read x{b['read_s'] / a['read_s']:.2f}, "
              f"diag pass x{b['diag_pass_s'] / a['diag_pass_s']:.2f}, "
              f"full pass x{b['full_pass_s'] / a['full_pass_s']:.2f}")
    print("generation s (peak RSS MiB): " + ", ".join(
        f"{r['rows']:,} rows {r['gen_s']:.1f} ({r['gen_peak'] / mb:.0f})" for r in rows))


if __name__ == "__main__":
    main()
