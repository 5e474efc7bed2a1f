"""Open every video of a manifest once (in parallel, with Ray Data) and say whether it is usable.

Adds the columns ``status`` (``ok`` or the reason: missing, empty, truncated, undecodable,
too_large, frame_size, too_many_packets, timeout, unreachable, too_short, outside_root), ``error`` (the decoder's
message), ``num_frames``, ``fps``, ``width``, ``height``.

Probing opens each video with the decoder training ships (PyAV, ``nlray.data.decode.open_video``)
under the per-video limits (``VideoLimits``: bytes read, frame size and aspect judged from the
stream before any frame is decoded, packets demuxed, wall time from before the object is fetched)
and decodes the first and the last frame, as training will: a video that passes can be sampled
anywhere, and a hostile one costs no more than the limits allow.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Optional

import numpy as np
import pandas as pd

from nlray.choices import BAD_VIDEO_REASONS
from nlray.data import prepare_pool as pp
from nlray.data.badvideo import BadVideo, DecodeDeadline, VideoLimits
from nlray.raycluster import DECODE_RESOURCE

PROBE_STATUSES = ("ok", *BAD_VIDEO_REASONS, "too_short")
PROBE_COLUMNS = ("status", "error", "num_frames", "fps", "width", "height")
PROBE_BACKEND = "pyav"  # the decoder training ships (nlray.data.decode.DEFAULT_BACKEND)


def remaining(limits: VideoLimits, deadline: DecodeDeadline) -> VideoLimits:
    """``limits`` whose ``timeout_s`` is what is left of ``deadline`` (BadVideo("timeout") if none):
    a deadline started before the fetch keeps counting through the opening and decoding."""
    if deadline.limit_s is None:
        return limits
    deadline.check()
    return dataclasses.replace(limits, timeout_s=max(0.0, deadline.end - time.monotonic()))


def probe_video(data: bytes, *, min_frames: int = 1, uri: str = "", limits: Optional[VideoLimits] = None,
                deadline: Optional[DecodeDeadline] = None) -> dict[str, Any]:
    """Probe one video's bytes: ``{status, error, num_frames, fps, width, height}``.

    Opened with PyAV under ``limits`` (None: ``VideoLimits()``, the defaults); ``deadline``: one
    started earlier (before the fetch), else one starts now. A bad video is a status, not an error."""
    from nlray.data.decode import open_video, read_unique

    limits = VideoLimits() if limits is None else limits
    deadline = deadline or limits.deadline(uri)
    out: dict[str, Any] = {"status": "ok", "error": "", "num_frames": 0, "fps": 0.0,
                           "width": 0, "height": 0}
    try:
        video = open_video(data, backend=PROBE_BACKEND, uri=uri, limits=remaining(limits, deadline))
        try:
            n = int(video.num_frames)
            fps = float(video.fps)
            out.update(num_frames=n, fps=fps if math.isfinite(fps) else 0.0)
            # the first and the last frame (from its keyframe: catches a broken tail), at full size
            frames, _ = read_unique(video, np.array(sorted({0, n - 1})), short_side=None)
            out.update(height=int(frames.shape[1]), width=int(frames.shape[2]))
        finally:
            video.close()
    except BadVideo as bad:
        return {**out, "status": bad.reason, "error": bad.detail[:300]}
    if n < min_frames:
        out.update(status="too_short", error=f"{n} frames < {min_frames}")
    return out


def probe_uri(uri: str, *, endpoint_url: str = "", min_frames: int = 1,
              limits: Optional[VideoLimits] = None) -> dict[str, Any]:
    """Fetch (at most ``limits.max_bytes``) and probe one video; the deadline starts first."""
    from nlray.data.decode import fetch_video

    limits = VideoLimits() if limits is None else limits
    deadline = limits.deadline(uri)  # before anything else: the fetch counts too
    try:
        data = fetch_video(uri, endpoint_url=endpoint_url, max_bytes=limits.max_bytes)
    except BadVideo as bad:  # missing, empty, too_large, unreachable
        return {"status": bad.reason, "error": bad.detail[:300], "num_frames": 0, "fps": 0.0,
                "width": 0, "height": 0}
    return probe_video(data, min_frames=min_frames, uri=uri, limits=limits, deadline=deadline)


class ProbeFn:
    """``map_batches`` callable: fetch and probe each video of a pandas batch (picklable).

    Each row also gets ``node_id``, ``pid``, ``t_start`` and ``t_end`` (epoch seconds): where and when
    it was probed (the results log keeps them; the manifest does not)."""

    def __init__(self, *, endpoint_url: str = "", min_frames: int = 1, limits: Optional[VideoLimits] = None):
        self.endpoint_url = endpoint_url
        self.min_frames = min_frames
        self.limits = VideoLimits() if limits is None else limits
        self.identity = pp.worker_identity()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        results = []
        for uri in batch["uri"]:
            start = time.time()
            out = probe_uri(uri, endpoint_url=self.endpoint_url, min_frames=self.min_frames, limits=self.limits)
            results.append({**out, **self.identity, "t_start": start, "t_end": time.time()})
        probed = pd.DataFrame(results, columns=[*PROBE_COLUMNS, *WHERE_COLUMNS], index=batch.index)
        return pd.concat([batch.drop(columns=[c for c in (*PROBE_COLUMNS, *WHERE_COLUMNS) if c in batch]),
                          probed], axis=1)


WHERE_COLUMNS = ("node_id", "pid", "t_start", "t_end")
PROBE_DTYPES = {"status": str, "error": str, "num_frames": "int64", "fps": "float64", "width": "int64",
                "height": "int64"}


def probe_manifest(df: pd.DataFrame, *, endpoint_url: str = "", min_frames: int = 1,
                   concurrency: Optional[int] = None, batch_size: int = 8,
                   limits: Optional[VideoLimits] = None, decode_resource: str = "auto",
                   results_folder: str = "", progress_interval_s: float = 30.0,
                   flush_s: float = 5.0) -> pd.DataFrame:
    """The manifest with the probe columns, every video opened once in parallel with Ray Data,
    under ``limits`` (None: ``VideoLimits()``).

    The actors run where ``decode_resource`` says (``prepare_pool.plan_pool``: "auto" asks for
    ``nlray_decode`` when the cluster has or can add it), 1 to ``concurrency`` of them (None: the
    cluster's capacity for them). With ``results_folder`` (``<folder of --out>``), results are logged
    as they arrive below ``<folder>/.nlray-prepare/probe-<options>/``, keyed by URI and size: a rerun
    probes only what is not there yet. A progress line every ``progress_interval_s``.

    Storage errors other than a missing object or a store that failed every retry (auth, a missing
    bucket) stop the job: they concern every video, not one. Row order is kept.
    """
    if df.empty:
        return df.assign(**{c: pd.Series(dtype=object) for c in PROBE_COLUMNS})
    limits = VideoLimits() if limits is None else limits
    keys = ("uri", "size") if "size" in df.columns else ("uri",)
    log = None
    done: dict[tuple, dict] = {}
    if results_folder:
        options = {"min_frames": min_frames, "limits": dataclasses.asdict(limits), "backend": PROBE_BACKEND}
        log = pp.ResultsLog(pp.step_folder(results_folder, "probe", options), endpoint_url=endpoint_url,
                            flush_s=flush_s)
        wanted = set(zip(*(df[k] for k in keys)))
        done = {k: r for k, r in pp.latest_by_key(log.load(), keys).items()
                if k in wanted and r.get("status") not in pp.RETRIED}
    todo = df[[k not in done for k in zip(*(df[k] for k in keys))]]
    plan = pp.plan_pool(decode_resource, DECODE_RESOURCE, concurrency or 0)
    results = pp.run_logged("probe", len(df), todo, done, ProbeFn, {
        "endpoint_url": endpoint_url, "min_frames": min_frames, "limits": limits}, plan,
        columns=[*keys, *PROBE_COLUMNS, *WHERE_COLUMNS], keys=keys, log=log, batch_size=batch_size,
        progress_interval_s=progress_interval_s)
    rows = [results[k] for k in zip(*(df[k] for k in keys))]
    probed = pd.DataFrame(rows, columns=list(PROBE_COLUMNS))
    probed = probed.fillna({"error": "", "fps": 0.0}).astype(PROBE_DTYPES)
    base = df.drop(columns=[c for c in PROBE_COLUMNS if c in df]).reset_index(drop=True)
    return pd.concat([base, probed], axis=1)
