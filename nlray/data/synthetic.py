"""A synthetic Kinetics-like dataset: real H.264 .mp4 files in the official Kinetics layout.

    root/annotations/train.csv      label,youtube_id,time_start,time_end,split
    root/annotations/validate.csv
    root/train/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4
    root/val/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4

Classes differ only by motion over time: a textured blob moving left / right / up / down,
rotating clockwise / counter-clockwise, growing / shrinking or flickering slowly / fast. Colours,
background textures, sizes and the path's centre are random, and every path is symmetric about its
middle, so the distribution of a single frame is the same for the two classes of a pair: a network
that averages frames over time (C2D) cannot tell them apart from appearance, a temporal one can.
Frame sizes, aspect ratios, frame rates and durations vary per video like Kinetics (scaled down).

The "longrange" set (``LONGRANGE_SPEC``) asks for a relation across space and time instead: two small
squares on opposite sides of the frame; square A moves (right, left, down or up) early in the video,
square B, far away, starts moving 14-20 frames after A did; the class says whether B repeats A's
direction (``LONGRANGE_CLASSES``). No single frame, and no single place, holds the answer.

    python jobs/make_synthetic.py --out s3://bucket/synthetic --classes 6 --per-class 24
    python jobs/make_synthetic.py --out /data/longrange --preset longrange

Modules: ``synthetic_spec`` (the classes, ``SyntheticSpec`` and its presets, the per-video plans),
``synthetic_render`` (a plan's frames) and this one (writing the dataset: the videos, the CSVs, the
marker). The public names of all three are importable from here.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from nlray.data import storage
from nlray.data.synthetic_render import LONGRANGE_GEOMETRY, render_video
from nlray.data.synthetic_spec import (CLASSES, DEMO_SPEC, FLIP_LABEL_MAP, LONGRANGE_CLASSES,
                                       LONGRANGE_FLIP_LABEL_MAP, LONGRANGE_SPEC, LONGRANGE_TIMING, SPECS,
                                       SPLIT_DIRS, TINY_SPEC, SyntheticSpec, VideoPlan, plan_videos,
                                       relation_frame_limits)
from nlray.data.transcode import encode_h264

__all__ = ["CLASSES", "FLIP_LABEL_MAP", "LONGRANGE_CLASSES", "LONGRANGE_FLIP_LABEL_MAP", "LONGRANGE_TIMING",
           "LONGRANGE_GEOMETRY", "SyntheticSpec", "DEMO_SPEC", "TINY_SPEC", "LONGRANGE_SPEC", "SPECS",
           "VideoPlan", "plan_videos", "relation_frame_limits", "render_video",
           "MARKER", "make_dataset", "ensure_dataset_at", "ensure_demo_dataset"]

MARKER = "_COMPLETE.json"
MIN_JOBS_FOR_POOL = 48  # starting spawned workers costs seconds: not worth it for tiny sets


def _write_one(job: tuple[VideoPlan, int, int, str]) -> str:
    """Render and encode one video below a local root (top level: runs in a worker process)."""
    plan, gop, crf, root = job
    path = Path(root) / plan.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = render_video(plan)
    encode_h264(frames, str(path), width=plan.width, height=plan.height, fps=plan.fps,
                keyint=gop, crf=crf)
    return plan.relpath


def _write_csvs(plans: list[VideoPlan], root: Path) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in SPLIT_DIRS:
        rows = [p for p in plans if p.split == split]
        if not rows:
            continue
        with open(root / "annotations" / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for p in rows:
                writer.writerow([p.label, p.youtube_id, p.time_start, p.time_end, p.split])


def _generate_local(spec: SyntheticSpec, root: Path, processes: int) -> int:
    """Write every video, the CSVs and finally the marker into ``root`` (a fresh folder)."""
    plans = plan_videos(spec)
    jobs = [(p, spec.gop, spec.crf, str(root)) for p in plans]
    if processes > 1 and len(jobs) >= MIN_JOBS_FOR_POOL:
        # spawn, not fork: the caller may be a Ray driver with threads running. An executor
        # (unlike multiprocessing.Pool) raises if a worker dies instead of hanging.
        with ProcessPoolExecutor(min(processes, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_one, jobs, chunksize=4))
    else:
        for job in jobs:
            _write_one(job)
    _write_csvs(plans, root)
    (root / MARKER).write_text(json.dumps({"spec": dataclasses.asdict(spec), "key": spec.key(),
                                           "videos": len(plans)}, indent=1))
    return len(plans)


def make_dataset(out: str, spec: SyntheticSpec = DEMO_SPEC, *, endpoint_url: str = "",
                 processes: int = 2, overwrite: bool = False) -> str:
    """Generate the dataset at ``out`` (local path, file:// or s3://) and return ``out``.

    Videos are written to a local temp folder first: locally it is renamed into place (readers
    never see half a dataset), for S3 it is uploaded and the marker file goes last.
    """
    if _existing_files(out, endpoint_url):
        if not overwrite:
            raise ValueError(f"out={out!r} already holds files; pass overwrite=True "
                             "(--overwrite) or choose an empty location")
        storage.delete_tree(out, endpoint_url=endpoint_url)
    with storage.staged_tree(out, last=MARKER, endpoint_url=endpoint_url) as tmp:
        _generate_local(spec, Path(tmp), processes)
    return out


def _existing_files(out: str, endpoint_url: str) -> list[tuple[str, int]]:
    try:
        return storage.list_files(out, suffixes=None, endpoint_url=endpoint_url)
    except storage.MissingObjectError:  # a local folder not made yet
        return []


def ensure_dataset_at(uri: str, spec: SyntheticSpec, *, endpoint_url: str = "", processes: int = 2) -> str:
    """``uri`` (e.g. on the cluster's shared S3 storage) holding ``spec``'s dataset, generated unless its
    marker file (written last) is there already."""
    if not storage.exists(storage.join(uri, MARKER), endpoint_url=endpoint_url):
        make_dataset(uri, spec, endpoint_url=endpoint_url, processes=processes, overwrite=True)
    return uri


def ensure_demo_dataset(cache_dir: str, spec: SyntheticSpec = DEMO_SPEC, *,
                        processes: int = 2) -> str:
    """The local root of ``spec``'s dataset under ``cache_dir``, generated on first use only.

    Generation writes to a temp folder and renames it into place, so concurrent callers and
    interrupted runs never leave a partial dataset behind; the marker file says it is complete.
    """
    root = Path(os.path.expanduser(cache_dir)) / "synthetic" / f"{spec.key()}"
    if (root / MARKER).is_file():
        return str(root)
    try:
        with storage.staged_tree(str(root)) as tmp:  # renamed into place when complete
            _generate_local(spec, Path(tmp), processes)
    except OSError:
        if not (root / MARKER).is_file():  # lost a race to a complete copy: fine
            raise
    return str(root)
