"""Out-of-core input, cache policy, streamed predictions and model files."""

import json
import os
import pickle
import threading
import time
import zipfile

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from scipy import sparse
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dgmm
from dgmm import GaussianMixture, io
from dgmm import _kernels as K
from dgmm._passes import block_pass
from dgmm.datasets import make_mixture, make_mixture_zarr
from dgmm.io import (
    as_dask_array,
    check_output_path,
    open_array,
    write_predictions,
)
from dgmm.outliers import GaussianMixtureOutlierDetector
from tests.helpers import tree_digest

# Fits here run a fixed number of iterations (tol=0) on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
N, D, NK, CHUNK = 3000, 3, 3, 500
FITTED = ["weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"]


@pytest.fixture
def store(tmp_path):
    """A mixture store (float64, 6 chunks of 500 rows) and the same rows in memory."""
    path = tmp_path / "data.zarr"
    kw = dict(chunk_rows=CHUNK, dtype="float64", seed=3, separation=4.0)
    make_mixture_zarr(path, N, D, NK, **kw)
    X, _, truth = make_mixture(N, D, NK, **kw)
    return path, X, truth


@pytest.fixture
def small_reads():
    """Read stores in 2 stored chunks per task, so fits see several blocks."""
    with dask.config.set({"dgmm.read-chunk-bytes": 2 * CHUNK * D * 8}):
        yield


def _model(covariance_type, truth=None, **kw):
    """A model started from the same random rows wherever its data come from."""
    kw = {"init_params": "random_from_data", "random_state": 0, "tol": 0.0, "max_iter": 4} | kw
    return GaussianMixture(NK, covariance_type=covariance_type, **kw)


def _assert_same_fit(a, b, rtol):
    for name in FITTED:
        assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=0)
    assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=rtol, atol=0)
    assert a.n_iter_ == b.n_iter_


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("kind", ["path", "zarr_array", "open_array"])
def test_fit_from_zarr_equals_in_memory(store, small_reads, covariance_type, kind):
    path, X, _ = store
    source = {
        "path": str(path / "X"),
        "zarr_array": zarr.open_array(str(path / "X"), mode="r"),
        "open_array": open_array(path, array="X"),
    }[kind]
    assert as_dask_array(source)[0].numblocks == (3, 1)
    lazy = _model(covariance_type, cache=False).fit(source)
    eager = _model(covariance_type).fit(X)
    assert lazy.n_iter_ == 4
    _assert_same_fit(lazy, eager, rtol=1e-9)
    assert_allclose(lazy.score(source), eager.score(X), rtol=1e-12)
    assert isinstance(lazy.predict(source), da.Array)


def test_column_chunked_tiny_store_is_read_row_aligned(tmp_path, small_reads):
    X = make_mixture(N, D, NK, seed=1)[0]
    path = tmp_path / "cols.zarr"
    zarr.create_array(str(path), data=X, chunks=(100, 1))
    Xd, lazy = as_dask_array(str(path))
    # Whole stored chunks per task: 10 of 100 rows make ~24 kB; all columns in one chunk.
    assert lazy and Xd.chunks == ((1000, 1000, 1000), (D,))
    assert_array_equal(Xd.compute(), X)
    _assert_same_fit(_model("full").fit(str(path)), _model("full").fit(X), rtol=1e-9)


def test_huge_stored_chunk_is_not_split(tmp_path, small_reads):
    path = tmp_path / "one.zarr"
    zarr.create_array(str(path), data=np.ones((N, D)), chunks=(N, D))
    assert as_dask_array(str(path))[0].chunks == ((N,), (D,))


def _group(path):
    zarr.open_group(str(path), mode="w")
    return path


def _array(path, **kwargs):
    zarr.create_array(str(path), **kwargs)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.zarr", "does not exist"),
        (lambda p: _group(p / "g.zarr"), "is a Zarr group"),
        (lambda p: _array(p / "r1.zarr", data=np.ones(5)), "must be 2-D"),
        (lambda p: _array(p / "r3.zarr", data=np.ones((2, 2, 2))), "must be 2-D"),
        (lambda p: _array(p / "s.zarr", shape=(4, 2), dtype=str), "numeric"),
    ],
    ids=["nonexistent", "group", "rank1", "rank3", "strings"],
)
def test_bad_input_names_the_path(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        GaussianMixture(2).fit(str(path))
    assert str(path) in str(info.value)
    gm = GaussianMixture(1, init_params="random_from_data").fit(np.eye(3, 2))
    out = tmp_path / "out.zarr"
    with pytest.raises(ValueError, match=message) as info:
        write_predictions(gm, str(path), out)
    assert str(path) in str(info.value)
    assert not out.exists()


def test_bad_zarr_array_object_names_its_store(tmp_path):
    arr = zarr.create_array(str(tmp_path / "r1.zarr"), data=np.ones(5))
    with pytest.raises(ValueError, match=f"{tmp_path / 'r1.zarr'} must be 2-D"):
        GaussianMixture(2).fit(arr)


def test_group_without_the_named_array(store):
    path = store[0]
    with pytest.raises(ValueError, match=rf"{path}.*no array 'nope'.*'X'"):
        open_array(path, array="nope")
    with pytest.raises(ValueError, match=f"{path / 'X'} is a Zarr array, not a group"):
        open_array(path / "X", array="X")


def _nan_rows_removed(X):
    """X's rows without NaN, as a dask mask selection (unknown chunk sizes, one block
    emptied) and in memory."""
    X = X.copy()
    X[::5, 0] = np.nan
    X[CHUNK : 2 * CHUNK, 1] = np.nan
    Xd = da.from_array(X, chunks=(CHUNK, D))
    return Xd[~da.isnan(Xd).any(axis=1)], X[~np.isnan(X).any(axis=1)]


def test_unknown_chunk_sizes_are_computed_and_empty_blocks_dropped(store):
    lazy, eager = _nan_rows_removed(store[1])
    Xd, is_lazy = as_dask_array(lazy)
    assert is_lazy and np.isnan(lazy.shape[0])  # the caller's array is left as it was
    assert Xd.shape == eager.shape
    assert len(Xd.chunks[0]) == N // CHUNK - 1 and 0 not in Xd.chunks[0]
    assert_array_equal(Xd.compute(), eager)


def test_object_input_is_converted_to_float64(store):
    X = store[1]
    for source in (X.astype(object), da.from_array(X.astype(object), chunks=(CHUNK, D))):
        Xd, _ = as_dask_array(source)
        assert Xd.dtype == np.float64
        assert_array_equal(Xd.compute(), X)


def _sparse_blocks(X, calls):
    def to_sparse(block):
        calls.append(len(block))
        return sparse.csr_matrix(block)

    return da.from_array(X, chunks=(CHUNK, D)).map_blocks(to_sparse, dtype=X.dtype)


@pytest.mark.parametrize("kind", ["csr_matrix", "csr_array", "dask"])
def test_sparse_input_is_refused_before_any_work(store, kind):
    X = store[1]
    calls = []
    source = {"csr_matrix": sparse.csr_matrix, "csr_array": sparse.csr_array,
              "dask": lambda X: _sparse_blocks(X, calls)}[kind](X)
    calls.clear()  # dask computed its meta from an empty block
    message = "Sparse data was passed for X, but dense data is required"
    with pytest.raises(TypeError, match=message):
        GaussianMixture(2).fit(source)
    fitted = _model("diag").fit(X)
    for method in ("predict", "predict_proba", "score_samples", "score"):
        with pytest.raises(TypeError, match=message):
            getattr(fitted, method)(source)
    assert calls == []


# --------------------------------------------------------------------------
# Cache policy
# --------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_cache_choices_give_identical_fits(store, small_reads, capsys, covariance_type):
    source = str(store[0] / "X")
    fits = {c: _model(covariance_type, cache=c, verbose=1).fit(source) for c in (True, False)}
    out = capsys.readouterr().out
    assert "cache=True" in out and "persisting" in out
    assert "cache=False" in out and "streaming" in out
    _assert_same_fit(fits[True], fits[False], rtol=0)


def test_cache_auto_follows_the_memory_budget(store, small_reads, capsys):
    source = str(store[0] / "X")
    with dask.config.set({"dgmm.cache-fraction": 0.0}):
        streamed = _model("full", verbose=1).fit(source)
    assert "cache='auto'" in (out := capsys.readouterr().out) and "streaming" in out
    persisted = _model("full", verbose=1).fit(source)
    assert "cache='auto'" in (out := capsys.readouterr().out) and "persisting" in out
    _assert_same_fit(streamed, persisted, rtol=0)


def test_cache_budget_of_a_distributed_cluster(store, small_reads):
    distributed = pytest.importorskip("distributed")
    from dgmm._passes import memory_budget

    with distributed.Client(
        processes=False, n_workers=2, threads_per_worker=1, memory_limit="1GiB",
        dashboard_address=":0",
    ):
        assert memory_budget() == (2**30, "2 distributed worker(s)")
        fit = _model("full", cache="auto").fit(str(store[0] / "X"))
    _assert_same_fit(fit, _model("full").fit(store[1]), rtol=1e-9)


def test_cache_rejects_unknown_value(store):
    with pytest.raises(ValueError, match="cache must be one of"):
        _model("full", cache="sometimes").fit(store[1])


# --------------------------------------------------------------------------
# Streamed predictions
# --------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_write_predictions_equals_in_memory_outputs(store, small_reads, tmp_path, covariance_type):
    path, X, _ = store
    gm = _model(covariance_type).fit(X)
    out = tmp_path / "pred.zarr"
    group = write_predictions(gm, str(path / "X"), out, proba=True, log_density=True)
    assert sorted(group.array_keys()) == ["labels", "log_density", "proba"]
    assert group["labels"].dtype == np.uint8 and group["labels"].chunks == (1000,)
    assert group["proba"].chunks == (1000, NK)
    assert_array_equal(group["labels"][:], gm.predict(X))
    assert_allclose(group["proba"][:], gm.predict_proba(X), rtol=1e-12, atol=1e-300)
    assert_allclose(group["log_density"][:], gm.score_samples(X), rtol=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr", "pred.zarr"]
    # ... and with scikit-learn's densities for the same parameters.
    sk = SkGaussianMixture(NK, covariance_type=covariance_type)
    for name in ("weights_", "means_", "precisions_cholesky_"):
        setattr(sk, name, getattr(gm, name))
    assert_allclose(group["proba"][:], sk.predict_proba(X), rtol=1e-9, atol=1e-12)
    assert_allclose(group["log_density"][:], sk.score_samples(X), rtol=1e-12)


@pytest.mark.parametrize("also", [{}, {"labels": False}, {"labels": False, "log_density": True}],
                         ids=["labels", "alone", "log-density"])
def test_write_predictions_flags_outliers_in_the_same_pass(store, small_reads, tmp_path, also,
                                                          monkeypatch):
    path, X, _ = store
    gm = _model("full").fit(X)
    det = GaussianMixtureOutlierDetector(gm, contamination=0.02).fit(X)
    passes = []
    monkeypatch.setattr(io, "block_pass", lambda *a, **k: passes.append(1) or block_pass(*a, **k))
    group = write_predictions(gm, str(path / "X"), tmp_path / "p.zarr",
                              outlier_threshold=det.threshold_, **also)
    assert len(passes) == 1
    assert group["outlier"].dtype == bool
    assert group.attrs["outlier_threshold"] == det.threshold_
    assert group.attrs["outputs"] == [*group.attrs["outputs"][:-1], "outlier"]
    assert_array_equal(group["outlier"][:], det.predict(X) == -1)
    assert group["outlier"][:].sum() == 60  # ceil((3000 - 1) * 0.02) rows below the threshold
    if also.get("log_density"):
        assert_allclose(group["log_density"][:], gm.score_samples(X), rtol=1e-12)


def test_write_predictions_irregular_dask_chunks(store, tmp_path):
    X = store[1]
    gm = _model("diag").fit(X)
    source = da.from_array(X, chunks=((700, 300, 1200, 800), (D,)))
    group = write_predictions(gm, source, tmp_path / "p.zarr", labels=False, log_density=True,
                              dtype="float32")
    assert group["log_density"].dtype == np.float32
    assert_allclose(group["log_density"][:], gm.score_samples(X), rtol=1e-6)


def test_write_predictions_unknown_chunk_sizes(store, tmp_path):
    lazy, eager = _nan_rows_removed(store[1])
    gm = _model("full").fit(eager)
    group = write_predictions(gm, lazy, tmp_path / "p.zarr", proba=True)
    assert_array_equal(group["labels"][:], gm.predict(eager))
    assert_allclose(group["proba"][:], gm.predict_proba(eager), rtol=1e-12, atol=1e-300)


def _fail_on_third_block(monkeypatch):
    """Block 3 fails at once; the others are slow, so some are still writing then."""
    calls, lock, real = [0], threading.Lock(), K.per_row_outputs

    def failing(*args, **kwargs):
        with lock:
            calls[0] += 1
            if calls[0] == 3:
                raise RuntimeError("injected failure")
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(K, "per_row_outputs", failing)
    return calls


def test_failure_part_way_leaves_no_target(store, tmp_path, monkeypatch):
    path, X, _ = store
    gm = _model("full").fit(X)
    calls = _fail_on_third_block(monkeypatch)
    out = tmp_path / "pred.zarr"
    with dask.config.set({"dgmm.read-chunk-bytes": CHUNK * D * 8}):  # 6 blocks
        with pytest.raises(RuntimeError, match="injected failure"):
            write_predictions(gm, str(path / "X"), out, proba=True)
    assert 3 <= calls[0] < 6  # failed part-way
    time.sleep(0.5)  # nothing may appear later either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr"]


def test_failure_part_way_keeps_existing_store(store, small_reads, tmp_path, monkeypatch):
    path, X, _ = store
    old = _model("full", max_iter=1).fit(X)
    new = _model("full").fit(X)
    out = tmp_path / "pred.zarr"
    write_predictions(old, str(path / "X"), out, labels=False, log_density=True)
    _fail_on_third_block(monkeypatch)
    with pytest.raises(RuntimeError, match="injected failure"):
        write_predictions(new, str(path / "X"), out, proba=True, overwrite=True)
    kept = zarr.open_group(str(out), mode="r")
    assert sorted(kept.array_keys()) == ["log_density"]
    assert_array_equal(kept["log_density"][:], old.score_samples(X))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr", "pred.zarr"]


def test_existing_store_needs_overwrite(store, tmp_path, monkeypatch):
    path, X, _ = store
    gm = _model("full").fit(X)
    out = tmp_path / "pred.zarr"
    write_predictions(gm, X, out)
    calls = _fail_on_third_block(monkeypatch)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_predictions(gm, X, out, log_density=True)
    assert calls[0] == 0  # refused before any work
    monkeypatch.undo()
    group = write_predictions(gm, X, out, labels=False, log_density=True, overwrite=True)
    assert sorted(group.array_keys()) == ["log_density"]


def test_write_predictions_rejects_bad_requests(store, tmp_path):
    X = store[1]
    gm = _model("full").fit(X)
    with pytest.raises(ValueError, match="Nothing to write"):
        write_predictions(gm, X, tmp_path / "a.zarr", labels=False)
    with pytest.raises(ValueError, match="features"):
        write_predictions(gm, X[:, :2], tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="directory .* does not exist"):
        write_predictions(gm, X, tmp_path / "no" / "a.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr"]


# --------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_save_load_round_trip(store, tmp_path, covariance_type):
    X, truth = store[1], store[2]
    gm = _model(covariance_type, means_init=truth.means, max_iter=3).fit(X)
    gm.save(tmp_path / "model.npz")
    loaded = dgmm.load(tmp_path / "model.npz")
    assert type(loaded) is GaussianMixture
    params, loaded_params = gm.get_params(), loaded.get_params()
    assert_array_equal(loaded_params.pop("means_init"), params.pop("means_init"))
    assert loaded_params == params
    fitted = {k: v for k, v in vars(gm).items() if k.endswith("_")}
    assert set(fitted) == {k for k in vars(loaded) if k.endswith("_")}
    for name, value in fitted.items():
        got = getattr(loaded, name)
        assert type(got) is type(value), name
        assert_array_equal(got, value)
    assert_array_equal(loaded.predict_proba(X), gm.predict_proba(X))
    assert_array_equal(loaded.score_samples(X), gm.score_samples(X))


def test_model_file_format_is_documented_npz(store, tmp_path):
    gm = _model("diag").fit(store[1])
    gm.save(tmp_path / "m")  # no suffix added
    with np.load(tmp_path / "m", allow_pickle=False) as npz:
        meta = json.loads(str(npz["metadata.json"]))
        assert_array_equal(npz["fitted/means_"], gm.means_)
    assert meta["format"] == "dgmm-model" and meta["schema_version"] == 1
    assert meta["dgmm_version"] == dgmm.__version__
    assert meta["covariance_type"] == "diag" and meta["params"]["n_components"] == NK
    assert meta["fitted"]["lower_bounds_"] == "list" and meta["fitted"]["converged_"] == "bool"


def test_extra_fitted_state_round_trips(store, tmp_path):
    gm = _model("full").fit(store[1])
    gm.running_nk_ = np.arange(3.0)
    gm.n_steps_ = 7
    gm.save(tmp_path / "m.npz")
    loaded = dgmm.load(tmp_path / "m.npz")
    assert_array_equal(loaded.running_nk_, gm.running_nk_) and loaded.n_steps_ == 7
    gm.bad_ = {"a": 1}
    with pytest.raises(TypeError, match="bad_"):
        gm.save(tmp_path / "m2.npz")
    assert not (tmp_path / "m2.npz").exists()


def test_save_refuses_unfitted_and_warns_on_generator(tmp_path, store):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        GaussianMixture().save(tmp_path / "m.npz")
    gm = _model("full", random_state=np.random.RandomState(0)).fit(store[1])
    with pytest.warns(UserWarning, match="random_state"):
        gm.save(tmp_path / "m.npz")
    assert dgmm.load(tmp_path / "m.npz").random_state is None


def _rewrite(path, edit):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _edit_meta(change):
    def edit(arrays):
        meta = json.loads(str(arrays["metadata.json"]))
        change(meta)
        arrays["metadata.json"] = np.asarray(json.dumps(meta))
    return edit


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
        (lambda p: p.write_bytes(b"not a model"), "is not a dgmm model file"),
        (lambda p: _rewrite(p, lambda a: a.pop("fitted/means_")), "missing field 'fitted/means_'"),
        (lambda p: _rewrite(p, lambda a: a.pop("metadata.json")),
         "not a dgmm model file .an NPZ archive without metadata.json"),
        (lambda p: _rewrite(p, lambda a: a.update({"metadata.json": np.asarray("{")})),
         "not valid JSON"),
        (lambda p: _rewrite(p, _edit_meta(lambda m: m["fitted"].pop("weights_"))),
         "unexpected field"),
        (lambda p: _rewrite(p, _edit_meta(lambda m: m.update(schema_version=99))),
         "schema_version 99"),
        (lambda p: _rewrite(p, _edit_meta(lambda m: m["params"].update(covariance_type="x"))),
         "covariance_type"),
        (lambda p: _rewrite(p, lambda a: a.update({"fitted/means_": np.zeros((2, 2))})),
         "'means_' must have shape"),
        (lambda p: _rewrite(p, lambda a: a.update({"fitted/weights_": np.full(NK, np.nan)})),
         "'weights_' contains NaN"),
        (lambda p: _rewrite(p, lambda a: a.update({"fitted/n_iter_": np.asarray("x")})),
         "'n_iter_' has unexpected kind"),
        (lambda p: _rewrite(p, _edit_meta(lambda m: m["fitted"].update(n_iter_="pickle"))),
         "'n_iter_' has unexpected kind"),
    ],
    ids=["truncated", "garbage", "no-means", "no-metadata", "bad-json", "unlisted",
         "schema", "bad-param", "shape", "nan", "dtype", "kind"],
)
def test_damaged_model_file_raises_clear_error(store, tmp_path, damage, message):
    path = tmp_path / "model.npz"
    _model("full").fit(store[1]).save(path)
    damage(path)
    with pytest.raises(ValueError, match=message) as info:
        dgmm.load(path)
    assert str(path) in str(info.value)


def test_flipped_byte_is_detected(store, tmp_path):
    path = tmp_path / "model.npz"
    _model("full").fit(store[1]).save(path)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("fitted/means_.npy")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + info.file_size - 1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"{path}.*'fitted/means_' is corrupt"):
        dgmm.load(path)


def test_object_array_is_never_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        np.savez(f, **{"metadata.json": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="'metadata.json' is corrupt or holds Python") as info:
        dgmm.load(path)
    assert "pickle" not in str(info.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(ValueError, match=f"not found: {tmp_path / 'none.npz'}"):
        dgmm.load(tmp_path / "none.npz")


def test_save_replaces_atomically(store, tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    first = _model("full", max_iter=1).fit(store[1])
    first.save(path)

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        _model("full").fit(store[1]).save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr", "m.npz"]
    assert_array_equal(dgmm.load(path).means_, first.means_)


def test_default_scheduler_gets_one_blas_thread_per_task():
    from threadpoolctl import threadpool_info

    from dgmm._passes import blas_guard

    with dask.config.set(scheduler=None), blas_guard(None):
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_checkpoint_resume_equals_uninterrupted(tmp_path, covariance_type):
    rng = np.random.default_rng(0)
    X = da.from_array(np.vstack([rng.normal(m, 1, (700, 3)) for m in (-4, 0, 4)]), chunks=500)
    kw = dict(covariance_type=covariance_type, n_init=2, tol=0, max_iter=9, random_state=3)
    straight = GaussianMixture(3, **kw).fit(X)

    class Killed(Exception):
        pass

    def die_after_four(info):
        if info["iteration"] == 4:
            raise Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        GaussianMixture(3, **kw).fit(X, checkpoint=ckpt, callback=die_after_four)
    assert dgmm.io.has_checkpoint(ckpt)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        GaussianMixture(3, **kw).fit(X, checkpoint=ckpt)
    seen = []
    resumed = GaussianMixture(3, **kw).fit(X, checkpoint=ckpt, resume=True, callback=seen.append)
    assert [s["iteration"] for s in seen] == [5, 6, 7, 8, 9]
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(resumed, attr), getattr(straight, attr), rtol=1e-12)
    assert resumed.lower_bounds_ == straight.lower_bounds_
    assert resumed.n_iter_ == straight.n_iter_ == 9
    with pytest.raises(ValueError, match="different settings"):
        GaussianMixture(3, **dict(kw, reg_covar=1e-3)).fit(X, checkpoint=ckpt, resume=True)
    with pytest.raises(ValueError, match="the data changed since it was written"):
        GaussianMixture(3, **kw).fit(X + 1.0, checkpoint=ckpt, resume=True)


# ---------------------------------------------------------------- output paths


def _precious(directory):
    """A directory of someone's files, and its digest."""
    directory.mkdir()
    (directory / "notes.txt").write_text("precious")
    (directory / "sub").mkdir()
    (directory / "sub" / "data.bin").write_bytes(bytes(range(256)))
    return tree_digest(directory)


def test_check_output_path_compares_real_paths(store, tmp_path):
    path = store[0]
    (tmp_path / "link.zarr").symlink_to(path)
    for out, source, relation in [
        (path, path / "X", "is"),
        (tmp_path / "link.zarr", str(path), "is"),
        (tmp_path / "x" / ".." / "data.zarr", open_array(path, "X"), "is"),
        (path / "pred.zarr", str(path / "X"), "lies inside"),
        (tmp_path / "link.zarr" / "m.npz", str(path), "lies inside"),
        (tmp_path, str(path / "X"), "contains"),
    ]:
        (tmp_path / "x").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match=f"{out} {relation} the input"):
            check_output_path(out, [source], overwrite=True, kind="store")
    assert check_output_path(tmp_path / "m.npz", [str(path)], overwrite=False) == (
        tmp_path / "m.npz")
    check_output_path(tmp_path / "m.npz", [np.zeros((2, 2)), "s3://bucket/x.zarr"],
                      overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr", "link.zarr", "x"]


@pytest.mark.parametrize("where", ["equal", "inside"])
@pytest.mark.parametrize("source_kind", ["path", "zarr"])
def test_write_predictions_never_writes_into_its_input(store, tmp_path, where, source_kind):
    path, X, _ = store
    gm = _model("full", max_iter=1).fit(X)
    before = tree_digest(path)
    source = str(path / "X") if source_kind == "path" else open_array(path, "X")
    out = path if where == "equal" else path / "pred.zarr"
    relation = "is" if where == "equal" else "lies inside"
    with pytest.raises(ValueError, match=f"{relation} the input"):
        write_predictions(gm, source, out, overwrite=True)
    assert tree_digest(path) == before


def test_write_predictions_replaces_only_stores_dgmm_wrote(store, tmp_path):
    path, X, _ = store
    gm = _model("full", max_iter=1).fit(X)
    foreign = tmp_path / "mine"
    before = _precious(foreign)
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("a", data=np.arange(3))
    plain_before = tree_digest(tmp_path / "plain.zarr")
    for out in (foreign, tmp_path / "plain.zarr"):
        with pytest.raises(ValueError, match="is not a Zarr store written by dgmm"):
            write_predictions(gm, X, out, overwrite=True)
    assert tree_digest(foreign) == before
    assert tree_digest(tmp_path / "plain.zarr") == plain_before
    write_predictions(gm, X, tmp_path / "pred.zarr")
    again = write_predictions(gm, X, tmp_path / "pred.zarr", labels=False, proba=True,
                              overwrite=True)
    assert sorted(again.array_keys()) == ["proba"]


def test_save_never_replaces_a_directory(store, tmp_path):
    gm = _model("full", max_iter=1).fit(store[1])
    victim = tmp_path / "models"
    before = _precious(victim)
    with pytest.raises(IsADirectoryError,
                       match="is a directory; a model file is never written over a directory"):
        gm.save(victim)
    assert tree_digest(victim) == before
    gm.save(tmp_path / "m.npz")
    with pytest.raises(FileExistsError):
        gm.save(tmp_path / "m.npz", overwrite=False)
    gm.save(tmp_path / "m.npz")  # an existing file is replaced, as scikit-learn users expect
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr", "m.npz", "models"]


def test_checkpoint_never_inside_the_input_or_over_foreign_files(store, tmp_path):
    path = store[0]
    before = tree_digest(path)
    gm = _model("diag", max_iter=2)
    with pytest.raises(ValueError, match="lies inside the input"):
        gm.fit(str(path / "X"), checkpoint=path / "ckpt")
    with pytest.raises(ValueError, match="lies inside the input"):
        gm.fit(open_array(path, "X"), checkpoint=path / "X" / "ckpt", resume=True)
    assert tree_digest(path) == before
    foreign = tmp_path / "ckpt"
    foreign_before = _precious(foreign)
    with pytest.raises(ValueError, match="is not a dgmm checkpoint directory"):
        gm.fit(str(path / "X"), checkpoint=foreign, resume=True)
    assert tree_digest(foreign) == foreign_before
    (tmp_path / "empty").mkdir()  # an empty directory holds nothing to lose
    gm.fit(str(path / "X"), checkpoint=tmp_path / "empty")
    assert dgmm.io.has_checkpoint(tmp_path / "empty")


def test_resuming_a_finished_checkpoint_does_no_pass(store, tmp_path, monkeypatch):
    path = store[0]
    kw = dict(max_iter=50, tol=1e-3)
    done = _model("diag", **kw).fit(str(path / "X"), checkpoint=tmp_path / "ckpt")
    assert done.converged_
    calls = []
    monkeypatch.setattr(dgmm._em, "estep_pass", lambda *a, **k: calls.append(1))
    again = _model("diag", **kw).fit(str(path / "X"), checkpoint=tmp_path / "ckpt", resume=True)
    assert calls == []
    _assert_same_fit(again, done, rtol=0)


@pytest.fixture
def read_only_dir(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    if os.access(directory, os.W_OK):  # root ignores permissions
        directory.chmod(0o700)
        pytest.skip("running with permissions that ignore a read-only directory")
    yield directory
    directory.chmod(0o700)


def test_unwritable_directory_fails_before_the_pass(store, read_only_dir, monkeypatch):
    X = store[1]
    gm = _model("full", max_iter=1).fit(X)
    calls = _fail_on_third_block(monkeypatch)
    with pytest.raises(PermissionError, match=f"directory {read_only_dir} is not writable"):
        write_predictions(gm, X, read_only_dir / "pred.zarr")
    assert calls[0] == 0
    with pytest.raises(PermissionError, match="is not writable"):
        gm.save(read_only_dir / "m.npz")
    assert list(read_only_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.txt", b"hello\n"),
        ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
        ("model.pkl", pickle.dumps({"weights_": [1.0]})),
        ("array.npy", None),
        ("plain.npz", None),
    ],
)
def test_non_model_files_are_named_as_such(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    elif name.endswith(".npy"):
        np.save(path, np.arange(3))
    else:
        np.savez(path, a=np.arange(3))
    with pytest.raises(ValueError, match=f"{path} is not a dgmm model file") as info:
        dgmm.load(path)
    assert "pickle" not in str(info.value)
    with pytest.raises(ValueError, match=f"{tmp_path} is not a dgmm model file .it is a dir"):
        dgmm.load(tmp_path)


def test_unwritable_directory_is_found_by_a_probe(store, tmp_path, monkeypatch):
    """The same refusal where permissions cannot be taken away (as root)."""
    X = store[1]
    gm = _model("full", max_iter=1).fit(X)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dgmm.io.tempfile, "mkstemp", refuse)
    calls = _fail_on_third_block(monkeypatch)
    with pytest.raises(PermissionError, match=r"not writable \(Permission denied\)"):
        write_predictions(gm, X, tmp_path / "pred.zarr")
    assert calls[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr"]
