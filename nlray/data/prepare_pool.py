"""Running a preparation step (probe, transcode) over the cluster, resumably, with progress lines.

* Placement and size of the actor pool (``plan_pool``): each actor asks for a unit of the decode node
  type's resource (``nlray_decode``, one per CPU of a decode node) when the cluster has it now or its
  autoscaler can add a node type that carries it ("auto"; a name: always that one), else ("": none) for
  1 CPU. The pool's maximum comes from ``--concurrency``, else from the autoscaler's node types
  (max_workers x actor slots of each type that carries the resource), else from the CPUs the cluster has
  now; never from what happens to be free at submit time. The pool starts with one actor and Ray Data
  grows it: actors that do not fit yet are pending demand, and the autoscaler adds decode nodes for them
  (``run_pool``: why such an actor asks for no CPU besides).
* Results log (``ResultsLog``): one JSON object per finished video, appended as results arrive in
  JSON-lines parts below a folder (``<folder>/.nlray-prepare/<step>-<options hash>/part-*.jsonl``; S3 has
  no append), read back on the next run: a rerun of the same command skips what is recorded.
* Progress (``Progress``): one line per interval (done / failed / remaining, rate, ETA), not one per video.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TextIO

import numpy as np
import pandas as pd
import ray

from nlray import raycluster
from nlray.data import storage

PREPARE_DIR = ".nlray-prepare"  # hidden: a local listing of the dataset leaves it out
DEFAULT_PROGRESS_INTERVAL_S = 30.0
DEFAULT_FLUSH_S = 5.0  # results log: a part at most this often (S3 objects are written whole)
RETRIED = ("unreachable", "timeout")  # failures a rerun tries again: the store, or a node too busy at the time


# ------------------------------------------------------------------------------------------ the pool


def autoscaler_node_types() -> Optional[dict[str, dict[str, Any]]]:
    """``{type: {"resources": {...}, "max_workers": n}}`` the cluster's autoscaler may launch, or None.

    Read from the GCS where the autoscaler v2 (KubeRay) publishes its ``ClusterConfig``; else from the
    v1 monitor's ``--autoscaling-config`` file (the monitor's pid is in its status in the GCS KV; readable
    from the head, where a submitted job's driver runs); else ``~/ray_bootstrap_config.yaml`` (``ray up``'s
    copy on the head). Ray 2.60's v1 monitor (the fake multi-node provider's, ``ray up``'s) publishes no
    ``ClusterConfig``: ``ray._private.state.state.get_cluster_config()`` is None there.
    """
    try:
        import ray._private.state as state

        config = state.state.get_cluster_config()
    except Exception:  # not connected, or an older GCS
        config = None
    if config is not None and config.node_group_configs:
        return {g.name or f"group{i}": {"resources": dict(g.resources), "max_workers": int(g.max_count)}
                for i, g in enumerate(config.node_group_configs)}
    for path in (_monitor_config_path(), Path.home() / "ray_bootstrap_config.yaml"):
        types = _node_types_from_file(path) if path else None
        if types:
            return types
    return None


def _monitor_config_path() -> Optional[Path]:
    """The ``--autoscaling-config`` of the v1 monitor, when it runs on this machine."""
    try:
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

        if not _internal_kv_initialized():
            return None
        status = _internal_kv_get("__autoscaling_status")  # ray_constants.DEBUG_AUTOSCALING_STATUS
        pid = int(json.loads(status)["monitor_pid"]) if status else 0
        if not pid:
            return None
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except Exception:  # no status yet, no monitor here, not Linux
        return None
    if not any(a.endswith("monitor.py") or "autoscaler" in a for a in args):
        return None  # the pid is another machine's
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--autoscaling-config=") else (
            args[i + 1] if arg == "--autoscaling-config" and i + 1 < len(args) else "")
        if value:
            path = Path(value)
            return path if path.is_absolute() else Path(f"/proc/{pid}/cwd") / path
    return None


def _node_types_from_file(path: Path) -> Optional[dict[str, dict[str, Any]]]:
    try:
        import yaml

        config = yaml.safe_load(Path(path).read_text())  # a JSON file is YAML too
    except Exception:
        return None
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        return None
    default_max = int(config.get("max_workers", 0) or 0)
    return {name: {"resources": dict(t.get("resources") or {}),
                   "max_workers": int(t.get("max_workers", default_max) or 0)}
            for name, t in config["available_node_types"].items() if isinstance(t, dict)}


@dataclass(frozen=True)
class PoolPlan:
    """Where each actor goes (``resources`` besides its 1 CPU) and how many may run (``max_size``)."""

    resources: dict[str, float]
    max_size: int
    why: str

    def line(self, step: str) -> str:
        where = f"on {', '.join(self.resources)} nodes" if self.resources else "on any node with a CPU"
        return f"{step}: a pool of 1 to {self.max_size} actors {where} ({self.why})"


def placement(setting: str, name: str, types: Optional[dict[str, dict]] = None) -> dict[str, float]:
    """``raycluster.resource_request`` for preparation: "auto" also asks for ``name`` when the cluster has
    none now but its autoscaler has a node type that carries it (it will add one for the pending actors)."""
    request = raycluster.resource_request(setting, name)
    if request or setting != "auto":
        return request
    types = autoscaler_node_types() if types is None else types
    if types and any(float(t["resources"].get(name, 0)) > 0 and t["max_workers"] != 0 for t in types.values()):
        return {name: 1.0}
    return {}


def plan_pool(setting: str, name: str, concurrency: int = 0) -> PoolPlan:
    """The pool of a preparation step: placement by ``setting`` ("auto", a resource name or ""), size
    ``concurrency`` or, when 0, the cluster's capacity for such actors (``autoscaler_node_types``:
    max_workers x min(CPU, resource) per node type, the nodes that exist now counted where larger),
    else the cluster's CPUs now; at least 1."""

    types = autoscaler_node_types()
    resources = placement(setting, name, types)
    if concurrency > 0:
        return PoolPlan(resources, concurrency, "--concurrency")
    asked = next(iter(resources), None)
    now = ray.cluster_resources()
    current = int(min(now.get("CPU", 0), now.get(asked, 0)) if asked else now.get("CPU", 0))
    if types:
        slots, parts = 0, []
        for type_name, t in types.items():
            res, count = t["resources"], t["max_workers"]
            per_node = min(float(res.get("CPU", 0)), float(res.get(asked, 0))) if asked else float(res.get("CPU", 0))
            if per_node >= 1 and count > 0:
                slots += int(per_node) * count
                parts.append(f"{type_name}: {count} x {int(per_node)}")
        if slots > 0:
            why = "autoscaler node types " + ", ".join(parts)
            return PoolPlan(resources, max(slots, current, 1),
                            why if slots >= current else f"{current} slots on the nodes now")
    return PoolPlan(resources, max(1, current),
                    f"{current} {asked + ' ' if asked else ''}CPU slots on the cluster now; no autoscaler node types read")


def run_pool(df: pd.DataFrame, fn_cls: type, fn_kwargs: dict[str, Any], plan: PoolPlan, *,
             batch_size: int, on_block: Callable[[pd.DataFrame], None]) -> None:
    """Run ``fn_cls`` (a ``map_batches`` callable class) over the rows of ``df`` on an actor pool of 1 to
    ``plan.max_size`` actors, handing each result block to ``on_block`` as it arrives.

    An actor placed by a resource (``plan.resources``: a decode slot, one per CPU of a decode node) asks
    for no CPU besides. With a CPU in its request, Ray Data 2.60 grows the pool only within the CPUs the
    cluster has now (no actor is left pending for the autoscaler) and asks the autoscaler for more as
    plain ``{"CPU": 1}`` bundles (``request_resources``: its requests carry CPU, GPU and memory, never
    custom resources), for which the autoscaler may add any node type with CPUs: seen on
    cluster/local/autoscaling.yaml, a train node added during a probe (on cluster/aws.yaml a GPU node).
    Without one, Ray Data requests nothing and grows the pool to ``plan.max_size``; the actors that do
    not fit are pending on the decode resource, which only decode nodes carry. On a cluster that had no
    worker node when the job started, Ray Data runs one task at a time for the first ~20 s: its budget comes
    from an autoscaling coordinator that reads the cluster's nodes every 20 s (Ray 2.60)."""
    if df.empty:
        return
    ds = manifest_blocks(df, batch_size).map_batches(
        fn_cls, fn_constructor_kwargs=fn_kwargs, batch_size=batch_size, batch_format="pandas",
        num_cpus=0 if plan.resources else 1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.max_size),
        **({"resources": dict(plan.resources)} if plan.resources else {}))
    for block in ds.iter_batches(batch_size=None, batch_format="pandas"):
        on_block(block.drop(columns=["_row"], errors="ignore"))


def manifest_blocks(df: pd.DataFrame, batch_size: int) -> Any:
    """A Ray Dataset of the manifest in many small blocks, so that actors share the work.

    ``from_blocks`` (the blocks and their metadata made here, on the driver), not ``from_pandas``, which
    runs one metadata task per block: tasks that ask for a plain CPU, which a head with no CPUs lacks, so
    the autoscaler first adds nodes of whatever type has CPUs (seen on cluster/local/autoscaling.yaml:
    two train nodes, the GPU nodes of cluster/aws.yaml) and the pool's first actor waits for them."""
    rows = df.reset_index(drop=True).assign(_row=np.arange(len(df)))
    chunk = max(batch_size, math.ceil(len(rows) / 2000))  # at most ~2000 blocks
    return ray.data.from_blocks([rows.iloc[i:i + chunk] for i in range(0, len(rows), chunk)])


def run_logged(step: str, total: int, todo: pd.DataFrame, done: dict[tuple, dict], fn_cls: type,
               fn_kwargs: dict[str, Any], plan: PoolPlan, *, columns: list[str], keys: tuple[str, ...],
               log: Optional["ResultsLog"], batch_size: int, progress_interval_s: float) -> dict[tuple, dict]:
    """Probe's and transcode's shared run: ``todo`` through the pool, each result block's ``columns`` into
    ``log`` (when given) and the progress line; returns ``done`` updated with the new results, by ``keys``."""
    print(plan.line(step), flush=True)
    fresh: list[dict] = []

    def on_block(block: pd.DataFrame) -> None:
        records = block[columns].to_dict("records")
        fresh.extend(records)
        if log is not None:
            log.add(records)
        progress.add(len(records), sum(r["status"] != "ok" for r in records))

    earlier_failed = sum(r["status"] != "ok" for r in done.values())
    with Progress(step, total, done=total - len(todo), failed=earlier_failed,
                  interval_s=progress_interval_s) as progress:
        try:
            run_pool(todo, fn_cls, fn_kwargs, plan, batch_size=batch_size, on_block=on_block)
        finally:
            if log is not None:
                log.flush()
    return {**done, **latest_by_key(fresh, keys)}


def worker_identity() -> dict[str, Any]:
    """``{node_id, pid}`` of this process (node_id "" outside Ray): recorded with each result."""
    node = ""
    try:
        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return {"node_id": node, "pid": os.getpid()}


# ----------------------------------------------------------------------------------- the results log


def options_key(options: dict[str, Any]) -> str:
    """A short stable hash of a step's options: results of other options are not reused."""
    text = json.dumps(options, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ResultsLog:
    """Per-video results of one step, appended in JSON-lines parts below ``folder`` (local or S3).

    ``add`` buffers; a part is written when ``flush_s`` passed since the last one (and by ``flush``).
    ``load`` reads every part (compacting many into one), the last record of a key winning."""

    def __init__(self, folder: str, *, endpoint_url: str = "", flush_s: float = DEFAULT_FLUSH_S):
        self.folder, self.endpoint_url, self.flush_s = folder.rstrip("/"), endpoint_url, flush_s
        self.buffer: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.seq = 0
        self.parts_written = 0

    def _parts(self) -> list[str]:
        try:
            return [u for u, _ in storage.list_files(self.folder, suffixes=(".jsonl",),
                                                     endpoint_url=self.endpoint_url)]
        except storage.MissingObjectError:
            return []

    def load(self) -> list[dict[str, Any]]:
        parts = self._parts()
        records = []
        for part in parts:
            for line in storage.read_bytes(part, endpoint_url=self.endpoint_url).decode().splitlines():
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
        if len(parts) > 1:  # one part from now on: a long job's next resume reads one object
            self._write(records, "compact")
            for part in parts:
                storage.delete(part, endpoint_url=self.endpoint_url)
        return records

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        self.buffer.extend({k: _plain(v) for k, v in r.items()} for r in records)
        if time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self._write(self.buffer, f"{self.seq:06d}")
            self.buffer = []
            self.seq += 1
        self.last_flush = time.monotonic()

    def _write(self, records: list[dict[str, Any]], tag: str) -> None:
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        name = f"part-{time.time_ns()}-{os.getpid()}-{tag}.jsonl"
        storage.write_bytes(storage.join(self.folder, name), body.encode(), endpoint_url=self.endpoint_url)
        self.parts_written += 1


def step_folder(base: str, step: str, options: dict[str, Any]) -> str:
    """``<base>/.nlray-prepare/<step>-<options hash>``: where a step's results log lives."""
    return storage.join(base, PREPARE_DIR, f"{step}-{options_key(options)}")


def latest_by_key(records: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, dict[str, Any]]:
    out: dict[tuple, dict[str, Any]] = {}
    for r in records:
        out[tuple(r.get(k) for k in keys)] = r
    return out


# ---------------------------------------------------------------------------------------- progress


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Counts a step's finished videos and prints one line per ``interval_s`` (from a thread), e.g.

    ``transcode: 1200/266000 done (15 failed, 1000 from an earlier run), 264800 remaining, 8.3 videos/s,
    ETA 8h51m``: done counts failures too; the rate is this run's; ETA = remaining / rate."""

    def __init__(self, step: str, total: int, *, done: int = 0, failed: int = 0, interval_s: float =
                 DEFAULT_PROGRESS_INTERVAL_S, out: Optional[TextIO] = None):
        self.step, self.total, self.interval_s = step, total, interval_s
        self.earlier, self.done, self.failed = done, done, failed
        self.out = out or sys.stdout
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def add(self, done: int, failed: int = 0) -> None:
        with self.lock:
            self.done += done
            self.failed += failed

    def line(self) -> str:
        with self.lock:
            done, failed = self.done, self.failed
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (done - self.earlier) / elapsed
        remaining = max(self.total - done, 0)
        eta = _duration(remaining / rate) if rate > 0 else "unknown"
        earlier = f", {self.earlier} from an earlier run" if self.earlier else ""
        return (f"{self.step}: {done}/{self.total} done ({failed} failed{earlier}), {remaining} remaining, "
                f"{rate:.2f} videos/s, ETA {eta}, {_duration(elapsed)} elapsed")

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval_s):
            print(self.line(), file=self.out, flush=True)

    def __enter__(self) -> "Progress":
        print(self.line(), file=self.out, flush=True)
        if self.interval_s > 0:
            self.thread = threading.Thread(target=self._loop, name=f"{self.step}-progress", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        print(self.line(), file=self.out, flush=True)
