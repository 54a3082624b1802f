"""Five simulated nights of a growing store: ``dgmm update`` against a full refit.

Night 0 generates a store (``dgmm generate``) and fits it (``dgmm fit``).
Every night after that the day's rows are appended
(:func:`dgmm.datasets.append_mixture_rows`; from ``--shift-day`` on they come
from the mixture moved by ``--shift`` along every feature), ``dgmm report``
scores them against the current model, ``dgmm update`` folds them in, and
every row so far is refitted for comparison. The commands run as a
scheduler runs them (console script, one process each), so their times
include the interpreter's start-up, measured separately (``dgmm --version``);
the update (``partial_fit``, as the command runs it) and the full refit
(``GaussianMixture(K, random_state=0).fit``, as ``dgmm fit`` runs it) are
also timed in this process, without start-up. The models are then scored (not
timed) on every row so far and on the day's rows. Prints a markdown table.

Usage::

    python benchmarks/bench_nightly.py [--initial 200000] [--daily 100000] [--days 5]
        [--features 8] [--components 5] [--batch-size 10000] [--forget 0.02]
        [--shift-day 4] [--shift 0.5] [--dir /tmp/dgmm_bench_nightly]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dgmm
from dgmm import GaussianMixture
from dgmm.datasets import append_mixture_rows
from dgmm.io import open_array

DGMM = [shutil.which("dgmm")] if shutil.which("dgmm") else [sys.executable, "-m", "dgmm.cli"]


def dgmm_cli(*args, ok=(0,)) -> tuple[float, int]:
    """Run a dgmm command; its wall time and exit code."""
    start = time.perf_counter()
    proc = subprocess.run([*DGMM, *map(str, args)], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in ok:
        raise SystemExit(f"dgmm {args} exited {proc.returncode}: {proc.stderr}")
    return elapsed, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--initial", type=int, default=200_000)
    parser.add_argument("--daily", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--components", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--forget", type=float, default=0.02)
    parser.add_argument("--shift-day", type=int, default=4)
    parser.add_argument("--shift", type=float, default=0.5)
    parser.add_argument("--fail-above", type=float, default=0.05)
    parser.add_argument("--dir", default="/tmp/dgmm_bench_nightly")
    args = parser.parse_args()

    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    (root / "models").mkdir(parents=True)
    store = root / "data.zarr"
    k = args.components
    startup = min(dgmm_cli("--version")[0] for _ in range(3))
    dgmm_cli("generate", store, "--n-samples", args.initial, "--n-features", args.features,
             "--n-components", k, "--chunk-rows", args.daily // 2, "-q")
    current = root / "models" / "day0.npz"
    fit_s, _ = dgmm_cli("fit", store, "--array", "X", "--n-components", k, "--out", current,
                        "-q")
    print(f"store {store}: {args.initial} + {args.days} x {args.daily} rows, d={args.features}, "
          f"K={k}; --batch-size {args.batch_size} --forget {args.forget}; rows from night "
          f"{args.shift_day} shifted by {args.shift}; night 0 fit {fit_s:.1f}s; "
          f"interpreter start-up {startup:.1f}s (in every time below)\n")
    print("| night | rows | drift (nats/row) | report exit | report s (CLI) | update s (CLI) "
          "| update s (in process) | full refit s (in process) "
          "| loglik all rows: update / refit | loglik day's rows: update / refit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    n = args.initial
    for day in range(1, args.days + 1):
        shift = args.shift if day >= args.shift_day else 0.0
        n_new = append_mixture_rows(store, args.daily, shift=shift)
        report = root / f"report{day}.json"
        report_s, code = dgmm_cli("report", current, store, "--array", "X", "--json", report,
                                  "--fail-above", args.fail_above, "-q", ok=(0, 3))
        drift = json.loads(report.read_text())["drift"]
        updated = root / "models" / f"day{day}.npz"
        update_s, _ = dgmm_cli("update", current, store, "--array", "X", "--out", updated,
                               "--batch-size", args.batch_size, "--forget", args.forget, "-q")
        again = dgmm.load(current).set_params(batch_size=args.batch_size,
                                              min_step_size=args.forget)
        start = time.perf_counter()
        again.partial_fit(open_array(store, "X")[n:n_new])
        update_in = time.perf_counter() - start
        start = time.perf_counter()
        refit = GaussianMixture(k, random_state=0).fit(open_array(store, "X"))
        refit_s = time.perf_counter() - start
        model = dgmm.load(updated)
        all_u, all_r = (m.score(open_array(store, "X")) for m in (model, refit))
        day_u, day_r = (m.score(open_array(store, "X")[n:n_new]) for m in (model, refit))
        print(f"| {day}{' (shifted)' if shift else ''} | {n_new} | {drift:+.4f} | {code} "
              f"| {report_s:.1f} | {update_s:.1f} | {update_in:.2f} | {refit_s:.2f} "
              f"| {all_u:.4f} / {all_r:.4f} | {day_u:.4f} / {day_r:.4f} |", flush=True)
        current, n = updated, n_new
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
