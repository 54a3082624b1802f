"""Deployment: a ``distributed.Client`` from a cluster config file or an address.

dgmm itself never starts a cluster: a fit computes on the active
``distributed.Client`` when there is one, and on local threads otherwise. This
module is the one place that starts clusters, and only when asked::

    from dgmm.cluster import connect
    with connect("cluster_configs/slurm.yaml") as client:
        GaussianMixture(8).fit("data.zarr")   # runs on the SLURM workers
    # leaving the block closes the client and shuts the cluster down

A config file is YAML with a ``backend`` and that back-end's settings (the
ready-made, commented files in ``cluster_configs/`` document every field)::

    backend: slurm              # local | address | slurm | pbs | kubernetes | ssh
    cluster:                    # keyword arguments of the back-end's cluster class
      cores: 8
      memory: 32GiB
    scale: 4                    # workers to start (slurm, pbs, kubernetes)
    wait-for-workers: 1         # block until this many workers have joined

Keys may be written with dashes or underscores. A null value means "use the
back-end's default" (for dask-jobqueue that includes its own ``jobqueue.*``
Dask config). Unknown keys, values of the wrong type and missing required
fields raise :class:`ConfigError` naming the key and the file.

Dask config (read at call time; set in YAML or as ``DGMM__CLUSTER__CONFIG``):

``dgmm.cluster.config``
    Config file or scheduler address that ``connect()`` uses when called
    without one.

The back-ends other than ``local`` and ``address`` need optional extras:
``pip install "dgmm[slurm]"`` (or ``pbs``, ``kubernetes``, ``ssh``). Workers
of every remote back-end must be able to import the same version of dgmm.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import yaml
from distributed import Client

__all__ = ["ClusterConfig", "ConfigError", "connect", "load_config"]


class ConfigError(ValueError):
    """A cluster config that cannot be used: the message names the key and the file."""


# --------------------------------------------------------------------------
# Schema.  Value types are checked before anything is imported or started;
# nested mappings (scheduler options, Kubernetes resources, ...) are passed
# through to the back-end untouched.
# --------------------------------------------------------------------------

INT, STR, BOOL = (int,), (str,), (bool,)
LIST, MAP = (list,), (dict,)
SIZE = (str, int)  # "4GiB" or a number of bytes

LOCAL_KEYS = {
    "n_workers": INT,
    "threads_per_worker": INT,
    "processes": BOOL,
    "memory_limit": (str, int, float),
    "dashboard_address": STR,
    "host": STR,
    "scheduler_port": INT,
    "local_directory": STR,
}

JOBQUEUE_KEYS = {
    "cores": INT,
    "memory": SIZE,
    "processes": INT,
    "queue": STR,
    "account": STR,
    "walltime": STR,
    "job_name": STR,
    "interface": STR,
    "local_directory": STR,
    "log_directory": STR,
    "shared_temp_directory": STR,
    "python": STR,
    "shebang": STR,
    "death_timeout": (int, str),
    "job_extra_directives": LIST,
    "job_directives_skip": LIST,
    "job_script_prologue": LIST,
    "worker_extra_args": LIST,
    "nanny": BOOL,
    "scheduler_options": MAP,
}

KUBERNETES_KEYS = {
    "name": STR,
    "namespace": STR,
    "image": STR,
    "n_workers": INT,
    "resources": MAP,
    "env": (dict, list),
    "worker_command": (str, list),
    "port_forward_cluster_ip": BOOL,
    "shutdown_on_close": BOOL,
    "idle_timeout": INT,
    "resource_timeout": INT,
    "scheduler_service_type": STR,
    "custom_cluster_spec": (str, dict),
}

SSH_KEYS = {
    "hosts": LIST,
    "connect_options": (dict, list),
    "worker_options": MAP,
    "scheduler_options": MAP,
    "worker_class": STR,
    "remote_python": (str, list),
}


@dataclass(frozen=True)
class _Backend:
    """How to start one kind of cluster."""

    target: str  # "module:attribute" of the cluster class (or factory)
    keys: dict[str, tuple[type, ...]] = field(default_factory=dict)  # under ``cluster:``
    required: tuple[str, ...] = ()
    scalable: bool = False  # accepts ``scale`` / ``adapt``
    extra: str | None = None  # pip extra that provides ``needs``
    needs: str | None = None  # module whose absence means the extra is missing


BACKENDS = {
    "local": _Backend("distributed:LocalCluster", LOCAL_KEYS),
    "address": _Backend(""),
    "slurm": _Backend(
        "dask_jobqueue:SLURMCluster",
        {**JOBQUEUE_KEYS, "job_cpu": INT, "job_mem": STR},
        required=("cores", "memory"),
        scalable=True,
        extra="slurm",
        needs="dask_jobqueue",
    ),
    "pbs": _Backend(
        "dask_jobqueue:PBSCluster",
        {**JOBQUEUE_KEYS, "resource_spec": STR},
        required=("cores", "memory"),
        scalable=True,
        extra="pbs",
        needs="dask_jobqueue",
    ),
    # The default Dask image lacks dgmm, so the image is required.
    "kubernetes": _Backend(
        "dask_kubernetes.operator:KubeCluster",
        KUBERNETES_KEYS,
        required=("image",),
        scalable=True,
        extra="kubernetes",
        needs="dask_kubernetes",
    ),
    "ssh": _Backend(
        "distributed:SSHCluster", SSH_KEYS, required=("hosts",), extra="ssh", needs="asyncssh"
    ),
}

TOP_KEYS = {"backend": STR, "wait_for_workers": INT}
ADDRESS_KEYS = {"address": STR, "tls": MAP}
# Back-ends whose worker processes are started by nannies that take this
# process's Dask config: local ones, and SSH ones (which inherit it).
ENVIRON_KEYS = {"worker_environ": MAP}
ENVIRON_BACKENDS = ("local", "ssh")
CLUSTER_TOP_KEYS = {"cluster": MAP}
SCALE_KEYS = {"scale": INT, "adapt": MAP}
ADAPT_KEYS = {"minimum": INT, "maximum": INT}
TLS_KEYS = {"ca_file": STR, "cert": STR, "key": STR}

# Worker environment of the local and SSH back-ends unless a config says otherwise.
# Dask's nanny sets MALLOC_TRIM_THRESHOLD_ to hand freed memory back to the OS,
# which also switches off glibc's adaptive mmap threshold: every E-step work
# array above 128 KiB then becomes a fresh mmap, and a task thread's arena is
# shrunk and regrown around each one, all zeroed page by page (measured: 340,000
# page faults and 2x the time per pass over 1e6 x 16 rows, K=8). A fixed mmap
# threshold and 8 MiB of top padding per arena bring that to ~100 faults while
# memory is still trimmed.
WORKER_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TOP_PAD_": "8388608"}


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", bool: "true or false", float: "a number",
             list: "a list", dict: "a mapping"}
    return " or ".join(names[t] for t in types)


def _type_ok(value, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # YAML true/false must not pass for an integer
        return bool in types
    return isinstance(value, types)


def _validated(section: Mapping, schema: dict, where: str, source: str, prefix: str = "",
               required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``section`` with canonical (underscore) keys, nulls dropped, checked against ``schema``."""
    out: dict[str, Any] = {}
    for raw, value in section.items():
        key = str(raw).replace("-", "_")
        if key not in schema:
            near = difflib.get_close_matches(key, schema, n=1)
            hint = f" (did you mean {near[0].replace('_', '-')!r}?)" if near else ""
            allowed = ", ".join(k.replace("_", "-") for k in schema)
            raise ConfigError(
                f"{source}: unknown key {prefix + str(raw)!r} {where}{hint}. Allowed: {allowed}"
            )
        if key in out:
            raise ConfigError(f"{source}: key {prefix + str(raw)!r} is given twice")
        if value is None:
            continue
        if not _type_ok(value, schema[key]):
            raise ConfigError(
                f"{source}: {prefix + str(raw)!r} must be {_type_names(schema[key])}; "
                f"got {value!r}"
            )
        out[key] = value
    for key in required:
        if key not in out:
            raise ConfigError(
                f"{source}: missing required key {prefix + key.replace('_', '-')!r} {where}"
            )
    return out


# --------------------------------------------------------------------------
# The validated config
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterConfig:
    """A validated cluster config (see :func:`load_config`).

    Attributes
    ----------
    backend : {'local', 'address', 'slurm', 'pbs', 'kubernetes', 'ssh'}
    source : str
        The file it came from (or ``'<mapping>'``), for messages.
    cluster : dict
        Keyword arguments of the back-end's cluster class, with canonical names.
    address : str or None
        Scheduler address (``address`` back-end).
    tls : dict
        ``ca_file``, ``cert``, ``key`` paths (``address`` back-end, optional).
    scale : int or None
        Number of workers to request after start.
    adapt : dict
        ``minimum`` / ``maximum`` workers for adaptive scaling.
    wait_for_workers : int
        Workers to wait for before returning a client.
    worker_environ : dict
        Environment of the worker processes of the local and SSH back-ends,
        set before they start (default :data:`WORKER_ENVIRON`).
    """

    backend: str
    source: str
    cluster: dict = field(default_factory=dict)
    address: str | None = None
    tls: dict = field(default_factory=dict)
    scale: int | None = None
    adapt: dict = field(default_factory=dict)
    wait_for_workers: int = 0
    worker_environ: dict = field(default_factory=dict)

    def cluster_class(self):
        """The back-end's cluster class, importing its optional extra."""
        spec = BACKENDS[self.backend]
        module, attr = spec.target.split(":")
        try:
            if spec.needs:
                importlib.import_module(spec.needs)
            return getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise ImportError(
                f"The {self.backend!r} back-end (config {self.source}) needs the optional "
                f"extra {spec.extra!r}, which is not installed ({exc}). Install it with: "
                f'pip install "dgmm[{spec.extra}]"'
            ) from exc

    def make_cluster(self, **overrides):
        """Start the cluster this config describes, without scaling it.

        For the batch-queue back-ends this starts only the scheduler (no job is
        submitted), so ``make_cluster().job_script()`` shows what a job would
        run. Not available for the ``address`` back-end.

        Parameters
        ----------
        **overrides
            Replace keyword arguments of the cluster class, e.g. to bind a test
            scheduler to the loopback interface.
        """
        if self.backend == "address":
            raise ValueError("the 'address' back-end connects to a running scheduler; "
                             "there is no cluster to start")
        cls = self.cluster_class()
        # Dask's nannies set these in the environment of each worker process
        # before it starts, which is the only time the C library reads them.
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        environ.update(self.worker_environ)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            return cls(**{**self.cluster, **overrides})

    def security(self):
        """A ``distributed.Security`` for the ``tls`` section, or None."""
        if not self.tls:
            return None
        from distributed.security import Security

        return Security(
            tls_ca_file=self.tls["ca_file"],
            tls_client_cert=self.tls["cert"],
            tls_client_key=self.tls.get("key"),
            require_encryption=True,
        )

    def connect(self) -> Client:
        """A client of this config's cluster; see :func:`connect`."""
        if self.backend == "address":
            client = Client(self.address, security=self.security())
        else:
            cluster = self.make_cluster()
            try:
                if self.scale is not None:
                    cluster.scale(self.scale)
                if self.adapt:
                    cluster.adapt(**self.adapt)
                client = _OwningClient(cluster)
            except BaseException:
                cluster.close()
                raise
        if self.wait_for_workers:
            try:
                client.wait_for_workers(self.wait_for_workers)
            except BaseException:
                client.close()
                raise
        return client


def load_config(config: str | os.PathLike | Mapping) -> ClusterConfig:
    """Read and validate a cluster config without starting anything.

    Parameters
    ----------
    config : str, PathLike or mapping
        A YAML file (see ``cluster_configs/``) or its parsed contents.

    Returns
    -------
    ClusterConfig

    Raises
    ------
    ConfigError
        Unreadable YAML, an unknown key, a value of the wrong type or a
        missing required field; the message names the key and the file.
    """
    if isinstance(config, Mapping):
        source, data = "<mapping>", config
    else:
        source = os.fspath(config)
        if not Path(source).is_file():
            raise ConfigError(f"cluster config file not found: {source}")
        try:
            data = yaml.safe_load(Path(source).read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a cluster config must be a mapping with a 'backend' key")
    backend = data.get("backend")
    if backend not in BACKENDS:
        raise ConfigError(
            f"{source}: 'backend' must be one of {sorted(BACKENDS)}; got {backend!r}"
        )
    spec = BACKENDS[backend]
    schema = dict(TOP_KEYS)
    if backend == "address":
        schema.update(ADDRESS_KEYS)
    else:
        schema.update(CLUSTER_TOP_KEYS)
        if spec.scalable:
            schema.update(SCALE_KEYS)
        if backend in ENVIRON_BACKENDS:
            schema.update(ENVIRON_KEYS)
    where = f"for backend {backend!r}"
    top = _validated(data, schema, where, source,
                     required=("address",) if backend == "address" else ())
    cluster = _validated(top.get("cluster", {}), spec.keys, where, source, "cluster.",
                         spec.required)
    adapt = _validated(top.get("adapt", {}), ADAPT_KEYS, where, source, "adapt.")
    tls = _validated(top.get("tls", {}), TLS_KEYS, where, source, "tls.",
                     ("ca_file", "cert") if "tls" in top else ())
    for key, path in tls.items():
        if not Path(path).is_file():
            raise ConfigError(f"{source}: 'tls.{key.replace('_', '-')}' file not found: {path}")
    if "scale" in top and adapt:
        raise ConfigError(f"{source}: give either 'scale' or 'adapt', not both")
    for key in ("scale", "wait_for_workers"):
        if top.get(key, 0) < 0:
            raise ConfigError(f"{source}: {key.replace('_', '-')!r} must be >= 0")
    if backend == "ssh" and len(cluster["hosts"]) < 2:
        raise ConfigError(
            f"{source}: 'cluster.hosts' needs at least two entries: the scheduler's host "
            "first, then one or more worker hosts (repeat a host to share it)"
        )
    return ClusterConfig(
        backend=backend,
        source=source,
        cluster=cluster,
        address=top.get("address"),
        tls=tls,
        scale=top.get("scale"),
        adapt=adapt,
        wait_for_workers=top.get("wait_for_workers", 0),
        worker_environ={
            str(k): str(v) for k, v in top.get(
                "worker_environ", WORKER_ENVIRON if backend in ENVIRON_BACKENDS else {}
            ).items()
        },
    )


# --------------------------------------------------------------------------
# connect()
# --------------------------------------------------------------------------


class _OwningClient(Client):
    """A Client that shuts its cluster down when it is closed (or leaves a ``with``)."""

    def __init__(self, cluster, **kwargs):
        self._owned_cluster = cluster
        super().__init__(cluster, **kwargs)

    def close(self, timeout=None):
        try:
            return super().close(**({} if timeout is None else {"timeout": timeout}))
        finally:
            cluster, self._owned_cluster = self._owned_cluster, None
            if cluster is not None:
                cluster.close()


# "tcp://host:8786", "tls://[::1]:8786", "host:8786"
_ADDRESS = re.compile(r"(?:[a-z][a-z0-9+]*://)?[\w.\-\[\]:]*:\d+")


def connect(target: str | os.PathLike | Mapping | None = None) -> Client:
    """A ``distributed.Client`` for a cluster config file or a scheduler address.

    The client becomes the default scheduler, so dgmm fits of dask and Zarr
    input run on it. If this call started a cluster, the client owns it:
    closing the client (or leaving its ``with`` block) shuts the cluster down
    too.

    Parameters
    ----------
    target : str, PathLike, mapping or None, default=None
        A YAML cluster config (see ``cluster_configs/`` and :func:`load_config`),
        its parsed contents, or the address of a running scheduler
        (``"tcp://host:8786"``). ``None`` uses, in order: the Dask config
        ``dgmm.cluster.config``, then ``scheduler-address`` (the
        ``DASK_SCHEDULER_ADDRESS`` environment variable), and otherwise starts a
        ``LocalCluster`` with Dask's defaults (what ``cluster_configs/local.yaml``
        spells out).

    Returns
    -------
    distributed.Client

    Raises
    ------
    ConfigError
        The config file is missing or invalid.
    ImportError
        The back-end's optional extra is not installed; the message names it.

    Examples
    --------
    >>> from dgmm.cluster import connect
    >>> with connect({"backend": "local", "cluster": {"n-workers": 1,
    ...                "processes": False, "dashboard-address": None}}) as client:
    ...     n = len(client.scheduler_info()["workers"])
    >>> n
    1
    """
    if target is None:
        target = dask.config.get("dgmm.cluster.config", None) or dask.config.get(
            "scheduler-address", None
        )
    if target is None:
        return load_config({"backend": "local"}).connect()
    if isinstance(target, Mapping):
        return load_config(target).connect()
    text = os.fspath(target)
    if not Path(text).exists() and _ADDRESS.fullmatch(text):
        return Client(text)
    return load_config(text).connect()
