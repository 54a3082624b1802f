"""The ``dgmm`` console script, end to end through real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import dgmm
from dgmm import GaussianMixture
from dgmm.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
# The installed console script; the module form where the package is not installed.
DGMM = [shutil.which("dgmm")] if shutil.which("dgmm") else [sys.executable, "-m", "dgmm.cli"]


def run(*args, cwd=None, check=True, timeout=120):
    proc = subprocess.run([*DGMM, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dgmm {args} exited {proc.returncode}: {proc.stderr}")
    return proc


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
    np.testing.assert_allclose(written["proba"][:], model.predict_proba(X), rtol=1e-12)
    np.testing.assert_allclose(written["log_density"][:], model.score_samples(X), rtol=1e-12)

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
        (["score", "missing.npz", "STORE"], "model file not found"),
        (["fit", "STORE", "--bogus"], "No such option"),
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
               "m.npz", check=False)
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
    proc = run("demo", cwd=tmp_path, timeout=60)
    assert time.monotonic() - start < 60
    assert "largest distance between a fitted and a true mean" in proc.stdout
    assert Path(tmp_path / "dgmm-demo.png").exists() or "matplotlib" in proc.stderr


def test_fit_on_a_cluster_from_a_config(store, tmp_path):
    config = Path(__file__).resolve().parents[1] / "cluster_configs" / "local.yaml"
    out = tmp_path / "m.npz"
    proc = run("fit", store, "--array", "X", "--n-components", 3, "--seed", 1, "--out", out,
               "--cluster", config)
    assert "using Dask cluster at tcp://127.0.0.1:" in proc.stderr
    local = GaussianMixture(3, random_state=1).fit(dgmm.io.open_array(store, "X"))
    np.testing.assert_allclose(dgmm.load(out).means_, local.means_, rtol=1e-9)
