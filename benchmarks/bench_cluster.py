"""dgmm on Dask clusters: seconds per EM pass, bytes per pass, per-task overhead, vs Spark.

Four measurements in one run, printed as Markdown tables:

1. Seconds per EM pass over an out-of-core float32 Zarr store (written chunk
   by chunk; 2e7 x 16, K=8 full by default, streamed from disk on every pass,
   never persisted) with the threaded scheduler, and on a ``LocalCluster`` of
   one and of two single-threaded worker processes (started with
   :func:`dgmm.cluster.connect`). Also the bytes of each pass's result (all
   that travels to the client) and of its task graph (what the client sends).
2. The per-pass overhead with 10,000 tiny chunks: scheduler time per task.
3. From 1 and 2, and the packet size K(d^2+d+1) float64 per chunk, an estimate
   of the time per pass for 1 TB on 100 workers.
4. Spark MLlib ``GaussianMixture`` (``local[2]``, cached DataFrame) against
   dgmm on the threaded scheduler (NumPy input), on a plain
   ``LocalCluster(n_workers=1, threads_per_worker=2)`` and on a plain
   ``LocalCluster(n_workers=2, threads_per_worker=1)`` (both as a user
   creates them, with dask's defaults; Zarr input, ``cache=True``), on the
   same 1e6 x 16 data, K=8, 20 iterations: seconds per iteration (Spark's
   start-up and data loading excluded; Spark's per-fit set-up excluded by
   differencing a 0-iteration fit) and the final mean log-likelihood of each
   model, all scored by the same code. Needs ``pip install "dgmm[bench]"``;
   skipped when pyspark is absent.

Usage::

    python -m benchmarks.bench_cluster [--rows 20000000] [--chunk-rows 250000]
        [--passes 3] [--dir /tmp/dgmm-bench-cluster] [--skip-spark] [--keep]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import cloudpickle
import dask
import dask.array as da
import numpy as np
from sklearn.exceptions import ConvergenceWarning

from benchmarks.bench_minibatch import mean_loglik, write_store
from dgmm import GaussianMixture, _passes
from dgmm import _kernels as K
from dgmm.cluster import connect

LOOPBACK_DASHBOARD = "127.0.0.1:0"


def local_cluster(n_workers: int):
    """A client of a LocalCluster of single-threaded worker processes (closed with it)."""
    return connect({"backend": "local", "cluster": {
        "n-workers": n_workers, "threads-per-worker": 1, "processes": True,
        "dashboard-address": LOOPBACK_DASHBOARD}})


def start_params(X: da.Array, k: int) -> K.Params:
    """K rows of the first chunk as means, identity covariances: a typical early E-step."""
    first = np.asarray(X[: max(k, X.chunks[0][0])].compute(), dtype=np.float64)
    d = first.shape[1]
    means = first[np.linspace(0, len(first) - 1, k).astype(int)]
    return K.Params("full", np.full(k, 1.0 / k), means, np.stack([np.eye(d)] * k))


def graph_bytes(blocks: _passes.Blocks, params: K.Params) -> int:
    """Size of one pass's (culled) task graph as the client ships it."""
    (graph,) = dask.optimize(_passes.pass_graph(blocks, _passes._estep_block, ([params],)))
    return len(cloudpickle.dumps(dict(graph.__dask_graph__())))


def time_passes(blocks: _passes.Blocks, params: K.Params, n: int, scheduler=None):
    """Seconds of ``n`` passes after a warm-up pass, and the last pass's result."""
    times = []
    with _passes.blas_guard(scheduler):
        for i in range(n + 1):  # the first pass warms up: worker imports, page cache
            # new means every pass, as in EM: a pass with the same parameters has the
            # same keys, and a scheduler may still hold the previous result
            moved = replace(params, means=params.means + i * 1e-9)
            t0 = time.perf_counter()
            result = _passes.estep_pass(blocks, [moved], scheduler)
            times.append(time.perf_counter() - t0)
    return times[1:], result


# --------------------------------------------------------------------------
# 1. seconds per pass on an out-of-core store
# --------------------------------------------------------------------------


def bench_passes(store: str, n_passes: int, k: int) -> dict:
    X = da.from_zarr(store)
    blocks = _passes.as_blocks(X)
    params = start_params(X, k)
    n, d = X.shape
    print(f"\n### Seconds per EM pass: {n:.0e} x {d} float32 Zarr store "
          f"({X.nbytes / 2**30:.2f} GiB, {len(blocks.keys)} chunks of {X.chunks[0][0]} rows), "
          f"K={k} full, streamed from disk every pass\n")
    print("| scheduler | cores | s/pass (mean) | s/pass (min) | MB/s read | "
          "core-s per chunk | bytes to client/pass | graph bytes/pass |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    g_bytes = graph_bytes(blocks, params)
    out = {}
    configs = [("threaded", os.cpu_count(), "threads"),
               ("LocalCluster 1 worker x 1 thread", 1, 1),
               ("LocalCluster 2 workers x 1 thread", 2, 2)]
    for label, cores, how in configs:
        ctx = nullcontext() if how == "threads" else local_cluster(how)
        with ctx:
            times, result = time_passes(blocks, params, n_passes,
                                        "threads" if how == "threads" else None)
        mean = float(np.mean(times))
        per_chunk = mean * cores / len(blocks.keys)
        out[label] = {"mean": mean, "per_chunk": per_chunk}
        print(f"| {label} | {cores} | {mean:.2f} | {min(times):.2f} | "
              f"{X.nbytes / mean / 1e6:.0f} | {per_chunk:.3f} | "
              f"{len(pickle.dumps(result)):,} | {g_bytes:,} |", flush=True)
    out["packet_bytes"] = len(pickle.dumps(result))
    out["chunk_rows"] = X.chunks[0][0]
    out["d"], out["k"] = d, k
    return out


# --------------------------------------------------------------------------
# 2. per-pass overhead with 10,000 tiny chunks
# --------------------------------------------------------------------------


def bench_overhead(n_chunks: int) -> dict:
    X = np.random.default_rng(0).normal(size=(2 * n_chunks, 16))
    blocks = _passes.as_blocks(da.from_array(X, chunks=(2, 16)))
    params = K.Params("full", np.full(8, 1 / 8), X[:8], np.stack([np.eye(16)] * 8))
    t0 = time.perf_counter()
    graph = _passes.pass_graph(blocks, _passes._estep_block, ([params],))
    build = time.perf_counter() - t0
    n_tasks = len(dask.optimize(graph)[0].__dask_graph__())
    t0 = time.perf_counter()
    for i in range(n_chunks):  # the kernels alone, one after another
        K.estep_stats(X[2 * i : 2 * i + 2], params)
    kernels = time.perf_counter() - t0
    print(f"\n### Per-pass overhead: {n_chunks:,} chunks of 2 rows, {n_tasks:,} tasks per pass "
          f"(graph built in {build:.2f} s; the {n_chunks:,} kernels alone take "
          f"{kernels:.2f} core-s)\n")
    print("| scheduler | cores | s/pass | overhead s/pass | overhead ms/task |")
    print("| --- | --- | --- | --- | --- |")
    out = {}
    for label, cores, how in [("threaded", os.cpu_count(), "threads"),
                              ("LocalCluster 2 workers x 1 thread", 2, 2)]:
        ctx = nullcontext() if how == "threads" else local_cluster(how)
        with ctx:
            (seconds,), _ = time_passes(blocks, params, 1, "threads" if how == "threads" else None)
        overhead = seconds - kernels / cores
        out[label] = overhead / n_tasks
        print(f"| {label} | {cores} | {seconds:.1f} | {overhead:.1f} | "
              f"{1e3 * overhead / n_tasks:.2f} |", flush=True)
    return out


# --------------------------------------------------------------------------
# 3. 1 TB on 100 workers, from the measurements
# --------------------------------------------------------------------------


def estimate_terabyte(passes: dict, overhead: dict, workers: int = 100,
                      bandwidth: float = 1e9) -> None:
    d, k, rows = passes["d"], passes["k"], passes["chunk_rows"]
    n_rows = 1e12 / (4 * d)  # float32
    n_chunks = n_rows / rows
    per_chunk = passes["LocalCluster 1 worker x 1 thread"]["per_chunk"]
    packet = k * (d * d + d + 1) * 8
    tasks = n_chunks * (1 + 1 / 7)
    sched = overhead["LocalCluster 2 workers x 1 thread"]
    print(f"\n### Estimate: one pass over 1 TB (float32, d={d}: {n_rows:.3g} rows, "
          f"{n_chunks:,.0f} chunks of {rows:,} rows), K={k} full, {workers} workers\n")
    print("| cores per worker | compute s | packets MB (all) | packets s per worker "
          "| scheduler s | ~ s/pass |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cores in (1, 8):
        compute = n_chunks * per_chunk / (workers * cores)
        comm = n_chunks * packet / workers / bandwidth  # each packet crosses the network once
        total = max(compute, sched * tasks) + comm
        print(f"| {cores} | {compute:.0f} | {n_chunks * packet / 1e6:,.0f} | {comm:.3f} | "
              f"{sched * tasks:.0f} | {total:.0f} |")
    print(f"\ncompute: {per_chunk:.3f} core-s per chunk (measured, 1 worker x 1 thread, "
          f"read + decompress + E-step); packet: K(d^2+d+1) = {packet // 8:,} float64 = "
          f"{packet:,} B per chunk, at {bandwidth / 1e9:.0f} GB/s per worker; scheduler: "
          f"{1e3 * sched:.2f} ms per task (measured above, on this shared machine), "
          f"{tasks:,.0f} tasks, overlapping the compute.")


# --------------------------------------------------------------------------
# 4. Spark MLlib GaussianMixture vs dgmm
# --------------------------------------------------------------------------


def spark_session():
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").appName("dgmm-bench")
             .config("spark.driver.memory", "4g")
             .config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_fit(X: np.ndarray, k: int, n_iter: int):
    """Seconds per iteration of Spark MLlib's GaussianMixture, and its final parameters."""
    import pandas as pd
    from pyspark.ml.clustering import GaussianMixture as SparkGM
    from pyspark.ml.feature import VectorAssembler

    spark = spark_session()
    try:
        cols = [f"x{i}" for i in range(X.shape[1])]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pandas version notice
            frame = spark.createDataFrame(pd.DataFrame(X, columns=cols))
        df = (VectorAssembler(inputCols=cols, outputCol="features").transform(frame)
              .select("features").repartition(2).cache())
        df.count()  # load and cache: excluded from the timing

        def fit(max_iter):
            t0 = time.perf_counter()
            model = SparkGM(k=k, maxIter=max_iter, tol=0.0, seed=0).fit(df)
            return time.perf_counter() - t0, model

        fit(2)  # JIT warm-up
        t_zero, _ = fit(0)  # set-up of a fit: sampling the initial model, job launches
        t_full, model = fit(n_iter)
        assert model.summary.numIter == n_iter, model.summary.numIter
        gaussians = model.gaussiansDF.collect()
        means = np.array([g["mean"].toArray() for g in gaussians])
        covs = np.array([g["cov"].toArray() for g in gaussians])
        params = K.Params("full", np.array(model.weights), means,
                          K.precision_cholesky(covs, "full"))
        return (t_full - t_zero) / n_iter, params, model.summary.logLikelihood / len(X)
    finally:
        spark.stop()


def user_cluster(n_workers: int, threads_per_worker: int):
    """A plain LocalCluster and its client, as a user creates them (dask's defaults)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                           dashboard_address=LOOPBACK_DASHBOARD)
    return cluster, Client(cluster)


def dgmm_fit(X, k: int, n_iter: int, cluster: tuple[int, int] | None = None):
    """Median seconds per iteration of dgmm, its final parameters and lower bound.

    ``cluster``: (workers, threads per worker) of a plain LocalCluster that
    fits ``X`` (a Zarr path) with ``cache=True``; None: the threaded
    scheduler on ``X`` as given (NumPy).
    """
    seconds = []
    cluster_client = None if cluster is None else user_cluster(*cluster)
    try:
        cache = {} if cluster is None else {"cache": True}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            GaussianMixture(k, max_iter=2, tol=0.0, random_state=0, **cache).fit(X)  # warm-up
            gm = GaussianMixture(k, max_iter=n_iter, tol=0.0, random_state=0, **cache)
            gm.fit(X, callback=lambda info: seconds.append(info["seconds"]))
    finally:
        if cluster_client is not None:
            cluster_client[1].close()
            cluster_client[0].close()
    return float(np.median(seconds)), gm._params(), gm.lower_bound_


def bench_spark(directory: Path, n: int, k: int, n_iter: int) -> None:
    if importlib.util.find_spec("pyspark") is None:
        print('\n(Spark comparison skipped: pyspark is not installed; pip install "dgmm[bench]")')
        return
    store = str(directory / f"spark-{n}.zarr")
    write_store(store, n, 16, k, chunk_rows=n // 16, seed=1)
    X = da.from_zarr(store)
    X64 = np.asarray(X, dtype=np.float64)  # what Spark gets, and dgmm on threads
    runs = [("dgmm, threaded scheduler, NumPy input", X64, None),
            ("dgmm, LocalCluster(n_workers=1, threads_per_worker=2), Zarr, cache=True",
             store, (1, 2)),
            ("dgmm, LocalCluster(n_workers=2, threads_per_worker=1), Zarr, cache=True",
             store, (2, 1))]
    rows = [(label, *dgmm_fit(data, k, n_iter, cluster)) for label, data, cluster in runs]
    spark_s, spark_params, spark_own = spark_fit(X64, k, n_iter)
    rows.append(("Spark MLlib, local[2], cached DataFrame", spark_s, spark_params, spark_own))
    final = mean_loglik(X, [row[2] for row in rows])
    print(f"\n### dgmm vs Spark MLlib GaussianMixture: {n:.0e} x 16, K={k} full, "
          f"{n_iter} iterations, the same 2 cores\n")
    print("| | s/iteration (median) | Spark s/it over this | final mean log-likelihood, "
          "rescored | own reported |")
    print("| --- | --- | --- | --- | --- |")
    for (label, seconds, _, own), score in zip(rows, final, strict=True):
        print(f"| {label} | {seconds:.3f} | {spark_s / seconds:.1f}x | {score:.5f} | "
              f"{own:.5f} |")
    print("\nFinal parameters of every run rescored by the same code on the same data "
          "(dgmm's own figure is its last lower bound; Spark's belongs to the parameters "
          "one M-step before its final ones and includes its 2.2e-16 density floor). Each "
          "library starts from its own default initialisation (dgmm k-means||, Spark "
          "random).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=2e7)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--chunk-rows", type=int, default=250_000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--overhead-chunks", type=int, default=10_000)
    ap.add_argument("--spark-rows", type=float, default=1e6)
    ap.add_argument("--spark-iters", type=int, default=20)
    ap.add_argument("--dir", default="/tmp/dgmm-bench-cluster")
    ap.add_argument("--skip-passes", action="store_true")
    ap.add_argument("--skip-spark", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the stores for another run")
    args = ap.parse_args()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    try:
        if not args.skip_passes:
            store = str(directory / f"pass-{int(args.rows)}x{args.features}.zarr")
            if not Path(store).exists():
                t0 = time.perf_counter()
                write_store(store, int(args.rows), args.features, args.components,
                            args.chunk_rows)
                print(f"wrote {store} in {time.perf_counter() - t0:.0f} s")
            passes = bench_passes(store, args.passes, args.components)
            overhead = bench_overhead(args.overhead_chunks)
            estimate_terabyte(passes, overhead)
        if not args.skip_spark:
            bench_spark(directory, int(args.spark_rows), args.components, args.spark_iters)
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
