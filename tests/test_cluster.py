"""dgmm on real Dask clusters: configs, connect(), multi-process fits, a worker killed mid-fit.

The multi-process tests start a real ``dask scheduler`` and ``dask worker``
processes on 127.0.0.1 (random free ports, no dashboards) and tear them down by
their PIDs. Data come from a Zarr store on local disk, so a lost worker's tasks
can be recomputed from it.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import yaml
import zarr
from distributed import Client, get_task_stream
from distributed.core import Status
from sklearn.exceptions import ConvergenceWarning

from dgmm import GaussianMixture, _passes
from dgmm import _kernels as K
from dgmm.cluster import BACKENDS, WORKER_ENVIRON, ConfigError, connect, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "cluster_configs").glob("*.yaml"))
START_TIMEOUT = 60  # seconds for processes to come up on a loaded machine

# Same model and data for every fit that is compared across schedulers.
FIT = dict(n_components=3, covariance_type="full", init_params="random", random_state=0,
           max_iter=4, tol=0.0)


def blobs(n: int, d: int = 4, k: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(k, d))
    return centres[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))


def fit(X) -> GaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0: every iteration runs
        return GaussianMixture(**FIT).fit(X)


def assert_same_fit(a: GaussianMixture, b: GaussianMixture, rtol: float = 1e-9) -> None:
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=0,
                                   err_msg=name)
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=rtol, atol=0)
    assert a.n_iter_ == b.n_iter_


@pytest.fixture(scope="module", autouse=True)
def one_task_per_stored_chunk():
    """Read each 1000-row stored chunk as its own block (dgmm would coalesce them),
    so that a pass has enough tasks to spread over both workers."""
    with dask.config.set({"dgmm.read-chunk-bytes": 1000 * 4 * 8}):
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A Zarr store on local disk: 30 chunks, so a pass keeps both workers busy a while."""
    path = str(tmp_path_factory.mktemp("data") / "x.zarr")
    X = blobs(30_000)
    z = zarr.create_array(path, shape=X.shape, chunks=(1000, X.shape[1]), dtype="f8")
    z[:] = X
    return path


@pytest.fixture(scope="module")
def threaded_fit(store) -> GaussianMixture:
    """The reference: the same fit on the local threaded scheduler."""
    assert dask.config.get("scheduler", None) is None
    return fit(store)


# --------------------------------------------------------------------------
# Real scheduler and worker processes on the loopback interface
# --------------------------------------------------------------------------


def _wait_for(condition, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
            raise TimeoutError(f"{what} did not happen within {START_TIMEOUT}s\n{tails}")
        time.sleep(0.05)


@contextlib.contextmanager
def dask_processes(workdir: Path, n_workers: int = 2):
    """Start ``dask scheduler`` and ``n_workers`` x ``dask worker`` on 127.0.0.1.

    Yields the scheduler address and the workers' ``Popen`` objects (named
    ``w0``, ``w1``, ...). Ports are chosen by the OS (``--port 0``); the
    address comes back through ``--scheduler-file``. Every process is stopped
    by its own PID on exit.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # one BLAS thread per single-threaded worker, as a nanny would set
    # A killed worker whose closed connection the scheduler misses is dropped after this
    # many seconds without a heartbeat (default 5 minutes), so a fault test cannot hang.
    env["DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL"] = "30s"
    scheduler_file = workdir / "scheduler.json"
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        log = workdir / f"{name}.log"
        logs.append(log)
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "dask", *args], env=env,
                                    stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        procs.append(proc)
        return proc

    try:
        start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", str(scheduler_file), "--idle-timeout", "600"])
        _wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0,
                  "the scheduler writing its address", logs)
        time.sleep(0.1)  # let the JSON be flushed completely
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [
            start(f"w{i}", ["worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                            "--no-nanny", "--no-dashboard", "--name", f"w{i}",
                            "--death-timeout", "60", "--local-directory", str(workdir)])
            for i in range(n_workers)
        ]
        with Client(address, timeout=START_TIMEOUT, set_as_default=False) as probe:
            _wait_for(lambda: len(probe.scheduler_info()["workers"]) >= n_workers,
                      f"{n_workers} workers joining", logs)
        yield address, workers
    finally:
        for proc in reversed(procs):  # workers first, while the scheduler still answers
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory):
    with dask_processes(tmp_path_factory.mktemp("cluster")) as (address, _):
        yield address


# --------------------------------------------------------------------------
# Fits through a Client to real processes
# --------------------------------------------------------------------------


def test_fit_on_processes_equals_threaded_fit(scheduler_address, store, threaded_fit):
    with Client(scheduler_address) as client:
        with get_task_stream(client) as stream:
            distributed = fit(store)
        workers = set(client.scheduler_info()["workers"])
    assert {t["worker"] for t in stream.data} == workers  # the fit ran on both workers
    assert_same_fit(distributed, threaded_fit)


def test_persisted_input_on_processes_equals_threaded_fit(scheduler_address, store,
                                                         threaded_fit):
    with Client(scheduler_address):
        X = da.from_zarr(store).persist()  # blocks are futures held by the workers
        assert_same_fit(fit(X), threaded_fit)


def test_weights_labels_and_missing_values_on_processes(scheduler_address, store):
    """Side arrays and NaN rows travel with the blocks to the workers: the same fit."""
    X = np.asarray(zarr.open_array(store, mode="r")[:6000])
    rng = np.random.default_rng(0)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    w = da.from_array(rng.integers(0, 3, len(X)).astype(float), chunks=1500)
    labels = da.from_array(np.where(np.arange(len(X)) % 50 == 0, np.arange(len(X)) % 3, -1),
                           chunks=2000)
    Xd = da.from_array(X, chunks=1000)

    def weighted_fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return GaussianMixture(**FIT, missing="marginalize").fit(Xd, sample_weight=w,
                                                                     labels=labels)

    local = weighted_fit()
    with Client(scheduler_address):
        assert_same_fit(weighted_fit(), local)


def test_numpy_input_stays_local_with_a_client(scheduler_address, store):
    """In-memory input is computed where it lives; only lazy input goes to the cluster."""
    X = zarr.open_array(store, mode="r")[:5000]
    local = fit(X)
    with Client(scheduler_address) as client:
        with get_task_stream(client) as stream:
            with_client = fit(X)
        with get_task_stream(client) as lazy_stream:
            fit(da.from_array(X, chunks=1000))
    assert stream.data == [] and len(lazy_stream.data) > 0
    assert_same_fit(with_client, local, rtol=0)


class WorkerKiller(threading.Thread):
    """SIGKILL a worker as soon as it holds results of the EM pass after ``after_passes``.

    Passes are told apart by the names of their tasks (``dgmm-pass-<token>``),
    seen through the client's public ``has_what``; the first pass of a fit
    with ``init_params='random'`` is the initialisation, so ``after_passes=2``
    kills during the second EM iteration, with results of it lost on the worker.
    """

    def __init__(self, client: Client, proc: subprocess.Popen, address: str, after_passes: int):
        super().__init__(daemon=True)
        self.client, self.proc, self.address, self.after = client, proc, address, after_passes
        self.passes: list[str] = []
        self.killed = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            held = self.client.has_what()
            for keys in held.values():
                for key in keys:  # a pass's task keys are (name, level, index)
                    if isinstance(key, tuple) and key[0].startswith("dgmm-pass-") and (
                        key[0] not in self.passes
                    ):
                        self.passes.append(key[0])
            current = self.passes[self.after:]
            if current and any(
                isinstance(k, tuple) and k[0] == current[0] for k in held.get(self.address, ())
            ):
                os.kill(self.proc.pid, signal.SIGKILL)
                self.killed.set()
                return
            time.sleep(0.002)


def test_worker_killed_mid_fit(tmp_path, store, threaded_fit):
    with dask_processes(tmp_path) as (address, workers), Client(address) as client:
        victim = next(a for a, w in client.scheduler_info()["workers"].items() if w["name"] == "w0")
        killer = WorkerKiller(client, workers[0], victim, after_passes=2)
        killer.start()
        try:
            survived = fit(store)
        finally:
            killer.stop.set()
            killer.join()
        assert killer.killed.is_set(), f"the worker was not killed (passes seen: {killer.passes})"
        assert workers[0].wait(timeout=10) == -signal.SIGKILL
        assert victim not in client.scheduler_info()["workers"]
    assert_same_fit(survived, threaded_fit)


# --------------------------------------------------------------------------
# connect(): addresses, DASK_SCHEDULER_ADDRESS, config files
# --------------------------------------------------------------------------


def test_connect_to_an_address_does_not_own_the_scheduler(scheduler_address):
    with connect(scheduler_address) as client:
        assert client.scheduler.address == scheduler_address
        assert dask.base.get_scheduler() == client.get
    with Client(scheduler_address) as again:  # still running after the first client closed
        assert len(again.scheduler_info()["workers"]) == 2


def test_connect_honours_dask_scheduler_address(scheduler_address):
    # DASK_SCHEDULER_ADDRESS lands in the Dask config as scheduler-address
    settings = {"scheduler-address": scheduler_address, "dgmm.cluster.config": None}
    with dask.config.set(settings), connect() as client:
        assert client.scheduler.address == scheduler_address


def test_connect_with_address_config(scheduler_address, tmp_path, store, threaded_fit):
    text = (REPO / "cluster_configs" / "address.yaml").read_text()
    config = tmp_path / "address.yaml"
    config.write_text(text.replace("tcp://scheduler.example.org:8786", scheduler_address))
    with dask.config.set({"dgmm.cluster.config": str(config)}), connect() as client:
        assert client.scheduler.address == scheduler_address
        assert_same_fit(fit(store), threaded_fit)


def test_local_config_starts_and_stops_a_cluster():
    config = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    config["cluster"]["dashboard-address"] = "127.0.0.1:0"  # loopback only, any free port
    X = da.from_array(blobs(4000), chunks=1000)
    with connect(config) as client:
        cluster = client.cluster
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert len(client.scheduler_info()["workers"]) >= 1
        for name, value in WORKER_ENVIRON.items():
            assert set(client.run(os.environ.get, name).values()) == {value}
        on_cluster = fit(X)
        # With that environment, E-step work arrays reuse memory instead of
        # being mapped and zeroed afresh (about 20,000 page faults per chunk).
        big = da.random.default_rng(0).normal(size=(250_000, 16), chunks=(62_500, 16))
        blocks = _passes.as_blocks(big.persist())
        params = [_params(16, k=8)]
        _passes.estep_pass(blocks, params)
        before = client.run(_page_faults)
        _passes.estep_pass(blocks, [replace(params[0], means=params[0].means + 1.0)])
        after = client.run(_page_faults)
        assert sum(after.values()) - sum(before.values()) < 4_000
    assert cluster.status == Status.closed
    assert client.status == "closed"
    assert_same_fit(on_cluster, fit(X))


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_connect_without_config_starts_the_embedded_local_default(monkeypatch):
    started = []
    monkeypatch.setattr("dgmm.cluster.ClusterConfig.connect", lambda self: started.append(self))
    with dask.config.set({"scheduler-address": None, "dgmm.cluster.config": None}):
        connect()
    assert [(c.backend, c.cluster, c.worker_environ) for c in started] == [
        ("local", {}, WORKER_ENVIRON)
    ]


# --------------------------------------------------------------------------
# Config files: every shipped file, and the errors users will meet
# --------------------------------------------------------------------------


def test_every_backend_has_a_shipped_config():
    assert {load_config(p).backend for p in CONFIGS} == set(BACKENDS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_valid(path):
    config = load_config(path)
    assert config.source == str(path)
    spec = BACKENDS[config.backend]
    assert set(spec.required) <= set(config.cluster)


def _parameters(*callables) -> set[str]:
    return {name for c in callables for name in inspect.signature(c).parameters}


def test_schema_keys_are_real_keyword_arguments():
    """Every key the schema accepts is a keyword of the class it is passed to."""
    from distributed import LocalCluster, Nanny, SSHCluster

    accepted = {"local": _parameters(LocalCluster, Nanny), "ssh": _parameters(SSHCluster)}
    with contextlib.suppress(ImportError):
        from dask_jobqueue import PBSCluster, SLURMCluster
        from dask_jobqueue.core import Job
        from dask_jobqueue.pbs import PBSJob
        from dask_jobqueue.slurm import SLURMJob

        accepted["slurm"] = _parameters(SLURMCluster, SLURMJob, Job)
        accepted["pbs"] = _parameters(PBSCluster, PBSJob, Job)
    with contextlib.suppress(ImportError):
        from dask_kubernetes.operator import KubeCluster

        accepted["kubernetes"] = _parameters(KubeCluster)
    assert {"local", "ssh"} <= set(accepted)
    for backend, names in accepted.items():
        assert set(BACKENDS[backend].keys) <= names, backend


@pytest.mark.parametrize("name,directives", [
    ("slurm.yaml", ["#SBATCH -p compute", "#SBATCH --cpus-per-task=8", "#SBATCH -t 02:00:00"]),
    ("pbs.yaml", ["#PBS -q workq", "#PBS -l walltime=02:00:00", "#PBS -j oe"]),
])
def test_jobqueue_configs_build_job_scripts(name, directives):
    pytest.importorskip("dask_jobqueue")
    config = load_config(REPO / "cluster_configs" / name)
    # Only the scheduler starts (bound to loopback); no job is submitted.
    loopback = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    cluster = config.make_cluster(scheduler_options=loopback)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in [*directives, *config.cluster["job_script_prologue"]]:
        assert line in script
    assert "distributed.cli.dask_worker tcp://127.0.0.1:" in script
    assert "--nthreads 8" in script and "--nworkers 1" not in script


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,message", [
    ("backend: slurm\ncluster: {cores: 4, memory: 8GiB, corse: 2}\n",
     r"unknown key 'cluster.corse' for backend 'slurm' \(did you mean 'cores'\?\)"),
    ("backend: local\nworkers: 2\n", r"unknown key 'workers' for backend 'local'"),
    ("backend: local\nscale: 2\n", r"unknown key 'scale' for backend 'local'"),
    ("backend: slurm\ncluster: {cores: 1, memory: 1GiB}\nworker-environ: {A: 1}\n",
     r"unknown key 'worker-environ' for backend 'slurm'"),
    ("backend: pbs\ncluster: {cores: 4}\n", r"missing required key 'cluster.memory'"),
    ("backend: address\n", r"missing required key 'address'"),
    ("backend: kubernetes\ncluster: {name: x}\n", r"missing required key 'cluster.image'"),
    ("backend: local\ncluster: {n-workers: two}\n", r"'cluster.n-workers' must be an integer"),
    ("backend: local\ncluster: {processes: 1}\n", r"'cluster.processes' must be true or false"),
    ("backend: slurm\ncluster: {cores: true, memory: 1GiB}\n", r"'cluster.cores' must be"),
    ("backend: yarn\n", r"'backend' must be one of"),
    ("[1, 2]\n", r"must be a mapping"),
    ("backend: local\ncluster: [1]\n", r"'cluster' must be a mapping"),
    ("backend: slurm\ncluster: {cores: 1, memory: 1GiB}\nscale: 2\nadapt: {maximum: 4}\n",
     r"either 'scale' or 'adapt'"),
    ("backend: slurm\ncluster: {cores: 1, memory: 1GiB}\nadapt: {max: 4}\n",
     r"unknown key 'adapt.max'.*did you mean 'maximum'"),
    ("backend: ssh\ncluster: {hosts: [a]}\n", r"at least two entries"),
    ("backend: address\naddress: tls://h:1\ntls: {cert: c.pem}\n", r"'tls.ca-file'"),
    ("backend: address\naddress: tls://h:1\ntls: {ca-file: /nope/ca.pem, cert: /nope/c.pem}\n",
     r"'tls.ca-file' file not found: /nope/ca.pem"),
    ("backend: local\nwait-for-workers: -1\n", r"'wait-for-workers' must be >= 0"),
    ("backend: local\ncluster: {n-workers: 1, n_workers: 2}\n", r"given twice"),
    ("backend: local\ncluster: {n-workers: [1\n", r"not valid YAML"),
])
def test_invalid_config_names_key_and_file(tmp_path, text, message):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_dashes_underscores_and_nulls(tmp_path):
    path = write_yaml(tmp_path, "backend: local\ncluster:\n  n_workers: 1\n"
                                "  threads-per-worker: null\n  memory-limit: 1GiB\n"
                                "worker_environ: null\n")
    config = load_config(path)
    assert config.cluster == {"n_workers": 1, "memory_limit": "1GiB"}
    assert config.worker_environ == WORKER_ENVIRON
    assert load_config({"backend": "ssh", "cluster": {"hosts": ["a", "b"]},
                        "worker-environ": {}}).worker_environ == {}


def test_tls_paths_become_a_security_object(tmp_path):
    for name in ("ca.pem", "cert.pem"):
        (tmp_path / name).write_text("")
    config = load_config({"backend": "address", "address": "tls://127.0.0.1:1",
                          "tls": {"ca-file": str(tmp_path / "ca.pem"),
                                  "cert": str(tmp_path / "cert.pem")}})
    security = config.security()
    assert security.require_encryption
    assert security.tls_ca_file == str(tmp_path / "ca.pem")
    assert security.tls_client_cert == str(tmp_path / "cert.pem")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cluster config file not found: .*nope.yaml"):
        connect(tmp_path / "nope.yaml")


@pytest.mark.parametrize("backend,module,extra", [
    ("slurm", "dask_jobqueue", "slurm"),
    ("pbs", "dask_jobqueue", "pbs"),
    ("kubernetes", "dask_kubernetes", "kubernetes"),
    ("ssh", "asyncssh", "ssh"),
])
def test_missing_extra_names_it(monkeypatch, backend, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    config = load_config(next(p for p in CONFIGS if load_config(p).backend == backend))
    with pytest.raises(ImportError, match=rf'pip install "dgmm\[{extra}\]"') as info:
        config.connect()
    assert config.source in str(info.value)


# --------------------------------------------------------------------------
# Graph hygiene: one parameter key, a tree, O(n_chunks) tasks, small results
# --------------------------------------------------------------------------


def _params(d: int, k: int = 2) -> K.Params:
    return K.Params("full", np.full(k, 1.0 / k), np.arange(k * d, dtype=float).reshape(k, d),
                    np.stack([np.eye(d)] * k))


def _tree_tasks(n: int, split_every: int = 8) -> int:
    """Combine tasks of a tree of fan-in ``split_every`` over ``n`` parts."""
    total = 0
    while n > 1:
        n = -(-n // split_every)
        total += n
    return total


def test_fit_with_10000_chunks():
    X = np.random.default_rng(0).normal(size=(10_000, 2))
    Xd = da.from_array(X, chunks=(1, 2))
    blocks = _passes.as_blocks(Xd)
    params = [_params(2)]
    n = len(blocks.keys)
    assert n == 10_000
    # A whole pass fuses the tiny chunks into a few tasks ...
    fused = dict(_passes.pass_graph(blocks, _passes._estep_block, (params, False))
                 .__dask_graph__())
    fused_tasks = {k: v for k, v in fused.items() if k not in blocks.graph}
    m = len(blocks.tasks())
    assert m == _passes.MIN_TASKS
    assert len(fused_tasks) == m + _tree_tasks(m) + 1
    # ... and a pass over pieces (a minibatch of every block) keeps one task per chunk,
    # its read fused in, a tree of fan-in 8 and one parameter key, built in seconds.
    pieces = [(b, 0, None) for b in range(n)]
    t0 = time.perf_counter()
    graph = dict(_passes.pass_graph(blocks, _passes._estep_block, (params, False),
                                    pieces=pieces).__dask_graph__())
    build = time.perf_counter() - t0
    tasks = {k: v for k, v in graph.items() if k not in blocks.graph}
    assert len(tasks) == n + _tree_tasks(n) + 1
    holding = [k for k, v in tasks.items() if isinstance(v, dask.task_spec.DataNode)]
    assert len(holding) == 1 and tasks[holding[0]].value == (params, False)
    assert max(len(v.dependencies) for v in tasks.values()) <= 8
    assert build < 5.0, f"building the graph of one pass took {build:.1f}s"

    init = {"weights_init": [0.5, 0.5], "means_init": [[-1.0, 0.0], [1.0, 0.0]],
            "precisions_init": [1.0, 1.0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        chunked = GaussianMixture(2, covariance_type="spherical", max_iter=1, **init).fit(Xd)
        whole = GaussianMixture(2, covariance_type="spherical", max_iter=1, **init).fit(X)
    assert_same_fit(chunked, whole, rtol=1e-10)


def test_split_every_from_dask_config():
    blocks = _passes.as_blocks(da.ones((100, 2), chunks=(1, 2)))
    with dask.config.set({"dgmm.split-every": 3}):
        graph = _passes.pass_graph(blocks, _passes._estep_block, ([_params(2)],))
        graph = dict(graph.__dask_graph__())
    fan_in = [len(v.dependencies) for k, v in graph.items() if isinstance(k, tuple)
              and k[0].startswith("dgmm-pass") and k[1] > 0]
    assert max(fan_in) == 3
    with dask.config.set({"dgmm.split-every": 1}), pytest.raises(ValueError, match="split-every"):
        _passes.pass_graph(blocks, _passes._estep_block, ([_params(2)],))


def test_pass_result_size_does_not_grow_with_rows():
    params = [_params(4, k=3)]
    sizes = []
    for n in (1_000, 100_000):
        blocks = _passes.as_blocks(da.from_array(blobs(n), chunks=(500, 4)))
        sizes.append(len(pickle.dumps(_passes.estep_pass(blocks, params, scheduler="sync"))))
    assert abs(sizes[1] - sizes[0]) <= 8 and max(sizes) < 3_000  # only n_rows's width differs

