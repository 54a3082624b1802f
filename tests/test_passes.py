"""The Dask orchestration: one pass per iteration, graph shape, shared passes."""

from __future__ import annotations

import zlib

import dask
import dask.array as da
import google_crc32c
import numpy as np
import pytest

from dgmm import _kernels as K
from dgmm import _passes
from tests.helpers import mixture_data, random_params


@pytest.fixture
def blocks():
    X, _, _ = mixture_data(n=2000, d=3, k=3)
    return _passes.as_blocks(da.from_array(X, chunks=(150, 3))), X


def test_pass_equals_in_memory_kernel(blocks):
    blks, X = blocks
    params, _ = random_params("full", 3, 3)
    (st,) = _passes.estep_pass(blks, [params])
    ref = K.estep_stats(X, params)
    np.testing.assert_allclose(st.qk, ref.qk, rtol=1e-10)
    np.testing.assert_allclose(st.loglik, ref.loglik, rtol=1e-12)


def test_several_parameter_sets_share_one_pass(blocks):
    blks, _ = blocks
    sets = [random_params(c, 3, 3, seed=s)[0] for s, c in enumerate(["full", "diag", "tied"])]
    together = _passes.estep_pass(blks, sets)
    for p, st in zip(sets, together, strict=True):
        (alone,) = _passes.estep_pass(blks, [p])
        np.testing.assert_allclose(st.qk, alone.qk, rtol=1e-12)


def test_graph_is_linear_in_chunks_and_parameters_enter_once(monkeypatch):
    import cloudpickle

    X = np.random.default_rng(0).normal(size=(2000, 40))
    blks = _passes.as_blocks(da.from_array(X, chunks=(100, 40)))
    params, _ = random_params("full", 10, 40)  # 16,000 float64 of precisions
    seen = {}

    def capture(*objs, scheduler=None):
        seen["graph"] = dict(objs[0].__dask_graph__())
        return dask.compute(*objs, scheduler="sync")

    monkeypatch.setattr(_passes, "compute", capture)
    _passes.estep_pass(blks, [params])
    graph = seen["graph"]
    n_chunks = len(blks.delayed)
    assert len(graph) < 3 * n_chunks + 10  # blocks + kernels + tree nodes
    # The parameters are serialised once, not once per chunk (20 chunks here).
    params_size = len(cloudpickle.dumps(params))
    data_size = X.nbytes
    graph_size = len(cloudpickle.dumps(graph))
    assert graph_size < data_size + 2 * params_size


def test_tree_combine_keeps_order():
    blks = _passes.as_blocks(da.arange(20, chunks=1)[:, None])
    with dask.config.set({"dgmm.split-every": 3}):
        out = _passes.block_pass(blks, lambda block, offset, index: block[:, 0],
                             combine=lambda *parts: np.concatenate(parts), scheduler="sync")
    np.testing.assert_array_equal(out, np.arange(20))


def test_blas_guard_limits_threads_only_for_local_threads():
    from threadpoolctl import threadpool_info

    with _passes.blas_guard("threads"):
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
    with _passes.blas_guard("sync"):
        pass  # the synchronous scheduler runs one task at a time: nothing to limit


def test_fused_tasks_take_runs_of_small_blocks():
    sizes = [4000, 10, 10, 10, 10, 4000, 10, 3, 10]
    X = da.zeros((sum(sizes), 4), chunks=(tuple(sizes), 4))
    blks = _passes.as_blocks(X)
    # 4 float64 columns: blocks under 32 * 32 bytes = 32 rows count as small
    with dask.config.set({"dgmm.read-chunk-bytes": 32 * 32 * 32}):
        assert blks.tasks() == [(0, 1), (1, 5), (5, 6), (6, 9)]
        # at most a MIN_TASKS-th of the rows (40) per task
        tiny = _passes.as_blocks(da.zeros((640, 4), chunks=(10, 4)))
        assert tiny.tasks() == [(b, b + 4) for b in range(0, 64, 4)]
    with dask.config.set({"dgmm.read-chunk-bytes": 32}):  # nothing is small
        assert blks.tasks() == [(b, b + 1) for b in range(len(sizes))]


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_fused_tiny_blocks_give_the_statistics_of_unfused_ones(covariance_type):
    X, y, _ = mixture_data(n=3000, d=3, k=3)
    rng = np.random.default_rng(1)
    weight = rng.uniform(0.0, 2.0, len(X))
    label = np.where(rng.random(len(X)) < 0.2, y, -1)
    chunks = (37,)
    rows = _passes.RowData(weight=da.from_array(weight, chunks=500),
                           label=da.from_array(label, chunks=chunks),
                           total_weight=float(weight.sum()))
    blks = _passes.as_blocks(da.from_array(X, chunks=(chunks[0], 3)), rows)
    params, _ = random_params(covariance_type, 3, 3)
    ref = K.estep_stats(X, params, sample_weight=weight, label=label)
    with dask.config.set({"dgmm.read-chunk-bytes": 32}):
        assert len(blks.tasks()) == len(blks.keys)
        (unfused,) = _passes.estep_pass(blks, [params])
    # at most 3000 / MIN_TASKS rows a task: 5 blocks of 37 rows, 17 tasks for 82 blocks
    assert blks.tasks()[:2] == [(0, 5), (5, 10)] and len(blks.tasks()) == 17
    (fused,) = _passes.estep_pass(blks, [params])
    graph = dict(_passes.pass_graph(blks, _passes._estep_block, ([params], False))
                 .__dask_graph__())
    kernel_tasks = [key for key in graph if isinstance(key, tuple)
                    and str(key[0]).startswith("dgmm-pass") and key[1] == 0]
    assert len(kernel_tasks) == 17
    for st in (unfused, fused):
        for field in ("nk", "sk", "qk"):
            np.testing.assert_allclose(getattr(st, field), getattr(ref, field), rtol=1e-10)
        np.testing.assert_allclose(st.loglik, ref.loglik, rtol=1e-12)
        assert st.n_rows == len(X)
    assert blks.n_passes == 2  # every block read once per pass, fused or not


@pytest.mark.parametrize("resident", [False, True])
def test_resident_blocks_are_hashed_once_and_ranged_once(monkeypatch, resident):
    X, _, _ = mixture_data(n=2000, d=3, k=3)
    blks = _passes.as_blocks(da.from_array(X, chunks=(500, 3)), resident=resident)
    params, _ = random_params("diag", 3, 3)
    calls = {"crc": 0, "check": 0, "range": 0}
    def counting(key, real):
        def counted(*a):
            calls[key] += 1
            return real(*a)
        return counted

    monkeypatch.setattr(_passes, "_crc", counting("crc", _passes._crc))
    monkeypatch.setattr(_passes, "_check", counting("check", _passes._check))
    monkeypatch.setattr(_passes, "_value_range", counting("range", _passes._value_range))
    first = _passes.estep_pass(blks, [params])[0]
    hashes = blks.block_hashes
    assert calls == {"crc": 4, "check": 4, "range": 4} and None not in hashes
    again = _passes.estep_pass(blks, [params])[0]
    # CRC-32 (the fingerprint) and value ranges only on the first whole pass;
    # the cheaper CRC-32C again unless resident
    assert calls == {"crc": 4, "check": 4 if resident else 8, "range": 4}
    assert blks.block_hashes == hashes
    np.testing.assert_array_equal(again.qk, first.qk)


def test_the_fingerprint_is_the_crc32_of_the_blocks():
    # Checkpoints written before the CRC-32C check hold these values: they must not change.
    X = np.arange(24, dtype=np.float64).reshape(8, 3)
    blks = _passes.as_blocks(da.from_array(X, chunks=(4, 3)))
    _passes.block_pass(blks, lambda rows, offset, index: None, combine=lambda *p: None)
    assert blks.block_hashes == [zlib.crc32(X[:4].tobytes()), zlib.crc32(X[4:].tobytes())]
    assert [blks.seen[b, 0, 4][3] for b in (0, 1)] == [
        google_crc32c.value(X[:4].tobytes()), google_crc32c.value(X[4:].tobytes())]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_fit_on_numpy_input_hashes_its_blocks_once(monkeypatch):
    from dgmm import GaussianMixture

    X, _, _ = mixture_data(n=3000, d=2, k=2)
    seen = []
    real = _passes.Blocks.observe
    monkeypatch.setattr(_passes.Blocks, "observe",
                        lambda self, reads: (seen.append([r[3] for r in reads]),
                                             real(self, reads))[1])
    GaussianMixture(2, max_iter=4, tol=0, random_state=0).fit(X)
    hashed = [all(crc is not None for crc in reads) for reads in seen]
    assert hashed[0] and not any(hashed[-3:])  # the last passes are EM iterations
