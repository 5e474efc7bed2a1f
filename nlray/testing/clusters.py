"""Real multi-node Ray clusters on one machine, for tests and laptops (stdlib + subprocess; PyYAML to read
the autoscaling config).

``start_cluster`` starts a head (``--num-cpus=0``, like the cloud head) and one raylet per entry of
``nodes`` with ``ray start``; ``start_autoscaling_cluster`` starts a head whose autoscaler launches
"nodes" through Ray's fake multi-node provider. Every ``ray start`` runs in a new session (``setsid``)
and ``LocalCluster.stop`` ends exactly the processes of those sessions: Ray's agents rename themselves
(``ray::DashboardAgent``...) and outlive a kill of the raylet and GCS alone, so nothing is killed by name.

Token authentication is on (``RAY_AUTH_MODE=token``). The token is generated here and written to
``<tmp>/auth_token`` (mode 0600); every node, the job drivers they start and any client gets it through
``RAY_AUTH_TOKEN_PATH`` (Ray 2.60 reads the token from ``RAY_AUTH_TOKEN``, then ``RAY_AUTH_TOKEN_PATH``,
then ``~/.ray/auth_token``), so a user's own ``~/.ray/auth_token`` is neither read nor overwritten.
``LocalCluster.client_env`` holds the variables a client (``ray job submit``, ``ray status``,
``ray.init``) needs; ``LocalCluster.env`` is the full environment to run one with.

Each cluster gets its own short Ray temp dir, so ``ray.init()`` elsewhere on the machine never attaches
to it (the last-started-cluster file lives in that dir, not in /tmp/ray).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from nlray.raycluster import LOCAL_STARTUP_CONCURRENCY
from nlray.raycluster import free_port

# Nodes of one machine share its cores: the raylet's startup concurrency (min(cores, CPUs)) would make it warn
# of "worker processes started" at a run's normal count (nlray.raycluster.start_local); the head's system
# config reaches every node that joins.
SYSTEM_CONFIG = "--system-config=" + json.dumps({"worker_maximum_startup_concurrency": LOCAL_STARTUP_CONCURRENCY})

RAY = Path(sys.executable).parent / "ray"
LOCALHOST = "127.0.0.1"


def _session_members(sid: int) -> list[int]:
    """Pids of live processes whose session id is ``sid`` (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after the ")" closing the command name: state ppid pgrp session ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _signal_session(sid: int, sig: int) -> None:
    for pid in _session_members(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class LocalCluster:
    gcs_address: str
    dashboard_url: str
    client_env: dict[str, str]
    temp_dir: Path
    log_dir: Path
    sessions: list[int] = field(default_factory=list)
    _own_dirs: list[Path] = field(default_factory=list)
    _join: Optional[Callable[[dict], int]] = None  # start_cluster's way to join one more node

    def add_node(self, spec: dict) -> int:
        """Join one more node (``spec`` as in start_cluster), as an autoscaler would; its session id."""
        if self._join is None:
            raise RuntimeError("add_node needs a cluster made by start_cluster")
        return self._join(spec)

    def kill_node(self, session: int) -> list[int]:
        """Lose one node at once: SIGKILL every process of its ``ray start`` session (raylet, object store,
        agents, the workers it started), as when a machine is preempted. Returns the pids killed."""
        if session == self.sessions[0]:
            raise ValueError("that is the head node's session: stop() ends the whole cluster")
        pids = _session_members(session)
        _signal_session(session, signal.SIGKILL)
        return pids

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus what a Ray client needs to reach this cluster (token auth, RAY_ADDRESS)."""
        env = {**os.environ, **self.client_env}
        env.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over this cluster's token file
        return env

    @property
    def token(self) -> str:
        return Path(self.client_env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()

    def nodes(self) -> list[dict]:
        """Alive nodes, from the dashboard's state API (authenticated with the cluster token)."""
        req = urllib.request.Request(
            f"{self.dashboard_url}/api/v0/nodes?limit=1000&detail=1",
            headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            rows = json.load(r)["data"]["result"]["result"]
        return [n for n in rows if n["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float = 120.0) -> list[dict]:
        """Wait until exactly ``count`` nodes (head included) are alive; return them."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                nodes = self.nodes()
                if len(nodes) == count:
                    return nodes
                last = len(nodes)
            except OSError as e:  # dashboard not serving yet
                last = e
            time.sleep(0.5)
        raise TimeoutError(f"{count} alive nodes not reached within {timeout}s (last: {last}); "
                           f"logs in {self.log_dir} (Ray's under ray-logs/ once stopped)")

    def stop(self, grace: float = 1.0, timeout: float = 60.0) -> None:
        """End every process of this cluster's sessions and wait until they are gone.

        SIGTERM first; whatever is still alive after ``grace`` seconds (the GCS, raylets and runtime-env
        agents take their time) gets SIGKILL: the whole cluster goes, so nothing needs to drain.
        """
        def alive() -> bool:
            return any(_session_members(s) for s in self.sessions)

        for sid in self.sessions:
            _signal_session(sid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + timeout
        while alive():
            if time.monotonic() > deadline:
                left = {s: _session_members(s) for s in self.sessions}
                raise RuntimeError(f"Ray processes still alive after SIGKILL: {left}")
            for sid in self.sessions:
                _signal_session(sid, signal.SIGKILL)
            time.sleep(0.1)
        self.sessions.clear()
        self._keep_logs()
        for d in self._own_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._own_dirs.clear()

    def _keep_logs(self) -> None:
        """Move Ray's session logs out of the temp dir (removed by stop) to ``log_dir/ray-logs``."""
        logs = self.temp_dir / "session_latest" / "logs"
        dest = self.log_dir / "ray-logs"
        if logs.is_dir() and self.log_dir.is_dir() and not dest.exists():
            try:
                shutil.move(str(logs.resolve()), dest)
            except OSError:
                pass

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _auth_env(tmp: Path) -> dict[str, str]:
    token_path = tmp / "auth_token"
    if not token_path.exists():
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def _base_env(env: dict[str, str] | None, auth: dict[str, str]) -> dict[str, str]:
    out = {**os.environ, **(env or {}), **auth}
    # `ray job submit -- python job.py` runs `python` from the node's PATH: make it this interpreter, whose
    # bin holds the `ray` that starts the nodes, even when its venv is not activated
    out["PATH"] = os.pathsep.join([str(RAY.parent), *(p for p in out.get("PATH", "").split(os.pathsep) if p)])
    out.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over RAY_AUTH_TOKEN_PATH
    out.pop("RAY_ADDRESS", None)
    out.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return out


def _ray_start(args: list[str], env: dict[str, str], log: Path, sessions: list[int],
               timeout: float = 120.0) -> None:
    """Run one ``ray start`` in a new session; its daemons stay in that session after it exits."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(RAY), "start", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    sessions.append(proc.pid)  # session id == pid of the session leader
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = None
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`ray start {' '.join(args)}` failed (rc={rc}):\n{tail}")


def _short_temp_dir() -> Path:
    # Ray puts unix sockets under it: keep the path short (sun_path is 108 bytes).
    return Path(tempfile.mkdtemp(prefix="nlr", dir="/tmp"))


def start_cluster(*, nodes: list[dict], env: dict[str, str] | None = None, tmp: Path,
                  object_store_memory: int = 100 * 1024 * 1024, timeout: float = 120.0) -> LocalCluster:
    """Start a head (0 CPUs, dashboard on) and one node per ``nodes`` entry; wait until all are alive.

    Each entry of ``nodes``: ``{"num_cpus": int, "num_gpus": int (optional), "resources": {name: n}}``.
    ``env`` is added to every node's environment (and so to the job drivers and workers it starts).
    Logs, the token and the node outputs go to ``tmp``.
    """
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    auth = _auth_env(tmp)
    node_env = _base_env(env, auth)
    temp_dir = _short_temp_dir()
    port, dash_port = free_port(), free_port()
    gcs = f"{LOCALHOST}:{port}"
    cluster = LocalCluster(
        gcs_address=gcs, dashboard_url=f"http://{LOCALHOST}:{dash_port}",
        client_env={**auth, "RAY_ADDRESS": gcs}, temp_dir=temp_dir, log_dir=tmp,
        _own_dirs=[temp_dir])

    def per_node_ports() -> list[str]:
        # Several raylets on one machine: no fixed default port may be shared between them.
        return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                "--min-worker-port=0", "--max-worker-port=0",
                f"--object-store-memory={object_store_memory}", "--disable-usage-stats"]

    def join(spec: dict) -> int:
        args = [f"--address={gcs}", f"--num-cpus={int(spec.get('num_cpus', 1))}",
                f"--num-gpus={int(spec.get('num_gpus', 0))}", *per_node_ports()]
        if spec.get("resources"):
            args.append("--resources=" + json.dumps(spec["resources"]))
        _ray_start(args, node_env, tmp / f"node{len(cluster.sessions) - 1}.log", cluster.sessions, timeout)
        return cluster.sessions[-1]

    cluster._join = join
    try:
        _ray_start(["--head", f"--port={port}", "--num-cpus=0", SYSTEM_CONFIG,
                    "--num-gpus=0", "--include-dashboard=true", f"--dashboard-host={LOCALHOST}",
                    f"--dashboard-port={dash_port}", f"--ray-client-server-port={free_port()}",
                    f"--temp-dir={temp_dir}", *per_node_ports()],
                   node_env, tmp / "head.log", cluster.sessions, timeout)
        for spec in nodes:
            join(spec)
        cluster.wait_for_nodes(1 + len(nodes), timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_autoscaling_cluster(config_path: Path, env: dict[str, str] | None = None, *,
                              tmp: Path, update_interval_s: int = 1,
                              idle_timeout_minutes: Optional[float] = None,
                              timeout: float = 120.0) -> LocalCluster:
    """Start a head whose autoscaler adds and removes "nodes" with Ray's fake multi-node provider.

    ``config_path`` is a complete cluster config (``cluster/local/autoscaling.yaml``). The fake nodes
    connect to ``provider.gcs_address``, or to ``<node ip>:6379`` when it is absent; a copy of the config
    with ``gcs_address`` set to a free port is used, so that this can run beside another Ray on 6379.
    ``idle_timeout_minutes``, when given, replaces the config's (tests wait less for idle nodes to go).
    """
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    auth = _auth_env(tmp)
    node_env = _base_env(env, auth)
    node_env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S=str(update_interval_s),
                    # fake nodes get the default object store (30% of RAM each): keep it small
                    RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION="0.02")
    port, dash_port = free_port(), free_port()
    gcs = f"{LOCALHOST}:{port}"
    config = yaml.safe_load(Path(config_path).read_text())
    config["provider"]["gcs_address"] = gcs
    if idle_timeout_minutes is not None:
        config["idle_timeout_minutes"] = idle_timeout_minutes
    run_config = tmp / "autoscaling.run.json"
    run_config.write_text(json.dumps(config, indent=1))
    temp_dir = _short_temp_dir()
    cluster = LocalCluster(
        gcs_address=gcs, dashboard_url=f"http://{LOCALHOST}:{dash_port}",
        client_env={**auth, "RAY_ADDRESS": gcs}, temp_dir=temp_dir, log_dir=tmp,
        _own_dirs=[temp_dir])
    head_cpus = config["available_node_types"][config["head_node_type"]]["resources"].get("CPU", 0)
    try:
        _ray_start(["--head", f"--port={port}", f"--num-cpus={head_cpus}", SYSTEM_CONFIG,
                    f"--autoscaling-config={run_config}", "--include-dashboard=true",
                    f"--dashboard-host={LOCALHOST}", f"--dashboard-port={dash_port}",
                    f"--ray-client-server-port={free_port()}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                    "--object-store-memory=104857600", f"--temp-dir={temp_dir}",
                    "--disable-usage-stats"],
                   node_env, tmp / "head.log", cluster.sessions, timeout)
        cluster.wait_for_nodes(1, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
