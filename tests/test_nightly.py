"""Scheduled jobs over growing stores: ``dgmm update``, ``dgmm report`` and provenance."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from datetime import datetime, timedelta

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import dgmm
from dgmm import GaussianMixture, provenance
from dgmm.cli import main
from dgmm.datasets import append_mixture_rows, make_mixture_zarr
from tests.helpers import tree_digest
from tests.test_cli import DGMM, run

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N1, N2 = 20_000, 40_000  # the model is fitted on rows [0, N1); rows [N1, N2) arrive later
SHIFT = 1.0  # of every feature of the rows that drift, in units of the component spread


def invoke(*args, code=0):
    """The command in this process (as the console script runs it, without its start-up)."""
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="dgmm")
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A model fitted on N1 rows, and two stores that begin with those rows and grew to N2.

    ``stationary`` gained rows of the same mixture; ``shifted`` rows of the
    mixture moved by SHIFT along every feature.
    """
    tmp = tmp_path_factory.mktemp("nightly")
    stationary, shifted = tmp / "stationary.zarr", tmp / "shifted.zarr"
    make_mixture_zarr(stationary, N1, 3, 3, chunk_rows=2_000, seed=4)
    model = tmp / "m0.npz"
    invoke("fit", stationary, "--array", "X", "--n-components", 3, "--seed", 0, "--out", model,
           "-q")
    shutil.copytree(stationary, shifted)
    append_mixture_rows(stationary, N2 - N1)
    append_mixture_rows(shifted, N2 - N1, shift=SHIFT)
    return {"model": model, "stationary": stationary, "shifted": shifted}


def _rows(store, start=0, stop=None):
    return zarr.open_array(str(store / "X"), mode="r")[start:stop]


def test_update_equals_partial_fit_and_nears_a_full_refit(stores, tmp_path):
    out = tmp_path / "m1.npz"
    proc = run("update", stores["model"], stores["stationary"], "--array", "X", "--out", out,
               "--batch-size", 2_000)
    assert f"learning rows {N1}:{N2} of" in proc.stderr and "10 minibatches" in proc.stderr
    updated = dgmm.load(out)

    expected = dgmm.load(stores["model"])
    assert not hasattr(expected, "n_steps_") and expected.n_samples_seen_ == N1
    expected.set_params(batch_size=2_000)
    expected.partial_fit(_rows(stores["stationary"], N1, N2))  # the same minibatches, in NumPy
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_",
                 "running_stats_"):
        np.testing.assert_allclose(getattr(updated, name), getattr(expected, name), rtol=1e-12,
                                   atol=1e-12, err_msg=name)
    # the batch fit's rows count as N1 // 2000 steps: t continues from 10
    assert updated.n_steps_ == expected.n_steps_ == 20 and updated.n_samples_seen_ == N2
    assert updated.step_size_ == pytest.approx(20 ** -0.6)
    assert updated.lower_bound_ == pytest.approx(expected.lower_bound_, rel=1e-12)

    X = _rows(stores["stationary"])
    refit = GaussianMixture(3, random_state=0).fit(X)
    assert abs(updated.score(X) - refit.score(X)) < 0.01


def test_provenance_is_recorded_appended_shown_and_survives_save_load(stores, tmp_path):
    fitted = dgmm.load(stores["model"])
    (entry,) = fitted.provenance_["history"]
    assert entry["action"] == "fit" and entry["rows"] == [0, N1]
    assert entry["dgmm_version"] == dgmm.__version__
    store = entry["store"]
    assert store["path"] == os.path.realpath(stores["stationary"]) and store["array"] == "X"
    assert store["shape"] == [N1, 3] and store["dtype"] == "float32"
    assert store["head_sha256"] == provenance.head_digest(_rows(stores["stationary"]), 1000)
    when = datetime.fromisoformat(entry["time"])
    assert when.utcoffset() == timedelta(0)

    fitted.save(tmp_path / "copy.npz")
    assert dgmm.load(tmp_path / "copy.npz").provenance_ == fitted.provenance_

    out = tmp_path / "m1.npz"
    invoke("update", stores["model"], stores["stationary"], "--array", "X", "--out", out,
           "--forget", 0.05, "-q")
    first, second = dgmm.load(out).provenance_["history"]
    assert first == entry
    assert second["action"] == "update" and second["rows"] == [N1, N2]
    assert second["store"]["shape"] == [N2, 3]
    assert second["store"]["head_sha256"] == store["head_sha256"]
    assert second["min_step_size"] == 0.05 and second["steps"] == 2
    info = invoke("info", out).stdout
    assert f"fit    rows 0:{N1} of {store['path']}/X" in info
    assert f"update rows {N1}:{N2} of" in info and "rows learnt       40000" in info


@pytest.mark.parametrize(("kind", "message"), [
    ("seen", "rows 0:100 of {store}/X were already learnt by {model}"),
    ("nothing-new", "no new rows: {model} has seen rows 0:40000 of {store}/X"),
    ("features", "has 4 features, but {model} was fitted on 3"),
    ("same-file", "is MODEL itself; pass --overwrite"),
    ("bad-rows", "--rows 5:2 is not a non-empty range"),
])
def test_update_refusals_are_one_clear_line_before_anything_is_written(stores, tmp_path, kind,
                                                                      message):
    model, store = tmp_path / "m.npz", stores["stationary"]
    shutil.copy(stores["model"], model)
    out, extra = tmp_path / "new.npz", []
    if kind == "seen":
        extra = ["--rows", "0:100"]
    elif kind == "nothing-new":
        invoke("update", model, store, "--array", "X", "--out", model, "--overwrite", "-q")
    elif kind == "features":
        store = tmp_path / "wide.zarr"
        make_mixture_zarr(store, 500, 4, 2)
    elif kind == "same-file":
        out = model
    else:
        extra = ["--rows", "5:2"]
    before = tree_digest(tmp_path)
    result = invoke("update", model, store, "--array", "X", "--out", out, *extra, code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgmm update: error: ")
    assert message.format(model=model, store=store) in lines[0]
    assert tree_digest(tmp_path) == before


def test_report_flags_drift_and_matches_direct_computations(stores, tmp_path):
    model = dgmm.load(stores["model"])
    # an anomaly threshold stored in the model: the 2% quantile of its training rows
    threshold = float(np.quantile(model.score_samples(_rows(stores["stationary"], 0, N1)),
                                  0.02))
    model.outlier_threshold_, model.outlier_contamination_ = threshold, 0.02
    path = tmp_path / "with-threshold.npz"
    model.save(path)

    invoke("report", path, stores["stationary"], "--array", "X", "--json",
           tmp_path / "calm.json", "--fail-above", 0.1, "-q")
    calm = json.loads((tmp_path / "calm.json").read_text())
    proc = run("report", path, stores["shifted"], "--array", "X", "--json",
               tmp_path / "drift.json", "--fail-above", 0.1, check=False)
    assert proc.returncode == 3
    assert "exceeds --fail-above 0.1" in proc.stderr.strip().splitlines()[-1]
    drifted = json.loads((tmp_path / "drift.json").read_text())

    assert calm["rows"] == drifted["rows"] == [N1, N2]  # by default the rows it has not seen
    assert abs(calm["drift"]) < 0.05 and not calm["drifted"]
    assert drifted["drift"] > 0.1 and drifted["drifted"]
    assert calm["chi_square_p_value"] > 1e-3 > drifted["chi_square_p_value"]
    for report, store in ((calm, stores["stationary"]), (drifted, stores["shifted"])):
        X = _rows(store, N1, N2).astype(np.float64)
        proba, scores = model.predict_proba(X), model.score_samples(X)
        occupancy = proba.sum(axis=0)
        expected = len(X) * model.weights_.astype(np.float64)
        chi_square = np.sum((occupancy - expected) ** 2 / expected)
        np.testing.assert_allclose(report["occupancy"], occupancy, rtol=1e-10)
        assert report["chi_square"] == pytest.approx(chi_square, rel=1e-9)
        assert report["outlier_fraction"] == np.mean(scores < threshold)
        assert report["mean_log_likelihood"] == pytest.approx(scores.mean(), rel=1e-12)
        assert report["drift"] == pytest.approx(model.lower_bound_ - scores.mean(), rel=1e-10)
        np.testing.assert_allclose(report["feature_means"], X.mean(axis=0), rtol=1e-10)
    assert drifted["outlier_fraction"] > 2 * calm["outlier_fraction"]
    np.testing.assert_allclose(np.subtract(drifted["feature_means"], calm["feature_means"]),
                               SHIFT, atol=0.05)


def test_sigkill_during_update_keeps_the_model_and_leaves_no_output(stores, tmp_path):
    model = tmp_path / "model.npz"
    shutil.copy(stores["model"], model)
    before = tree_digest(tmp_path)
    # tiny minibatches make the update long (a thousand steps) on a small store
    proc = subprocess.Popen([*DGMM, "update", str(model), str(stores["stationary"]), "--array",
                             "X", "--out", str(model), "--overwrite", "--batch-size", "20"],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()  # printed once the stepping starts
    assert line.startswith("learning rows"), line
    assert proc.poll() is None, "the update ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    # A SIGKILLed run cannot remove its lock on --out; the next run breaks it (test_faults).
    lock = tmp_path / ".model.npz.dgmm-lock"
    assert json.loads(lock.read_text())["pid"] == proc.pid
    lock.unlink()
    assert tree_digest(tmp_path) == before  # the model untouched, no partial or temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_min_step_size_floors_the_step_and_fades_old_rows():
    from tests.helpers import mixture_data

    X, _, _ = mixture_data(n=6_000, d=2, k=2, seed=3)
    floored = GaussianMixture(2, random_state=0, batch_size=500, min_step_size=0.2).fit(X)
    plain = GaussianMixture(2, random_state=0, batch_size=500).fit(X)
    for gm in (floored, plain):
        gm.partial_fit(X)  # 12 minibatches; t continues from 6000 // 500 = 12
    assert floored.n_steps_ == plain.n_steps_ == 24
    assert floored.step_size_ == 0.2 and plain.step_size_ == pytest.approx(24 ** -0.6)
