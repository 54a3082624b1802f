"""Out-of-core benchmark: bounded memory and I/O-bound EM passes on Zarr stores.

For each store size (rows of ``--features`` float32 columns) this script

1. writes a synthetic mixture store with :func:`dgmm.datasets.make_mixture_zarr`;
2. times a bare streaming read of ``X`` (dask reads every chunk and sums it),
   cold, and warm (median of ``--iters`` reads); and, for scale, reading the
   bytes of every chunk file of ``X`` without zarr (``np.fromfile``, one
   thread per core, warm), which says how much of the bare read is zarr's
   own work (the EM pass reads through zarr too);
3. times EM passes for diag and full covariance with ``cache=False`` (the
   store is streamed on every pass), started from the true parameters so no
   initialisation pass is timed: one pass right after evicting the store
   from the OS page cache (cold: read from disk), then a fit of ``--iters``
   iterations (warm: page cache as the OS leaves it), each pass timed by the
   fit itself (its callback's ``seconds``) and their median reported, beside
   the whole fit's time over its passes;
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
import os
import shutil
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from sklearn.exceptions import ConvergenceWarning

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


def timed(monitor: PeakRSS, fn, label: str):
    """(seconds, peak RSS in bytes, result) of ``fn()``; progress goes to stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {label}", file=sys.stderr, flush=True)
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


def evict(path: Path) -> None:
    """Drop the store's files from the OS page cache, so the next read is from disk."""
    for file in path.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_chunk_files(array_dir: Path) -> int:
    """Read every chunk file under a Zarr array's directory, bypassing zarr; returns bytes read."""
    files = [f for f in (array_dir / "c").rglob("*") if f.is_file()]
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return sum(pool.map(lambda f: np.fromfile(f, dtype=np.uint8).size, files))


def bench_size(args, n_rows: int, monitor: PeakRSS) -> dict:
    d, k = args.features, args.components
    path = Path(args.dir) / f"mixture_{n_rows}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    compressors = None if args.compressors == "none" else "auto"
    gen_s, gen_peak, truth = timed(monitor, lambda: make_mixture_zarr(
        path, n_rows, d, k, chunk_rows=args.chunk_rows, seed=0,
        compressors=compressors, covariance_type="full",
    ), f"generate {n_rows:,} rows")
    source = str(path / "X")
    X = as_dask_array(source)[0]
    row = {"rows": n_rows, "GB": X.nbytes / 1e9, "chunk_MB": X.chunks[0][0] * d * 4 / 1e6,
           "gen_s": gen_s, "gen_peak": gen_peak}
    evict(path)
    row["read_cold_s"], peak_cold, _ = timed(monitor, lambda: X.sum(axis=0).compute(),
                                             "bare read, cold")
    warm = [timed(monitor, lambda: X.sum(axis=0).compute(), "bare read, warm")
            for _ in range(args.iters)]
    row["read_s"] = float(np.median([seconds for seconds, _, _ in warm]))
    row["read_peak"] = max(peak_cold, *(peak for _, peak, _ in warm))
    files = [timed(monitor, lambda: read_chunk_files(path / "X"), "chunk files, warm")[0]
             for _ in range(args.iters)]
    row["files_s"] = float(np.median(files))
    for cov in ("diag", "full"):
        passes = []  # each pass's own seconds, as the fit reports them

        def fit(max_iter, cov=cov, passes=passes):
            gm = GaussianMixture(k, covariance_type=cov, max_iter=max_iter, tol=0.0,
                                 cache=False, **init_for(truth, cov))
            return gm.fit(source, callback=lambda info: passes.append(info["seconds"]))

        evict(path)  # one pass from disk, then passes over a warm page cache
        row[f"{cov}_cold_s"], peak_cold, _ = timed(monitor, lambda fit=fit: fit(1),
                                                   f"{cov}: one pass, cold")
        passes.clear()
        fit_s, peak_warm, gm = timed(monitor, lambda fit=fit: fit(args.iters),
                                     f"{cov}: {args.iters} passes, warm")
        row[f"{cov}_pass_s"] = float(np.median(passes))
        row[f"{cov}_fit_s"] = fit_s / gm.n_iter_
        row[f"{cov}_peak"] = max(peak_cold, peak_warm)
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
    warnings.simplefilter("ignore", ConvergenceWarning)  # fixed iteration counts (tol=0)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    monitor = PeakRSS()
    baseline = monitor.rss()
    mb = 2**20
    print(f"d={args.features} K={args.components} float32, compressors={args.compressors}, "
          f"threaded scheduler, {psutil.cpu_count()} cores, baseline RSS {baseline / mb:.0f} MiB")
    print(f"cold: store evicted from the page cache first (a fit of one pass); warm: median "
          f"of {args.iters} reads, and of the {args.iters} EM passes of one fit as it reports "
          "them (cache=False: every pass streams the store; the first also makes the "
          "fingerprint); 'fit / iters': that fit's whole time over its passes")
    print("| rows | store GB | chunk MB | bare read s cold / warm | diag pass s cold / warm "
          "(x read) | full pass s cold / warm (x read) | fit / iters s diag / full "
          "| full GFLOP/s warm | peak RSS MiB read / diag / full | chunk files s warm | load avg |",
          flush=True)
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    rows = []
    for n in args.rows:
        r = bench_size(args, n, monitor)
        rows.append(r)
        cells = [f"{r['rows']:,}", f"{r['GB']:.2f}", f"{r['chunk_MB']:.1f}",
                 f"{r['read_cold_s']:.2f} / {r['read_s']:.2f}"]
        for cov in ("diag", "full"):
            cold, warm = r[f"{cov}_cold_s"], r[f"{cov}_pass_s"]
            cells.append(f"{cold:.2f} / {warm:.2f} ({cold / r['read_cold_s']:.2f}x / "
                         f"{warm / r['read_s']:.2f}x)")
        cells.append(f"{r['diag_fit_s']:.2f} / {r['full_fit_s']:.2f}")
        cells.append(f"{r['full_gflops']:.1f}")
        cells.append(" / ".join(f"{r[key] / mb:.0f}" for key in
                                ("read_peak", "diag_peak", "full_peak")))
        cells.append(f"{r['files_s']:.2f}")
        cells.append(f"{os.getloadavg()[1]:.1f}")
        print("| " + " | ".join(cells) + " |", flush=True)
    monitor.stop()
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        ratios = ", ".join(f"{name} x{b[key] / a[key]:.2f}" for name, key in (
            ("read cold", "read_cold_s"), ("read warm", "read_s"),
            ("diag pass cold", "diag_cold_s"), ("diag pass warm", "diag_pass_s"),
            ("full pass cold", "full_cold_s"), ("full pass warm", "full_pass_s")))
        print(f"scaling {a['rows']:,} -> {b['rows']:,} rows (x{b['rows'] / a['rows']:.1f}): "
              f"{ratios}")
    print("generation s (peak RSS MiB): " + ", ".join(
        f"{r['rows']:,} rows {r['gen_s']:.1f} ({r['gen_peak'] / mb:.0f})" for r in rows))


if __name__ == "__main__":
    main()
