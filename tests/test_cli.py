"""The ``dgmm`` command line, end to end: in process, and through the console script
where the process itself is under test."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import dgmm
from dgmm import GaussianMixture
from dgmm.cli import main
from tests.helpers import tree_digest

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
# The installed console script; the module form where the package is not installed.
DGMM = [shutil.which("dgmm")] if shutil.which("dgmm") else [sys.executable, "-m", "dgmm.cli"]


def run(*args, cwd=None, check=True, process=False, timeout=120):
    """``dgmm ARGS``: its exit code, stdout and stderr.

    In this process through click's runner, with the warning filters of a fresh
    interpreter, unless ``process``: a real process (the installed console
    script) is for tests of the process itself (its start, signals, exit
    status to a shell). In process, a call saves the ~4 s a new interpreter
    spends importing scikit-learn, dask and numba.
    """
    argv = [str(a) for a in args]
    if process:
        proc = subprocess.run([*DGMM, *argv], capture_output=True, text=True, cwd=cwd,
                              timeout=timeout)
    else:
        with warnings.catch_warnings(), _working_directory(cwd):
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                             ResourceWarning):
                warnings.simplefilter("ignore", category)
            result = CliRunner().invoke(main, argv, prog_name="dgmm")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a bug in the test or the runner, not the CLI's exit
        proc = subprocess.CompletedProcess(argv, result.exit_code, result.stdout, result.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"dgmm {args} exited {proc.returncode}: {proc.stderr}")
    return proc


@contextlib.contextmanager
def _working_directory(path):
    if path is None:
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "data.zarr"
    run("generate", path, "--n-samples", 30_000, "--n-features", 3, "--n-components", 3,
        "--seed", 2, "--chunk-rows", 4_000)
    return path


def test_generate_fit_predict_score_info(store, tmp_path):
    model_path = tmp_path / "model.npz"
    fit = run("fit", store, "--array", "X", "--n-components", 3, "--covariance-type", "diag",
              "--seed", 1, "--out", model_path)
    assert "iteration    1" in fit.stderr and "saved" in fit.stderr
    model = dgmm.load(model_path)
    X = zarr.open_array(str(store / "X"), mode="r")[:]
    ref = GaussianMixture(3, covariance_type="diag", random_state=0 + 1).fit(
        dgmm.io.open_array(store, "X"))
    np.testing.assert_allclose(model.means_, ref.means_, rtol=1e-12)

    out = tmp_path / "pred.zarr"
    run("predict", model_path, store, "--array", "X", "--out", out, "--proba", "--log-density")
    written = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(written["labels"][:], model.predict(X))
    # The store is float32; the CLI writes float64 outputs, as the model gives for float64 rows.
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(written["proba"][:], model.predict_proba(X64), rtol=1e-12)
    np.testing.assert_allclose(written["log_density"][:], model.score_samples(X64), rtol=1e-12)

    scores = json.loads(run("score", model_path, store, "--array", "X", "--json").stdout)
    np.testing.assert_allclose(scores["mean_log_likelihood"], model.score(X), rtol=1e-12)
    np.testing.assert_allclose(scores["bic"], model.bic(X), rtol=1e-12)
    np.testing.assert_allclose(scores["aic"], model.aic(X), rtol=1e-12)

    info = run("info", model_path).stdout
    assert "covariance type   diag" in info and "components        3" in info


def test_select_saves_the_best(store, tmp_path):
    out = tmp_path / "best.npz"
    proc = run("select", store, "--array", "X", "--n-components", "1:5", "--out", out)
    assert "best by bic: 3 components" in proc.stderr
    assert dgmm.load(out).n_components == 3


def test_standardize_and_pca_are_fitted_saved_and_applied(store, tmp_path):
    from sklearn.pipeline import Pipeline

    def invoke(*args):  # in-process, to keep the test short
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    model_path = tmp_path / "pipe.npz"
    fit = run("fit", store, "--array", "X", "--n-components", 3, "--standardize", "--pca", 2,
              "--seed", 1, "--max-iter", 20, "--out", model_path)
    assert "fitted standardization and PCA to 2 components in one pass" in fit.stderr
    pipe = dgmm.load(model_path)
    assert isinstance(pipe, Pipeline) and [n for n, _ in pipe.steps] == [
        "standardscaler", "pca", "gaussianmixture"]
    X = zarr.open_array(str(store / "X"), mode="r")[:]  # float32: so are the transformed rows
    np.testing.assert_allclose(pipe[:-1].transform(X).var(axis=0, dtype=np.float64),
                               pipe[1].explained_variance_ * (1 - 1 / len(X)), rtol=1e-5)

    out = tmp_path / "pred.zarr"
    invoke("predict", model_path, store, "--array", "X", "--out", out, "--log-density")
    written = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(written["labels"][:], pipe.predict(X))
    np.testing.assert_allclose(written["log_density"][:], pipe.score_samples(X), rtol=1e-6)
    scores = json.loads(invoke("score", model_path, store, "--array", "X", "--json").stdout)
    np.testing.assert_allclose(scores["mean_log_likelihood"], pipe.score(X), rtol=1e-12)
    info = invoke("info", model_path).stdout
    assert "standardization of 3 features, then PCA to 2 of 3 features" in info
    assert "features          2" in info

    best = tmp_path / "best.npz"
    invoke("select", store, "--array", "X", "--n-components", "2,3", "--standardize",
           "--max-iter", 10, "--out", best)
    assert [n for n, _ in dgmm.load(best).steps] == ["standardscaler", "gaussianmixture"]


def test_select_searches_several_covariance_types(store, tmp_path):
    out = tmp_path / "best.npz"
    proc = run("select", store, "--array", "X", "--n-components", "2:3",
               "--covariance-type", "full,diag", "--out", out)
    rows = [line.split() for line in proc.stderr.splitlines() if line.split()[:1] in (["2"], ["3"])]
    assert [(r[0], r[1]) for r in rows] == [(str(k), t) for t in ("full", "diag") for k in (2, 3)]
    best = dgmm.load(out)
    assert f"best by bic: 3 components, {best.covariance_type} covariance" in proc.stderr
    assert best.n_components == 3 and best.covariance_type in ("full", "diag")
    assert "data passes: " in proc.stderr


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    store = tmp_path / "big.zarr"
    run("generate", store, "--n-samples", 300_000, "--n-features", 8, "--n-components", 6,
        "--chunk-rows", 25_000, "--seed", 5)
    args = ["fit", store, "--array", "X", "--n-components", 6, "--max-iter", 25, "--tol", 0,
            "--seed", 3, "--init", "random_from_data"]
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen([*DGMM, *map(str, args), "--out", tmp_path / "killed.npz",
                             "--checkpoint", ckpt], stderr=subprocess.DEVNULL)
    manifest = ckpt / "checkpoint.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if manifest.exists() and json.loads(manifest.read_text())["iteration"] >= 2:
            break
        assert proc.poll() is None, "the fit ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed.npz").exists()
    reached = json.loads(manifest.read_text())["iteration"]
    assert 2 <= reached < 25

    refused = run(*args, "--out", tmp_path / "x.npz", "--checkpoint", ckpt, check=False)
    assert refused.returncode == 2 and "already holds a checkpoint; pass --resume" in refused.stderr

    resumed = run(*args, "--out", tmp_path / "resumed.npz", "--checkpoint", ckpt, "--resume")
    assert f"iteration {reached + 1:>4}" in resumed.stderr
    assert "iteration    1 " not in resumed.stderr
    run(*args, "--out", tmp_path / "straight.npz")
    a, b = dgmm.load(tmp_path / "resumed.npz"), dgmm.load(tmp_path / "straight.npz")
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=1e-12)
    assert a.lower_bounds_ == b.lower_bounds_ and a.n_iter_ == b.n_iter_ == 25


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "missing.zarr", "--n-components", "2", "--out", "m.npz"], "not found"),
        (["fit", "STORE", "--n-components", "zero", "--out", "m.npz"], "--n-components"),
        (["fit", "STORE", "--n-components", "0", "--out", "m.npz"], "--n-components"),
        (["fit", "STORE", "--n-components", "2", "--covariance-type", "banana", "--out",
          "m.npz"], "--covariance-type"),
        (["fit", "STORE", "--n-components", "2", "--out", "/nonexistent/dir/m.npz"],
         "does not exist"),
        (["fit", "STORE", "--n-components", "2", "--out", "m.npz", "--resume"],
         "--resume needs --checkpoint"),
        (["select", "STORE", "--n-components", "5:x", "--out", "m.npz"], "--n-components"),
        (["select", "STORE", "--n-components", "2", "--covariance-type", "full,dense", "--out",
          "m.npz"], "--covariance-type takes one or more of full, tied, diag, spherical"),
        (["score", "missing.npz", "STORE"], "model file not found"),
        (["fit", "STORE", "--bogus"], "No such option"),
        (["fit", "STORE", "--n-components", "2", "--pca", "4", "--out", "m.npz"],
         "--pca 4 exceeds the 3 features"),
        (["select", "STORE", "--n-components", "2", "--pca", "0", "--out", "m.npz"], "--pca"),
    ],
)
def test_usage_errors_exit_2_with_one_line(store, args, message):
    args = [f"{store}/X" if a == "STORE" else a for a in args]
    result = CliRunner().invoke(main, ["fit", *args[1:]] if args[0] == "fit" else args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_usage_error_through_the_console_script(store):
    proc = run("fit", store, "--n-components", "2", "--covariance-type", "nope", "--out",
               "m.npz", check=False, process=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_other_failures_exit_1_with_one_line_and_traceback_when_verbose(tmp_path):
    path = tmp_path / "nan.zarr"
    arr = zarr.create_array(store=str(path), shape=(100, 2), chunks=(50, 2), dtype="f8")
    data = np.ones((100, 2))
    data[77, 1] = np.nan
    arr[:] = data
    proc = run("fit", path, "--n-components", "2", "--out", tmp_path / "m.npz", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("dgmm fit: error: ")
    assert "row 77" in proc.stderr and "Traceback" not in proc.stderr
    assert "ValueError" not in proc.stderr
    assert not (tmp_path / "m.npz").exists()
    verbose = run("fit", path, "--n-components", "2", "--out", tmp_path / "m.npz", "-v",
                  check=False)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_predict_refuses_to_overwrite(store, tmp_path):
    model_path = tmp_path / "m.npz"
    run("fit", store, "--array", "X", "--n-components", 3, "--out", model_path, "-q")
    out = tmp_path / "p.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    proc = run("predict", model_path, store, "--array", "X", "--out", out, check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (out / "keep.txt").read_text() == "precious"


def test_demo_runs_on_a_fresh_install_in_under_a_minute(tmp_path):
    start = time.monotonic()
    proc = run("demo", cwd=tmp_path, process=True, timeout=60)
    assert time.monotonic() - start < 60
    assert "largest distance between a fitted and a true mean" in proc.stdout
    assert Path(tmp_path / "dgmm-demo.png").exists() or "matplotlib" in proc.stderr
    if Path(tmp_path / "dgmm-demo.png").exists():
        assert proc.stdout.strip().splitlines()[-1] == "figure: dgmm-demo.png"


def test_fit_on_a_cluster_from_a_config(store, tmp_path):
    config = Path(__file__).resolve().parents[1] / "cluster_configs" / "local.yaml"
    out = tmp_path / "m.npz"
    proc = run("fit", store, "--array", "X", "--n-components", 3, "--seed", 1, "--out", out,
               "--cluster", config, process=True)  # its workers are processes too
    assert "using Dask cluster at tcp://127.0.0.1:" in proc.stderr
    local = GaussianMixture(3, random_state=1).fit(dgmm.io.open_array(store, "X"))
    np.testing.assert_allclose(dgmm.load(out).means_, local.means_, rtol=1e-9)


# ------------------------------------------------ outputs never destroy anything


def _precious(directory):
    directory.mkdir()
    (directory / "notes.txt").write_text("precious")
    (directory / "sub").mkdir()
    (directory / "sub" / "data.bin").write_bytes(bytes(range(256)))
    return tree_digest(directory)


def _refused(proc, *messages):
    """Exit code 2 and one plain line on stderr holding every message."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and all(m in lines[0] for m in messages), proc.stderr
    assert "Error" not in lines[0] and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def model_file(store, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.npz"
    run("fit", store, "--array", "X", "--n-components", 3, "--max-iter", 5, "--out", path, "-q")
    return path


@pytest.mark.parametrize("command", ["fit", "select"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_never_replaces_a_directory(store, tmp_path, command, overwrite):
    victim = tmp_path / "models"
    before = _precious(victim)
    proc = run(command, store, "--array", "X", "--n-components", 2, "--out", f"{victim}/",
               *overwrite, check=False)
    # --overwrite is never suggested: it could not help
    _refused(proc, f"{victim} is a directory; a model file is never written over a directory")
    assert tree_digest(victim) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "STORE", "--array", "X", "--out", "STORE"], "STORE is the input"),
        (["fit", "STORE/X", "--out", "STORE"], "STORE is the input"),
        (["fit", "STORE", "--array", "X", "--out", "STORE/model.npz"],
         "STORE/model.npz lies inside the input"),
        (["fit", "STORE", "--array", "X", "--out", "STORE/X/../m.npz"], "lies inside the input"),
        (["fit", "STORE", "--array", "X", "--out", "m.npz", "--checkpoint", "STORE/ckpt"],
         "STORE/ckpt lies inside the input"),
        (["fit", "STORE", "--array", "X", "--out", "m.npz", "--checkpoint", "STORE/ckpt",
          "--resume"], "STORE/ckpt lies inside the input"),
        (["select", "STORE", "--array", "X", "--out", "STORE"], "STORE is the input"),
        (["predict", "MODEL", "STORE", "--array", "X", "--out", "STORE"], "STORE is the input"),
        (["predict", "MODEL", "STORE", "--array", "X", "--out", "STORE/p.zarr"],
         "lies inside the input"),
    ],
    ids=["fit-equal", "fit-equal-array-path", "fit-inside", "fit-inside-dotdot",
         "checkpoint-inside", "checkpoint-inside-resume", "select-equal", "predict-equal",
         "predict-inside"],
)
def test_output_over_or_into_the_input_is_refused(store, model_file, tmp_path, args, message,
                                                  overwrite):
    args = [str(model_file) if a == "MODEL" else a.replace("STORE", str(store)) for a in args]
    if "--n-components" not in args and args[0] != "predict":
        args += ["--n-components", "2"]
    before = tree_digest(store)
    proc = run(*args, *overwrite, cwd=tmp_path, check=False)
    _refused(proc, message.replace("STORE", str(store)))
    assert tree_digest(store) == before
    assert list(tmp_path.iterdir()) == []


def test_predict_overwrite_replaces_only_its_own_stores(store, model_file, tmp_path):
    victim = tmp_path / "p.zarr"
    before = _precious(victim)
    args = ["predict", model_file, store, "--array", "X", "-q"]
    _refused(run(*args, "--out", victim, "--overwrite", check=False),
             f"{victim} exists and is not a Zarr store written by dgmm")
    assert tree_digest(victim) == before
    out = tmp_path / "pred.zarr"
    run(*args, "--out", out)
    _refused(run(*args, "--out", out, "--log-density", check=False), "pass --overwrite")
    run(*args, "--out", out, "--no-labels", "--log-density", "--overwrite")
    assert sorted(zarr.open_group(str(out), mode="r").array_keys()) == ["log_density"]


def test_fit_needs_overwrite_to_replace_a_model(store, model_file, tmp_path):
    out = tmp_path / "m.npz"
    shutil.copy(model_file, out)
    before = tree_digest(out)
    _refused(run("fit", store, "--array", "X", "--n-components", 2, "--out", out, check=False),
             f"{out} exists; pass --overwrite to replace it")
    assert tree_digest(out) == before


def test_read_only_directory_is_refused_before_the_fit(store, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running with permissions that ignore a read-only directory")
        start = time.monotonic()
        proc = run("fit", store, "--array", "X", "--n-components", 3, "--out", ro / "m.npz",
                   check=False)
        _refused(proc, f"directory {ro} is not writable")
        assert "iteration" not in proc.stderr and time.monotonic() - start < 30
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("command", ["info", "predict"])
@pytest.mark.parametrize("name", ["notes.txt", "image.png", "model.pkl", "plain.npz"])
def test_non_model_files_are_named_as_such(store, tmp_path, command, name):
    path = tmp_path / name
    if name == "plain.npz":
        np.savez(path, a=np.arange(3))
    else:
        path.write_bytes({"notes.txt": b"hello\n", "image.png": b"\x89PNG\r\n\x1a\n" + bytes(9),
                          "model.pkl": pickle.dumps({"weights_": [1.0]})}[name])
    args = [path] if command == "info" else [path, store, "--array", "X", "--out", "p.zarr"]
    proc = run(command, *args, cwd=tmp_path, check=False)
    _refused(proc, f"{path} is not a dgmm model file (")
    assert "pickle" not in proc.stderr


def test_not_converged_is_one_plain_warning_line(store, tmp_path):
    args = ["fit", store, "--array", "X", "--n-components", 3, "--max-iter", 2, "--tol", 0,
            "--out", tmp_path / "m.npz"]
    proc = run(*args)
    warned = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert warned == ["dgmm fit: warning: the fit did not converge in 2 iterations; "
                      "raise --max-iter or --tol"]
    assert "ConvergenceWarning" not in proc.stderr and ".py:" not in proc.stderr
    assert run(*args, "--overwrite", "-q").stderr == ""


def test_a_3d_store_is_described_for_people(tmp_path):
    path = tmp_path / "cube.zarr"
    zarr.create_array(store=str(path), shape=(4, 5, 6), chunks=(2, 5, 6), dtype="f8")
    proc = run("fit", path, "--n-components", 2, "--out", tmp_path / "m.npz", check=False)
    _refused(proc, f"the Zarr array at {path} has 3 dimensions (shape 4 x 5 x 6); dgmm needs "
                   "a 2-D array (rows, features)")
    assert "1-D" not in proc.stderr and "reshape" not in proc.stderr


def test_select_options_progress_and_converged_column(store, tmp_path):
    proc = run("select", store, "--array", "X", "--n-components", "2,3", "--max-iter", 3,
               "--tol", 0, "--reg-covar", 1e-4, "--init", "random_from_data", "--n-init", 2,
               "--algorithm", "batch", "--batch-size", 1000, "--out", tmp_path / "b.npz")
    header = next(line.split() for line in proc.stderr.splitlines() if line.startswith("   K"))
    assert header == ["K", "covariance", "bic", "aic", "mean", "loglik", "iters", "converged"]
    assert "dgmm select: warning: 2 of 2 candidates (K = 2, 3) did not converge in 3 " \
           "iterations; raise --max-iter or --tol" in proc.stderr
    assert dgmm.load(tmp_path / "b.npz").reg_covar == 1e-4
    assert "iteration    1" in proc.stderr


def test_resume_of_a_finished_job_saves_the_same_model(store, tmp_path):
    args = ["fit", store, "--array", "X", "--n-components", 3, "--seed", 1, "--out",
            tmp_path / "m.npz", "--checkpoint", tmp_path / "ckpt", "--resume"]
    first = run(*args)
    assert "iteration    1" in first.stderr
    model = dgmm.load(tmp_path / "m.npz")
    _refused(run(*args, check=False), "exists; pass --overwrite")
    again = run(*args, "--overwrite")
    assert not any(line.startswith("iteration") for line in again.stderr.splitlines())
    assert f"{model.n_iter_} iterations, converged=True" in again.stderr
    rerun = dgmm.load(tmp_path / "m.npz")
    for attr in ("weights_", "means_", "covariances_", "lower_bounds_", "n_iter_"):
        np.testing.assert_array_equal(getattr(rerun, attr), getattr(model, attr))


def test_readme_cron_line_runs_night_after_night(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (line,) = [s.strip() for s in readme.splitlines() if s.strip().startswith("0 2 * * *")]
    command = line.split(maxsplit=5)[5].replace("\\%", "%")  # cron unescapes %
    command = command.replace("cd /data", f"cd {tmp_path}").replace("dgmm ", " ".join(
        map(shlex.quote, DGMM)) + " ", 1)
    bin_dir = tmp_path / "bin"  # a `date` that says which night it is
    bin_dir.mkdir()
    (bin_dir / "date").write_text('#!/bin/sh\necho "$NIGHT"\n')
    (bin_dir / "date").chmod(0o755)

    def night(day, seed, new_data):
        if new_data:
            run("generate", tmp_path / "today.zarr", "--n-samples", 6000, "--n-features", 2,
                "--n-components", 8, "--seed", seed, "--overwrite", "-q")
        env = dict(os.environ, NIGHT=day, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        proc = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, (tmp_path / "fit.log").read_text()
        return dgmm.load(tmp_path / "model.npz")

    first = night("2025-03-01", 1, new_data=True)
    retried = night("2025-03-01", 1, new_data=False)  # a rerun of the same night
    np.testing.assert_array_equal(retried.means_, first.means_)
    second = night("2025-03-02", 2, new_data=True)
    assert second.means_.shape == first.means_.shape
    assert not np.array_equal(second.means_, first.means_)
    assert (tmp_path / "ckpt-2025-03-01").is_dir() and (tmp_path / "ckpt-2025-03-02").is_dir()
    assert "error" not in (tmp_path / "fit.log").read_text()


def test_predict_outliers_score_threshold_and_histogram(store, model_file, tmp_path):
    out, png = tmp_path / "p.zarr", tmp_path / "hist.png"
    proc = CliRunner().invoke(main, ["predict", str(model_file), str(store), "--array", "X",
                                     "--out", str(out), "--outliers", "--contamination", "0.01",
                                     "--plot", str(png)])
    assert proc.exit_code == 0, proc.stderr
    assert "outlier threshold at contamination 0.01" in proc.stderr
    written = zarr.open_group(str(out), mode="r")
    threshold = written.attrs["outlier_threshold"]
    model = dgmm.load(model_file)
    scores = model.score_samples(zarr.open_array(str(store / "X"), mode="r")[:].astype(float))
    assert threshold == np.quantile(scores, 0.01, method="higher")
    np.testing.assert_array_equal(written["outlier"][:], scores < threshold)
    assert written["outlier"][:].sum() == 300 and "labels" in written
    assert png.read_bytes().startswith(b"\x89PNG") and f"wrote {png}" in proc.stderr
    score = CliRunner().invoke(main, ["score", str(model_file), str(store), "--array", "X",
                                      "--json", "--contamination", "0.01"])
    result = json.loads(score.stdout)
    assert result["outlier_threshold"] == threshold and result["contamination"] == 0.01


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--outliers"], "--outliers needs --contamination"),
        (["--contamination", "0.01"], "--contamination is used with --outliers only"),
        (["--outliers", "--contamination", "0.7"], "--contamination"),
        (["--plot", "h.png"], "--plot draws the outlier threshold: pass --outliers too"),
        (["--outliers", "--contamination", "0.01", "--plot", "/nonexistent/h.png"],
         "does not exist"),
    ],
)
def test_outlier_usage_errors_exit_2(store, model_file, tmp_path, args, message):
    out = tmp_path / "p.zarr"
    result = CliRunner().invoke(main, ["predict", str(model_file), str(store), "--array", "X",
                                       "--out", str(out), *args])
    assert result.exit_code == 2 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_fit_and_select_plots(store, tmp_path):
    pytest.importorskip("matplotlib")
    fit_png, select_png = tmp_path / "fit.png", tmp_path / "select.png"
    for args, png in [
        (["fit", "--n-components", "3", "--max-iter", "5", "--out", str(tmp_path / "m.npz"),
          "--plot", str(fit_png)], fit_png),
        (["select", "--n-components", "2:3", "--max-iter", "5", "--out",
          str(tmp_path / "s.npz"), "--plot", str(select_png)], select_png),
    ]:
        result = CliRunner().invoke(main, [args[0], str(store), "--array", "X", *args[1:]])
        assert result.exit_code == 0, result.stderr
        assert png.read_bytes().startswith(b"\x89PNG") and f"wrote {png}" in result.stderr
    existing = CliRunner().invoke(main, ["fit", str(store), "--array", "X", "--n-components", "2",
                                         "--out", str(tmp_path / "n.npz"), "--plot",
                                         str(fit_png)])
    assert existing.exit_code == 2 and not (tmp_path / "n.npz").exists()
    assert f"{fit_png} exists; pass --overwrite to replace it" in existing.stderr


def test_fit_with_weights_labels_and_missing_values(tmp_path):
    # Each of issue 12's features once through the console script, end to end.
    from tests.helpers import mixture_data

    X, y, _ = mixture_data(n=3000, d=3, k=3, seed=6)
    rng = np.random.default_rng(0)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    weights = rng.integers(0, 3, len(X)).astype(np.float64)
    labels = np.where(rng.random(len(X)) < 0.05, y, -1)
    store = tmp_path / "gappy.zarr"
    group = zarr.open_group(str(store), mode="w")
    for name, value in (("X", X), ("w", weights), ("known", labels)):
        chunks = (700, *value.shape[1:])
        group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks)[:] = value
    out = tmp_path / "m.npz"
    run("fit", store, "--array", "X", "--n-components", 3, "--sample-weight", "w", "--labels",
        "known", "--missing", "marginalize", "--seed", 0, "--out", out, "-q")
    ref = GaussianMixture(3, missing="marginalize", random_state=0).fit(
        dgmm.io.open_array(store, "X"), sample_weight=weights, labels=labels)
    model = dgmm.load(out)
    np.testing.assert_allclose(model.means_, ref.means_, rtol=1e-12)
    pred = tmp_path / "p.zarr"
    run("predict", out, store, "--array", "X", "--out", pred)
    np.testing.assert_array_equal(zarr.open_group(str(pred), mode="r")["labels"][:],
                                  ref.predict(X))
    bad = run("fit", store, "--array", "X", "--n-components", 3, "--out", tmp_path / "x.npz",
              check=False)
    assert bad.returncode == 1 and "NaN" in bad.stderr and not (tmp_path / "x.npz").exists()
