"""Batch jobs under faults, through the real console script, real processes and signals.

Starting a dgmm process costs seconds on a loaded machine, so the cases that
need no interaction are launched together by one fixture (:func:`launched`)
and each test then checks its own; a process meant to die at a chosen moment
runs the console script's ``main`` behind a small wrapper (``FAULTS``) that
kills it with SIGKILL (or slows its writes) at that moment. Cases about a
message alone (a full disk, a damaged chunk) run ``main`` in this process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import dgmm
from dgmm import _lock, select_n_components
from dgmm._passes import DataChangedError
from dgmm.cli import main
from dgmm.datasets import make_mixture_zarr

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
DGMM = [shutil.which("dgmm")] if shutil.which("dgmm") else [sys.executable, "-m", "dgmm.cli"]
# Every pass streams the store (no cache) in blocks of one stored chunk (2000 rows).
STREAM = {"DASK_DGMM__CACHE_FRACTION": "0", "DASK_DGMM__READ_CHUNK_BYTES": "1",
          "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

FAULTS = '''
import os, shutil, signal, sys, time
from dgmm import io
fault = os.environ["DGMM_TEST_FAULT"]
real_replace, real_rmtree, real_write = os.replace, shutil.rmtree, io._write_block

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def replace(src, dst):
    if fault == "before-swap" and ".old-" in os.path.basename(os.fspath(dst)):
        die()
    if fault == "between-renames" and ".tmp-" in os.path.basename(os.fspath(src)):
        die()
    return real_replace(src, dst)

def rmtree(path, *args, **kwargs):
    if fault == "after-swap" and ".old-" in os.path.basename(os.fspath(path)):
        die()
    return real_rmtree(path, *args, **kwargs)

def write_block(block, row_offset, *args):
    if fault == "while-writing" and row_offset > 0:
        die()
    if fault == "slow":
        open(os.environ["DGMM_TEST_STARTED"], "a").close()
        time.sleep(0.5)
    return real_write(block, row_offset, *args)

os.replace, shutil.rmtree, io._write_block = replace, rmtree, write_block
from dgmm.cli import main
main(sys.argv[1:])
'''
WINDOWS = ("while-writing", "before-swap", "between-renames", "after-swap")


def start(*args, fault: str | None = None, env: dict | None = None, **popen):
    """A dgmm process: the console script, or its ``main`` behind the FAULTS wrapper."""
    command = DGMM if fault is None else [sys.executable, "-c", FAULTS]
    environ = dict(os.environ, **STREAM, **(env or {}), DGMM_TEST_FAULT=fault or "")
    return subprocess.Popen([*command, *map(str, args)], env=environ, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)


def finish(proc, timeout: float = 180) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def invoke(*args):
    """dgmm in this process (a later run, without another interpreter start)."""
    with dask.config.set({"dgmm.cache-fraction": 0, "dgmm.read-chunk-bytes": 1}):
        return CliRunner().invoke(main, [str(a) for a in args])


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


def own_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A checksummed store of 20000 x 3 rows in 10 chunks, and a model fitted to it."""
    root = tmp_path_factory.mktemp("faults")
    store = root / "data.zarr"
    make_mixture_zarr(store, 20_000, 3, 3, chunk_rows=2000, seed=4)
    model = dgmm.GaussianMixture(3, max_iter=5, random_state=0).fit(f"{store}/X")
    model_path = root / "model.npz"
    model.save(model_path)
    return store, model_path, model


@pytest.fixture(scope="module")
def launched(data, tmp_path_factory):
    """Every case that needs no interaction, set up here and started at once."""
    store, model_path, model = data
    root = tmp_path_factory.mktemp("launched")
    procs = {}
    for window in WINDOWS:  # an old output, then a replace killed in that window
        out = root / window / "p.zarr"
        out.parent.mkdir()
        dgmm.io.write_predictions(model, f"{store}/X", out)
        procs[window] = (out, start("predict", model_path, store, "--array", "X", "--out", out,
                                    "--proba", "--overwrite", fault=window))

    # The README's cron recipe on day 2: same path, same first rows, other later rows.
    day = root / "stale"
    day.mkdir()
    today = day / "today.zarr"
    shutil.copytree(store, today)
    fit = ("fit", today, "--array", "X", "--n-components", 3, "--seed", 1, "--max-iter", 5,
           "--out", day / "model.npz", "--overwrite", "--checkpoint", day / "ckpt", "--resume",
           "-q")
    assert invoke(*fit).exit_code == 0
    X = zarr.open_array(str(today / "X"), mode="r+")
    X[6000:8000] = X[6000:8000][::-1] + 0.5
    procs["stale"] = (day, start(*fit))

    damaged = root / "damaged"
    damaged.mkdir()
    copy = damaged / "deleted.zarr"
    shutil.copytree(store, copy)
    (copy / "X" / "c" / "3" / "0").unlink()
    procs["deleted"] = (copy, start("fit", copy, "--array", "X", "--n-components", 3,
                                    "--out", damaged / "deleted.npz"))
    yield procs
    for _, proc in procs.values():
        if proc.poll() is None:
            proc.kill()


def test_resume_on_data_changed_after_the_first_rows_is_refused(launched):
    day, proc = launched["stale"]
    before = (day / "model.npz").read_bytes()
    code, err = finish(proc)
    assert code == 1
    line = error_line(err)
    assert line.startswith("dgmm fit: error: Cannot resume from checkpoint")
    assert "the data changed since it was written (rows 6000-7999 differ" in line
    assert (day / "model.npz").read_bytes() == before  # the day-1 model is not passed off


def test_a_store_changed_during_a_fit_stops_it_naming_the_rows(data, tmp_path):
    store = tmp_path / "moving.zarr"
    shutil.copytree(data[0], store)
    proc = start("fit", store, "--array", "X", "--n-components", 3, "--max-iter", 1000,
                 "--tol", 0, "--out", tmp_path / "m.npz")
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("iteration    2"):
            break
    assert proc.poll() is None, "".join(seen)
    X = zarr.open_array(str(store / "X"), mode="r+")
    X[4000:6000] = X[4000:6000] * 1.5  # another process rewrites some chunks
    code, err = finish(proc)
    assert code == 1
    assert "rows 4000-5999 differ from their first read in this fit" in err.splitlines()[-1]
    assert "Traceback" not in err
    assert not (tmp_path / "m.npz").exists()
    assert own_names(tmp_path) == ["moving.zarr"]


def test_a_second_run_is_refused_while_the_first_finishes(data, tmp_path):
    store = data[0]
    args = ("fit", store, "--array", "X", "--n-components", 3, "--max-iter", 40, "--tol", 0,
            "--seed", 2, "--out", tmp_path / "m.npz", "--checkpoint", tmp_path / "ckpt")
    first = start(*args)
    for line in first.stderr:
        if line.startswith("iteration    1"):
            break
    assert first.poll() is None
    second = invoke(*args)
    assert second.exit_code == 2
    line = error_line(second.stderr)
    assert "is in use by another dgmm run (process" in line and f"{first.pid}" in line
    third = invoke(*args[:-2], "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "n.npz")
    assert third.exit_code == 2 and "ckpt is in use by another dgmm run" in third.stderr
    code, err = finish(first)
    assert code == 0, err
    model = dgmm.load(tmp_path / "m.npz")
    assert model.n_iter_ == 40
    assert json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())["iteration"] == 40
    assert own_names(tmp_path) == ["ckpt", "m.npz"]  # no lock left


def test_a_stale_lock_of_a_dead_process_is_broken(data, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {**_lock.owner(), "pid": dead.pid, "command": "dgmm fit (killed)"}
    _lock.lock_path(tmp_path / "m.npz").write_text(json.dumps(record))
    result = invoke("fit", data[0], "--array", "X", "--n-components", 2, "--max-iter", 2,
                    "--out", tmp_path / "m.npz")
    assert result.exit_code == 0, result.stderr
    assert f"warning: broke the stale lock {tmp_path}/.m.npz.dgmm-lock of process " \
           f"{dead.pid}" in result.stderr
    assert own_names(tmp_path) == ["m.npz"]


@pytest.mark.parametrize("window", WINDOWS)
def test_a_kill_in_any_window_of_a_replace_loses_neither_version(launched, data, window):
    out, proc = launched[window]
    code, _ = finish(proc)
    assert code == -signal.SIGKILL
    names = own_names(out.parent)
    old = {"labels"}, {"labels", "proba"}
    if window == "between-renames":  # the old version aside, the new one complete
        assert "p.zarr" not in names
        assert any(n.startswith(".p.zarr.old-") for n in names)
        assert any(n.startswith(".p.zarr.tmp-") for n in names)
    else:
        outputs = set(zarr.open_group(str(out), mode="r").attrs["outputs"])
        assert outputs == old[window == "after-swap"]
    assert any(n.startswith(".p.zarr.dgmm-replace-") for n in names)
    # The next command touching the path settles what the killed run left, in one line.
    store, model_path, _ = data
    again = invoke("predict", model_path, store, "--array", "X", "--out", out,
                   "--log-density", "--overwrite")
    assert again.exit_code == 0, again.stderr
    notes = [line for line in again.stderr.splitlines() if "predict: warning: " in line]
    assert len(notes) == 2, again.stderr  # the leftovers, and the killed run's lock
    assert "a run was killed" in notes[0] or "leftovers of a run killed" in notes[0]
    assert "broke the stale lock" in notes[1]
    if window == "between-renames":
        assert "restored" in notes[0] and "the new version is now in place" in notes[0]
    assert own_names(out.parent) == ["p.zarr"]
    assert set(zarr.open_group(str(out), mode="r").attrs["outputs"]) == {"labels", "log_density"}


def test_a_full_disk_is_one_line_and_replaces_nothing(data, tmp_path, monkeypatch):
    store, model_path, model = data
    out = tmp_path / "p.zarr"
    dgmm.io.write_predictions(model, f"{store}/X", out)
    real = dgmm.io._write_block

    def full(block, row_offset, *args):  # the disk fills up part-way through the store
        if row_offset > 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(block, row_offset, *args)

    monkeypatch.setattr(dgmm.io, "_write_block", full)
    result = invoke("predict", model_path, store, "--array", "X", "--out", out, "--proba",
                    "--overwrite")
    assert result.exit_code == 1
    assert error_line(result.stderr) == (
        f"dgmm predict: error: {out}: no space left on the device while writing it; nothing "
        "was replaced (the existing one is unchanged) and no temporary was left")
    assert own_names(tmp_path) == ["p.zarr"]
    assert set(zarr.open_group(str(out), mode="r").attrs["outputs"]) == {"labels"}


def test_sigterm_cleans_up_and_exits_143(data, tmp_path):
    store, model_path, _ = data
    started = tmp_path / "started"
    (tmp_path / "job").mkdir()
    out = tmp_path / "job" / "p.zarr"
    proc = start("predict", model_path, store, "--array", "X", "--out", out, "--proba",
                 fault="slow", env={"DGMM_TEST_STARTED": str(started)})
    deadline = time.monotonic() + 120
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 143, err
    assert err.strip().splitlines()[-1].startswith("dgmm predict: error: terminated (SIGTERM)")
    assert "Traceback" not in err
    assert own_names(tmp_path / "job") == []  # no output, temporary, journal or lock


def test_a_deleted_chunk_is_reported_by_name(launched):
    copy, proc = launched["deleted"]
    code, err = finish(proc)
    assert code == 1
    line = error_line(err)
    assert f"{copy.name}/X: chunk c/3/0 (rows 6000-7999) is missing from the store" in line
    assert not (copy.parent / "deleted.npz").exists()


def test_a_corrupted_chunk_is_reported_by_name(data, tmp_path):
    copy = tmp_path / "flipped.zarr"
    shutil.copytree(data[0], copy)
    chunk = copy / "X" / "c" / "4" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    result = invoke("fit", copy, "--array", "X", "--n-components", 3, "--out",
                    tmp_path / "m.npz")
    assert result.exit_code == 1
    line = error_line(result.stderr)
    assert f"cannot read chunk c/4/0 (rows 8000-9999) of Zarr array {copy}/X: " in line
    assert "checksum" in line
    assert not (tmp_path / "m.npz").exists()


def test_a_chunk_that_decodes_to_absurd_values_is_reported(data, tmp_path):
    # No checksum and no compression: a damaged chunk still decodes, to absurd values.
    plain = zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=(20_000, 3),
                              chunks=(2000, 3), dtype="f4", compressors=None)
    plain[:] = zarr.open_array(str(data[0] / "X"), mode="r")[:]
    plain[10_500] = [3e30, 0, 0]
    result = invoke("fit", tmp_path / "plain.zarr", "--n-components", 3, "--out",
                    tmp_path / "m.npz")
    assert result.exit_code == 1
    line = error_line(result.stderr)
    assert "rows 10000-11999 of the input look damaged: they hold 3e+30" in line
    assert not (tmp_path / "m.npz").exists()


def test_a_sparse_store_can_be_allowed(data, tmp_path):
    copy = tmp_path / "sparse.zarr"
    shutil.copytree(data[0], copy)
    (copy / "X" / "c" / "9" / "0").unlink()
    args = ("fit", copy, "--array", "X", "--n-components", 2, "--max-iter", 2, "-q")
    refused = invoke(*args, "--out", tmp_path / "m.npz")
    assert refused.exit_code == 1 and "chunk c/9/0 (rows 18000-19999)" in refused.stderr
    assert invoke(*args, "--out", tmp_path / "m.npz", "--allow-missing-chunks").exit_code == 0


def test_the_fingerprint_sees_every_row_at_no_extra_pass(tmp_path):
    X = np.random.default_rng(0).normal(size=(3000, 2))
    kw = dict(max_iter=3, tol=0, random_state=0)
    plain = select_n_components(da.from_array(X, chunks=(500, 2)), [2], **kw).n_passes
    ckpt = tmp_path / "ckpt"
    kept = select_n_components(da.from_array(X, chunks=(500, 2)), [2], checkpoint=ckpt, **kw)
    assert kept.n_passes == plain  # the checkpoint's fingerprint came with the passes
    content = json.loads((ckpt / "checkpoint.json").read_text())["content"]
    assert len(content["block_hashes"]) == 6
    X[-1, 0] = np.nextafter(X[-1, 0], np.inf)  # one bit of the last row
    with pytest.raises(ValueError, match=r"the data changed since it was written \(rows "
                                         r"2500-2999 differ"):
        select_n_components(da.from_array(X, chunks=(500, 2)), [2], checkpoint=ckpt,
                            resume=True, **kw)


def test_rows_changed_between_passes_stop_the_fit():
    X = zarr.create_array(store={}, shape=(2000, 2), chunks=(500, 2), dtype="f8")
    X[:] = np.random.default_rng(1).normal(size=(2000, 2))

    def rewrite(info):  # another writer, between two passes
        if info["iteration"] == 2:
            X[1200] = X[1200] + 1.0

    model = dgmm.GaussianMixture(2, max_iter=10, tol=0, cache=False)
    with dask.config.set({"dgmm.read-chunk-bytes": 1}), pytest.raises(
            DataChangedError, match="rows 1000-1499 differ from their first read"):
        model.fit(X, callback=rewrite)


def test_a_lost_cluster_is_described_with_the_way_to_resume():
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    from dgmm.cli import _describe

    try:
        try:
            raise FutureCancelledError("pass-7", reason="scheduler-connection-lost")
        except FutureCancelledError as exc:
            raise RuntimeError("compute failed") from exc
    except RuntimeError as exc:
        lost = _describe(exc)
    assert lost.startswith("lost the Dask cluster: the connection to the Dask scheduler was "
                           "lost; nothing was saved from this run")
    assert "--checkpoint DIR --resume" in lost and "Error" not in lost
    worker = type("Worker", (), {"address": "tcp://10.0.0.7:4000"})()
    assert "workers died" in _describe(KilledWorker("pass-7", worker, 3))
    assert _describe(ValueError("plain")) == "plain"
