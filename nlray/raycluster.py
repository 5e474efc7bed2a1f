"""Joining Ray, and what a job must know about the cluster it joined: how many nodes, which node types
(custom resources) to place work on, and whether the run's paths are reachable from every node."""
from __future__ import annotations

import os
import socket
from typing import Optional

import ray

from nlray import progress
from nlray.config import Config, ConfigError
from nlray.secrets import redact

TRAIN_RESOURCE = "nlray_train"  # carried by the GPU (training) node types of cluster/*.yaml
DECODE_RESOURCE = "nlray_decode"  # carried by the CPU-only decode node types
JOB_WORKING_DIRS = os.path.join("runtime_resources", "working_dir_files")  # Ray's cache of --working-dir
REMOTE_TRACKING = ("http://", "https://", "databricks", "postgresql", "mysql", "mssql")
# A local Ray starts at most min(cores, CPUs) worker processes at once and its raylet warns each time
# 4x, 5x, ... that many exist. A run has more by design (2 Ray Train workers, their controller, decoder and
# scorer actors, Ray Data's and Ray Train's helper actors): on 2 cores the warning came at 8 processes.
# With 8, it comes at 32 (a cluster's nodes keep what `ray start` gives them).
LOCAL_STARTUP_CONCURRENCY = 8


_GIVEN: set[int] = set()  # ports handed out by this process: a node's several ports must differ


def free_port() -> int:
    """A free 127.0.0.1 port this process has not handed out before (the OS may give a just-freed one again:
    a ray start once got the same port for two of its components)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def connect(address: str = "", num_cpus: int = 0, progress_interval_s: Optional[float] = None) -> None:
    """Join ``address`` or the cluster ``ray job submit`` names in RAY_ADDRESS, else start a local Ray.

    Off a terminal, Ray Data's progress comes as one line per ``progress_interval_s`` (``data.
    progress_interval_s``; None: as set before, else 60 s), not as redrawn bars (``nlray.progress``).
    Otherwise a no-op when Ray is already initialised (tests, or a job that connected before).
    """
    progress.for_logs(progress_interval_s)
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        start_local(num_cpus)
    leave_job_working_dir()


def start_local(num_cpus: int = 0) -> None:
    """A local Ray whose processes reach its own State API (dashboard) by address.

    Ray Train's PlacementGroupCleaner polls the State API with no address; it then looks for the Ray of
    its machine, and where another Ray runs there too (tests, a second job) it fails ("Found multiple
    active Ray instances") and stops watching. RAY_API_SERVER_ADDRESS names ours.
    """
    port = free_port()  # the dashboard's, known before it starts
    ray.init(num_cpus=num_cpus or None, dashboard_port=port,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
             _system_config={"worker_maximum_startup_concurrency": LOCAL_STARTUP_CONCURRENCY})


def leave_job_working_dir() -> None:
    """Move a ``ray job submit --working-dir`` driver out of Ray's cached copy of that folder.

    The driver starts inside it, and the node's runtime-env agent deletes the copy when the job's last
    worker on that node exits (seen on Ray 2.60 after training, before the final model was logged):
    the driver's cwd, and any file made there (sqlite:///mlflow.db), would vanish. Its modules are
    imported by now; the home folder is a cwd that stays.
    """
    try:
        cwd = os.getcwd()
    except FileNotFoundError:  # already deleted under us (seen right after ray.init, too)
        cwd = JOB_WORKING_DIRS
    if JOB_WORKING_DIRS in cwd:
        os.chdir(os.path.expanduser("~"))


def node_count() -> int:
    """Alive nodes of the connected cluster (the head included)."""
    return sum(1 for n in ray.nodes() if n["Alive"])


def spans_nodes() -> bool:
    """Whether the work may run on nodes other than the driver's: several nodes now, or a node with no
    CPUs (the heads of cluster/*.yaml schedule nothing: an autoscaling cluster that starts empty adds
    nodes for the work)."""
    nodes = [n for n in ray.nodes() if n["Alive"]]
    return len(nodes) > 1 or any(n["Resources"].get("CPU", 0) == 0 for n in nodes)


def resource_request(setting: str, name: str) -> dict[str, float]:
    """``{name: 1}`` to place one worker or actor on the node type that carries ``name``; ``{}`` for none.

    ``setting`` is ``cluster.train_resource`` / ``cluster.decode_resource``: "auto" asks for ``name`` when
    the cluster has it now, another name always asks for that one (an autoscaling cluster that starts
    with no worker nodes has none yet), "" never asks.
    """
    if setting == "auto":
        return {name: 1.0} if ray.cluster_resources().get(name, 0) > 0 else {}
    return {setting: 1.0} if setting else {}


def decoder_resources(cfg: Config) -> dict[str, float]:
    """Each decoder actor: a unit of the decode node type's resource (``cluster.decode_resource``)."""
    return resource_request(cfg.cluster.decode_resource, DECODE_RESOURCE)


def has_gpus() -> bool:
    """Whether the cluster (not this process's machine) has GPUs now."""
    return ray.cluster_resources().get("GPU", 0) > 0


def node_local_settings(cfg: Config) -> list[str]:
    """A line per setting that only the driver's node can reach, each with its fix (empty: all shared)."""
    if cfg.cluster.shared_filesystem:
        return []
    problems = []
    if not cfg.train.storage_path.startswith("s3://"):
        problems.append(f"train.storage_path={redact(cfg.train.storage_path)!r} is a local folder: Ray Train's checkpoints "
                        "must be on storage every node reaches: set train.storage_path=s3://BUCKET/PREFIX "
                        "(or NLRAY_STORAGE on the cluster's nodes)")
    if not cfg.tracking.uri.startswith(REMOTE_TRACKING):
        problems.append(f"tracking.uri={redact(cfg.tracking.uri)!r} is a file on one node: use the cluster's MLflow server, "
                        "tracking.uri=http://HEAD:5000 (or MLFLOW_TRACKING_URI on the cluster's nodes)")
    if cfg.data.root and not cfg.data.root.startswith("s3://"):
        problems.append(f"data.root={redact(cfg.data.root)!r} (--data) is a local path: decoders on other nodes cannot "
                        "read it: put the dataset in object storage, --data s3://BUCKET/PREFIX (or NLRAY_DATA)")
    return problems


def require_shared_paths(cfg: Config) -> None:
    """On a cluster of several nodes, refuse node-local paths before any work is scheduled."""
    problems = node_local_settings(cfg) if spans_nodes() else []
    if problems:
        raise ConfigError(f"this Ray cluster spans several nodes ({node_count()} now), so every path must reach "
                          "all of them "
                          "(or set cluster.shared_filesystem=true if every node mounts the same folders):\n  "
                          + "\n  ".join(problems))
