"""Open every video of a manifest once (in parallel, with Ray Data) and say whether it is usable.

Adds the columns ``status`` (``ok`` or the reason: missing, empty, truncated, undecodable,
too_short), ``error`` (the decoder's message), ``num_frames``, ``fps``, ``width``, ``height``.
Probing decodes the first and the last frame with decord, as training will: a video that passes
can be sampled anywhere.
"""
from __future__ import annotations

import io
import math
from typing import Any, Optional

import numpy as np
import pandas as pd
import ray

from nlray.choices import BAD_VIDEO_REASONS
from nlray.data import storage
from nlray.data.badvideo import container_truncated

PROBE_STATUSES = ("ok", *BAD_VIDEO_REASONS, "too_short")
PROBE_COLUMNS = ("status", "error", "num_frames", "fps", "width", "height")


def probe_video(data: bytes, *, min_frames: int = 1) -> dict[str, Any]:
    """Probe one video's bytes: ``{status, error, num_frames, fps, width, height}``."""
    out: dict[str, Any] = {"status": "ok", "error": "", "num_frames": 0, "fps": 0.0,
                           "width": 0, "height": 0}
    if not data:
        return {**out, "status": "empty", "error": "zero bytes"}
    if container_truncated(data):  # the decoders' own test (nlray.data.badvideo)
        return {**out, "status": "truncated", "error": "the container runs past the end of the file"}
    import decord

    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        n = len(reader)
        first = reader[0].shape if n else (0, 0, 3)
        if n > 1:
            reader[n - 1]  # decodes from the last keyframe: catches a broken tail
        fps = float(reader.get_avg_fps())
    except Exception as exc:  # decord raises RuntimeError / DECORDError for bad streams
        status = "undecodable"
        return {**out, "status": status, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    out.update(num_frames=int(n), fps=fps if math.isfinite(fps) else 0.0,
               height=int(first[0]), width=int(first[1]))
    if n < min_frames:
        out.update(status="too_short", error=f"{n} frames < {min_frames}")
    return out


class ProbeFn:
    """``map_batches`` callable: fetch and probe each video of a pandas batch (picklable)."""

    def __init__(self, *, endpoint_url: str = "", min_frames: int = 1):
        self.endpoint_url = endpoint_url
        self.min_frames = min_frames

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        results = []
        for uri in batch["uri"]:
            try:
                data = storage.read_bytes(uri, endpoint_url=self.endpoint_url)
            except storage.MissingObjectError as exc:
                results.append({"status": "missing", "error": exc.cause, "num_frames": 0,
                                "fps": 0.0, "width": 0, "height": 0})
                continue
            results.append(probe_video(data, min_frames=self.min_frames))
        probed = pd.DataFrame(results, columns=list(PROBE_COLUMNS), index=batch.index)
        return pd.concat([batch.drop(columns=[c for c in PROBE_COLUMNS if c in batch]), probed],
                         axis=1)


def probe_manifest(df: pd.DataFrame, *, endpoint_url: str = "", min_frames: int = 1,
                   concurrency: Optional[int] = None, batch_size: int = 8) -> pd.DataFrame:
    """The manifest with the probe columns, every video opened once in parallel with Ray Data.

    Storage errors other than a missing object (auth, a missing bucket) stop the job: they
    concern every video, not one. Row order is kept.
    """
    if df.empty:
        return df.assign(**{c: pd.Series(dtype=object) for c in PROBE_COLUMNS})
    ds = manifest_blocks(df, batch_size)
    actors = concurrency or max(1, int(ray.available_resources().get("CPU", 1)))
    probed = ds.map_batches(ProbeFn, fn_constructor_kwargs={"endpoint_url": endpoint_url,
                                                            "min_frames": min_frames},
                            batch_size=batch_size, batch_format="pandas", num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors))
    return collect_in_order(probed)


def manifest_blocks(df: pd.DataFrame, batch_size: int) -> Any:
    """A Ray Dataset of the manifest in many small blocks, so that actors share the work."""
    rows = df.reset_index(drop=True).assign(_row=np.arange(len(df)))
    chunk = max(batch_size, math.ceil(len(rows) / 2000))  # at most ~2000 blocks
    return ray.data.from_pandas([rows.iloc[i:i + chunk] for i in range(0, len(rows), chunk)])


def collect_in_order(ds: Any) -> pd.DataFrame:
    """The rows of a ``manifest_blocks`` dataset (after map_batches) back in manifest order."""
    out = ds.to_pandas()
    return out.sort_values("_row").drop(columns="_row").reset_index(drop=True)
