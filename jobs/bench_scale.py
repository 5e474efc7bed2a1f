"""Kinetics at full size without the videos: manifest building, epoch planning and row reading.

    python jobs/bench_scale.py            # 246,000 training rows, a 266,000-row root: ~2 minutes on 2 cores
    python jobs/bench_scale.py --quick    # 20,000 rows (a test keeps it working)

What runs (all real, on this machine):
- ``prepare``: a Kinetics-layout root made here in a temporary folder (annotations/train.csv and
  validate.csv of ``--rows`` + 20,000/246,000 of that validation rows, 5% of the videos missing, each
  present video an empty file, in /dev/shm where there is one); ``build_manifest`` on it in a child
  process: ``prepare_s`` (wall) and ``prepare_peak_mb`` (the child's peak resident memory);
- ``plan_s``: one epoch's plan of ``--rows`` training rows on the driver (``ManifestRows.get_read_tasks``);
- ``epoch_row_cpu_s``: one epoch of row reading, nothing decoded: the pipeline's rows dataset with the
  ``demo`` preset's data settings (a pool of 1 decoder), every row consumed, CPU-seconds summed over
  every process of the local Ray (the driver included; sampled every 0.1 s, so a process that exits
  loses up to that much); ``ray_workers_started``: Ray worker processes that appeared during that
  epoch. The second epoch (``epoch2_row_cpu_s``) has its workers already;
- baseline, the same epoch by the read path this replaced: read tasks of ``decode_batch``-row frames,
  Ray's own task count, no limit on tasks at once (with a named read function: the old partial crashed
  at this size). ``ratio`` = this path's CPU-seconds / the baseline's;
- ``first_batch_s``: ``build_train_dataset`` (demo preset data settings: 16x2 clips at 64 px, one
  decoder) over a manifest of ``--rows`` rows whose URIs cycle over 8 real H.264 videos made here, to the
  first decoded batch on the driver.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nlray.config import load_config  # noqa: E402

MISSING_SHARE = 0.05
CLASSES = 400


# ---------------------------------------------------------------------------- the Kinetics root


def make_root(root: Path, train_rows: int, val_rows: int, seed: int = 0) -> int:
    """Annotations of ``train_rows`` + ``val_rows`` videos and an empty file for 95% of them; returns the files made."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    made = 0
    for split, csv, n in (("train", "train.csv", train_rows), ("val", "validate.csv", val_rows)):
        ids = [f"{split[0]}{i:010d}" for i in range(n)]
        labels = [f"class_{i % CLASSES:03d}" for i in range(n)]
        pd.DataFrame({"label": labels, "youtube_id": ids, "time_start": 10, "time_end": 20,
                      "split": split}).to_csv(root / "annotations" / csv, index=False)
        present = rng.random(n) >= MISSING_SHARE
        for label in sorted(set(labels)):
            (root / split / label).mkdir(parents=True)
        for vid, label, keep in zip(ids, labels, present):
            if keep:
                (root / split / label / f"{vid}_000010_000020.mp4").touch()
                made += 1
    return made


PREPARE = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from nlray.data.dataset import build_manifest
t0 = time.perf_counter()
df, labels, missing = build_manifest({root!r})
print(json.dumps({{"rows": len(df), "missing": len(missing), "labels": len(labels),
                   "prepare_s": time.perf_counter() - t0,
                   "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def prepare(root: Path) -> dict:
    """build_manifest of ``root`` in a child process: its wall time and peak memory."""
    out = subprocess.run([sys.executable, "-c", PREPARE.format(repo=str(REPO), root=str(root))],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------- CPU of a process tree


class TreeCpu:
    """CPU-seconds of this process and all its descendants (the local Ray's), sampled every 0.1 s."""

    def __init__(self):
        self.me = psutil.Process()
        self.workers: set[int] = set()  # pids of Ray worker processes seen
        self.start = self._sample()
        self.before_workers = set(self.workers)
        self.last = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[int, float]:
        out = {}
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
                if "default_worker" in " ".join(p.cmdline()):
                    self.workers.add(p.pid)
            except psutil.Error:
                continue
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.last.update(self._sample())

    def __enter__(self) -> "TreeCpu":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.last.update(self._sample())

    def cpu_s(self) -> float:
        return sum(v - self.start.get(pid, 0.0) for pid, v in self.last.items())

    def new_workers(self) -> int:
        return len(self.workers - self.before_workers)


# ------------------------------------------------------------------------------- row reading


class OldRows:
    """The read path this replaced: frames of ``block`` rows per read task, Ray's own task count."""

    __name__ = "old_read_rows"

    def __init__(self, uris: np.ndarray, labels: np.ndarray, rows: np.ndarray, block: int):
        self.uris, self.labels, self.rows, self.block = uris, labels, rows, block

    def __call__(self) -> Iterator[pd.DataFrame]:
        for i in range(0, len(self.uris), self.block):
            yield pd.DataFrame({"uri": self.uris[i:i + self.block], "label_id": self.labels[i:i + self.block],
                                "video_idx": self.rows[i:i + self.block]})


def old_rows_dataset(rows: pd.DataFrame, block: int):
    import ray
    from ray.data import ReadTask
    from ray.data.block import BlockMetadata

    from nlray.data.manifest_rows import ManifestRows

    class OldSource(ManifestRows):
        def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                           data_context: Any = None) -> list:
            order = np.random.default_rng().permutation(len(self.uris))
            return [ReadTask(OldRows(self.uris[p], self.labels[p], p, block),
                             BlockMetadata(num_rows=len(p), size_bytes=None, exec_stats=None, input_files=None),
                             per_task_row_limit=per_task_row_limit)
                    for p in np.array_split(order, max(parallelism, 1))]

    return ray.data.read_datasource(OldSource(rows, shuffle=True), num_cpus=0)


def read_epoch(ds) -> tuple[int, float, int]:
    """(rows, CPU-seconds over the Ray process tree, worker processes started) of one pass over ``ds``."""
    n = 0
    with TreeCpu() as cpu:
        for batch in ds.iter_batches(batch_size=4096, batch_format="pandas"):
            n += len(batch)
    return n, cpu.cpu_s(), cpu.new_workers()


def synthetic_manifest(videos: list[str], rows: int) -> pd.DataFrame:
    """``rows`` training rows whose URIs cycle over ``videos`` (the manifest is cheap; the videos are few)."""
    idx = np.arange(rows)
    return pd.DataFrame({"uri": np.array(videos)[idx % len(videos)], "label_id": idx % 4, "split": "train"})


def first_batch_s(df: pd.DataFrame, data_cfg: Any) -> float:
    from nlray.data.pipeline import build_train_dataset

    t0 = time.perf_counter()
    ds = build_train_dataset(df, data_cfg, run_name="bench-scale", seed=0)
    next(iter(ds.iter_batches(batch_size=data_cfg.batch_size)))
    return time.perf_counter() - t0


def make_videos(folder: Path) -> list[str]:
    from nlray.data.dataset import build_manifest
    from nlray.data.synthetic import make_dataset
    from nlray.data.synthetic_spec import CLASSES as MOTIONS
    from nlray.data.synthetic_spec import SyntheticSpec

    spec = SyntheticSpec(classes=MOTIONS[:4], per_class=2, val_per_class=0, width_range=(80, 96),
                         duration_range=(2.5, 3.0), seed=1)
    df, _, _ = build_manifest(make_dataset(str(folder / "videos"), spec))
    return df["uri"].tolist()


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=246_000, help="training rows (Kinetics-400: 246,000)")
    ap.add_argument("--quick", action="store_true", help="20,000 rows")
    args = ap.parse_args(argv)
    rows = 20_000 if args.quick else args.rows
    val_rows = rows * 20_000 // 246_000

    import ray

    from nlray.data.manifest_rows import ManifestRows
    from nlray.data.pipeline import _rows_dataset
    from nlray.raycluster import start_local

    data = load_config("demo").data
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # 250k files: made and deleted in memory
    with tempfile.TemporaryDirectory(prefix="nlray-bench-scale-", dir=shm) as tmp:
        made = make_root(Path(tmp) / "k400", rows, val_rows)
        prep = prepare(Path(tmp) / "k400")
        videos = make_videos(Path(tmp))
        df = synthetic_manifest(videos, rows)
        t0 = time.perf_counter()
        tasks = ManifestRows(df, shuffle=True).get_read_tasks(2)
        plan_s = time.perf_counter() - t0
        start_local(num_cpus=4)
        try:
            n1, cpu1, workers1 = read_epoch(_rows_dataset(df, data, shuffle=True))
            n2, cpu2, workers2 = read_epoch(_rows_dataset(df, data, shuffle=True))
            nb, cpu_b, workers_b = read_epoch(old_rows_dataset(df, data.decode_batch))
            first = first_batch_s(df, data)
        finally:
            ray.shutdown()
    assert n1 == n2 == nb == rows, (n1, n2, nb, rows)
    record = {"bench": "scale", "rows": rows, "root_rows": rows + val_rows, "root_files": made,
              "manifest_rows": prep["rows"], "missing": prep["missing"],
              "prepare_s": round(prep["prepare_s"], 2), "prepare_peak_mb": round(prep["peak_mb"], 1),
              "plan_s": round(plan_s, 3), "read_tasks": len(tasks),
              "epoch_row_cpu_s": round(cpu1, 2), "ray_workers_started": workers1,
              "epoch2_row_cpu_s": round(cpu2, 2), "epoch2_ray_workers_started": workers2,
              "baseline": {"epoch_row_cpu_s": round(cpu_b, 2), "ray_workers_started": workers_b},
              "ratio": round(cpu1 / cpu_b, 3) if cpu_b else None,
              "first_batch_s": round(first, 1), "cores": os.cpu_count(),
              "load_avg_1m": round(os.getloadavg()[0], 2),
              "driver_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
