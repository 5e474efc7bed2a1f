"""Re-encode videos for fast clip decoding: H.264, a smaller shorter side, frequent keyframes.

Decoding a clip costs every frame from the keyframe before it to the clip's end, at the stored
resolution. Raw Kinetics videos are often larger than training needs and have keyframes seconds
apart, so a 64-frame window can cost hundreds of decoded frames. Transcoding once to a shorter
side of 256 (what PySlowFast and the paper's inference use) with a keyframe every 32 frames bounds
that cost. The job runs over the manifest with Ray Data on CPU nodes and writes the same layout
(same relative paths, the annotation files copied) under a new root, plus a manifest for it.

Untrusted input: a video is written only strictly below the output root, its path checked after
normalising (a manifest row outside ``root`` gets the status ``outside_root`` and nothing is
written for it, no folder made); each video is read and decoded under the per-video limits
(``VideoLimits``: ``too_large``, ``frame_size``, ``too_many_packets``, ``timeout`` from before the
read), as the decoders and the probe do.
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
from fractions import Fraction
from typing import Any, BinaryIO, Iterable, Optional, Union

import numpy as np
import pandas as pd

from nlray.data import prepare_pool as pp
from nlray.data import storage
from nlray.data.badvideo import BadVideo, DecodeDeadline, VideoLimits
from nlray.data.decode_pyav import limited_packets, open_checked
from nlray.data.layout_lists import LIST_SUFFIXES
from nlray.data.prepare_pool import worker_identity
from nlray.raycluster import DECODE_RESOURCE

DEFAULT_SHORT_SIDE = 256
DEFAULT_KEYINT = 32
TRANSCODE_COLUMNS = ("uri", "out_uri", "status", "error", "num_frames", "out_num_frames",
                     "out_width", "out_height", "out_size")
# also in each result (the results log keeps them; the report CSV does not): encoded / adopted / failed,
# where and when
RECORD_COLUMNS = ("action", "node_id", "pid", "t_start", "t_end")
EXISTING = "_existing_out_size"  # column: size of an output a killed run left, 0 when none


def encode_h264(frames: Iterable[Any], dest: Union[str, BinaryIO], *, width: int, height: int,
                fps: Union[int, float, Fraction], keyint: int, crf: int = 23,
                preset: str = "veryfast", threads: int = 1) -> int:
    """Encode RGB frames (uint8 [H, W, 3] arrays or ``av.VideoFrame``) to an H.264 .mp4.

    Keyframes come exactly every ``keyint`` frames (x264 scene-cut detection off, so that the
    decode cost of a clip is bounded by ``keyint``). Returns the number of frames written.
    """
    import av

    if width % 2 or height % 2 or width < 2 or height < 2:
        raise ValueError(f"width={width}, height={height}: H.264 yuv420p needs even sizes >= 2")
    if keyint < 1:
        raise ValueError(f"keyint={keyint} must be >= 1")
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    count = 0
    with av.open(dest, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset,
                          "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0"}
        stream.codec_context.thread_count = threads  # parallelism comes from processes/actors
        for frame in frames:
            if not isinstance(frame, av.VideoFrame):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            # AREA: proper averaging when shrinking (bilinear would alias fine texture).
            frame = frame.reformat(width=width, height=height, format="yuv420p",
                                   interpolation="AREA")
            # Constant frame rate: frame i at i / rate (a decoded frame's own clock is dropped).
            frame.pts, frame.time_base = count, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        for packet in stream.encode():  # flush delayed (B-)frames
            container.mux(packet)
    return count


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scale so the shorter side is ``short_side`` (never up), keep the aspect, round to even."""
    if short_side < 2:
        raise ValueError(f"short_side={short_side} must be >= 2")
    scale = min(1.0, short_side / min(width, height))
    return _even(width * scale), _even(height * scale)


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def transcode_video(data: bytes, *, short_side: int = DEFAULT_SHORT_SIDE,
                    keyint: int = DEFAULT_KEYINT, crf: int = 23,
                    preset: str = "veryfast", limits: Optional[VideoLimits] = None, uri: str = "",
                    deadline: Optional[DecodeDeadline] = None) -> tuple[bytes, dict[str, Any]]:
    """Re-encode one video (any container PyAV reads) to H.264 .mp4 bytes; video only.

    Every decoded frame is kept and re-timed at the stream's average rate, so the frame count
    and fps stay; returns ``(mp4 bytes, {num_frames, out_num_frames, out_width, out_height})``.
    ``limits`` (None: ``VideoLimits()``): BadVideo ``too_large`` / ``frame_size`` (from the stream,
    before any frame is decoded) / ``too_many_packets`` / ``timeout`` (``deadline``, else one from
    now, checked between packets and frames, so encoding counts too).
    """

    limits = VideoLimits() if limits is None else limits
    deadline = deadline or limits.deadline(uri)
    limits.check_bytes(len(data), uri)
    src, stream = open_checked(data, limits=limits, uri=uri)
    with src:
        stream.codec_context.thread_count = 1  # one core per actor: parallel over videos
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        width, height = output_size(stream.codec_context.width, stream.codec_context.height,
                                    short_side)
        counted = _Counter(_limited_frames(src, stream, limits, deadline, uri))
        sink = io.BytesIO()
        written = encode_h264(counted, sink, width=width, height=height, fps=rate, keyint=keyint,
                              crf=crf, preset=preset)
    return sink.getvalue(), {"num_frames": counted.count, "out_num_frames": written,
                             "out_width": width, "out_height": height}


def _limited_frames(container: Any, stream: Any, limits: VideoLimits, deadline: DecodeDeadline,
                    uri: str) -> Iterable[Any]:
    """The stream's frames, demuxed packet by packet (none kept): at most ``limits.max_packets``
    packets, the deadline checked between packets and frames."""
    for packet in limited_packets(container, stream, limits=limits, deadline=deadline, uri=uri):
        for frame in packet.decode():
            deadline.check()
            yield frame


def relative_below(uri: str, root: str) -> Optional[str]:
    """The normalised path of ``uri`` strictly below the folder ``root`` (``train/a/x.mp4``), or
    None when it is not below it (``..``, another folder, bucket or scheme: ``storage.is_below``)
    or not in the root's form (``file://`` against a plain path)."""
    if not storage.is_below(uri, root):
        return None
    path, base = storage.normalise(uri), storage.normalise(root).rstrip("/")
    if not path.startswith(base + "/"):
        return None
    rel = path[len(base) + 1:]
    return rel or None


class _Counter:
    """Iterates frames and counts them (the source count is compared with what was written)."""

    def __init__(self, frames: Iterable[Any]):
        self.frames, self.count = frames, 0

    def __iter__(self):
        for frame in self.frames:
            self.count += 1
            yield frame


class TranscodeFn:
    """``map_batches`` callable: read, re-encode and write each video of a pandas batch.

    The output keeps the video's path relative to ``root`` below ``out_root``. A bad video gets
    a status (missing / empty / undecodable / too_large / frame_size / too_many_packets / timeout /
    unreachable) and an error instead of stopping the job; a row not below ``root`` (after
    normalising) gets ``outside_root`` and nothing is read or written for it.
    """

    def __init__(self, *, root: str, out_root: str, short_side: int = DEFAULT_SHORT_SIDE,
                 keyint: int = DEFAULT_KEYINT, crf: int = 23, preset: str = "veryfast",
                 endpoint_url: str = "", limits: Optional[VideoLimits] = None):
        self.root, self.out_root, self.endpoint_url = root, out_root, endpoint_url
        self.options = {"short_side": short_side, "keyint": keyint, "crf": crf, "preset": preset}
        self.limits = VideoLimits() if limits is None else limits
        self.identity = worker_identity()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        existing = batch[EXISTING] if EXISTING in batch else [0] * len(batch)
        results = []
        for uri, size in zip(batch["uri"], existing):
            start = time.time()
            results.append({**self._one(uri, int(size)), **self.identity, "t_start": start, "t_end": time.time()})
        columns = [*TRANSCODE_COLUMNS[1:], *RECORD_COLUMNS]
        return batch.drop(columns=[EXISTING], errors="ignore").assign(
            **{c: [r[c] for r in results] for c in columns})

    def _one(self, uri: str, existing: int = 0) -> dict[str, Any]:
        """One video: ``existing`` > 0 is the size of an output a killed run of the same command left
        (written whole, not yet recorded): kept when it checks out (``adopt``), else encoded again."""
        deadline = self.limits.deadline(uri)  # before anything else: the read counts too
        result = {"out_uri": "", "status": "ok", "error": "", "num_frames": 0,
                  "out_num_frames": 0, "out_width": 0, "out_height": 0, "out_size": 0, "action": "failed"}
        out_uri = self.out_uri(uri)
        if out_uri is None:
            return {**result, "status": "outside_root",
                    "error": f"not below root {self.root!r} once normalised: not read, nothing written"}
        result["out_uri"] = out_uri
        try:
            data = storage.read_bytes(uri, endpoint_url=self.endpoint_url, max_bytes=self.limits.max_bytes)
        except storage.ObjectTooLargeError as exc:
            return {**result, "status": "too_large", "error": exc.cause}
        except storage.MissingObjectError as exc:
            return {**result, "status": "missing", "error": exc.cause}
        except storage.UnreachableError as exc:
            return {**result, "status": "unreachable", "error": exc.cause[:300]}
        if not data:
            return {**result, "status": "empty", "error": "zero bytes"}
        if existing > 0:
            kept = self.adopt(data, out_uri, uri)
            if kept is not None:
                return {**result, **kept, "out_size": existing, "action": "adopted"}
        try:
            encoded, info = transcode_video(data, **self.options, limits=self.limits, uri=uri,
                                            deadline=deadline)
        except BadVideo as bad:
            return {**result, "status": bad.reason, "error": bad.detail[:300]}
        except Exception as exc:  # PyAV raises av.error.* (InvalidDataError, ...) or ValueError
            return {**result, "status": "undecodable", "error": f"{type(exc).__name__}: {exc}"[:300]}
        if info["num_frames"] == 0:
            return {**result, "status": "undecodable", "error": "no frames decoded"}
        storage.write_bytes(out_uri, encoded, endpoint_url=self.endpoint_url)
        return {**result, **info, "out_size": len(encoded), "action": "encoded"}

    def out_uri(self, uri: str) -> Optional[str]:
        """Where ``uri``'s copy goes (always .mp4), strictly below ``out_root``; None if ``uri`` is
        not below ``root``. Both checked after normalising, so no row writes or makes a folder outside."""
        rel = relative_below(uri, self.root)
        if rel is None:
            return None
        head, _, name = rel.rpartition("/")
        if not name.lower().endswith(".mp4"):
            name = (name.rsplit(".", 1)[0] if "." in name else name) + ".mp4"  # the container is always mp4
        out_uri = storage.join(self.out_root, f"{head}/{name}" if head else name)
        return out_uri if storage.is_below(out_uri, self.out_root) else None

    def adopt(self, source: bytes, out_uri: str, uri: str) -> Optional[dict[str, Any]]:
        """What ``transcode_video`` would report for an output already written, if it is one: an H.264
        .mp4 of the size ``output_size`` gives for the source and as many packets as the source's video
        stream (±1), both demuxed, nothing decoded. None: not so (encode again)."""
        try:
            src = _stream_facts(source, uri, self.limits)
            out = _stream_facts(storage.read_bytes(out_uri, endpoint_url=self.endpoint_url), out_uri, self.limits)
        except Exception:  # unreadable, cut, over a limit: encode again
            return None
        want = output_size(src["width"], src["height"], self.options["short_side"])
        if out["codec"] != "h264" or (out["width"], out["height"]) != want or abs(out["packets"] - src["packets"]) > 1:
            return None
        return {"num_frames": src["packets"], "out_num_frames": out["packets"], "out_width": out["width"],
                "out_height": out["height"]}


def _stream_facts(data: bytes, uri: str, limits: VideoLimits) -> dict[str, Any]:
    """Codec, coded size and packet count of a video's stream (demuxed under ``limits``, not decoded)."""

    limits.check_bytes(len(data), uri)
    container, stream = open_checked(data, limits=limits, uri=uri)
    with container:
        packets = 0
        for packet in container.demux(stream):
            if packet.size:
                packets += 1
                limits.check_packets(packets, uri)
        return {"codec": stream.codec_context.name, "width": stream.codec_context.width,
                "height": stream.codec_context.height, "packets": packets}


def transcode_dataset(df: pd.DataFrame, *, root: str, out_root: str,
                      short_side: int = DEFAULT_SHORT_SIDE, keyint: int = DEFAULT_KEYINT,
                      crf: int = 23, preset: str = "veryfast", endpoint_url: str = "",
                      concurrency: Optional[int] = None,
                      limits: Optional[VideoLimits] = None, decode_resource: str = "auto",
                      progress_interval_s: float = 30.0, flush_s: float = 5.0,
                      root_listing: Optional[list[tuple[str, int]]] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Re-encode every video of the manifest below ``out_root`` (Ray Data actors, placed and sized by
    ``prepare_pool.plan_pool``: ``decode_resource``, ``concurrency``) and copy ``annotations/`` and list
    files; returns ``(manifest of the new root, per-video report)``.

    Resumable: each finished video is logged as results arrive below
    ``<out_root>/.nlray-prepare/transcode-<options>/`` (keyed by URI and size); a rerun with the same
    options skips what is logged (its output still there), keeps an output a killed run wrote but had not
    logged yet once it checks out (``TranscodeFn.adopt``), and encodes the rest. A progress line every
    ``progress_interval_s``. ``root_listing``: the root's listing if the caller has it (not listed again).

    A row not below ``root`` (normalised: ``root/../x.mp4`` is not) is reported ``outside_root``
    and nothing is written for it; ValueError when no row is below ``root``."""
    if df.empty:
        raise ValueError(f"nothing to transcode: the manifest of {root!r} is empty")
    outside = [u for u in df["uri"] if relative_below(u, root) is None]
    if len(outside) == len(df):
        raise ValueError(f"no video of the manifest is below root={root!r} (e.g. {outside[0]!r}); "
                         "transcoding keeps paths relative to the root")
    limits = VideoLimits() if limits is None else limits
    fn_kwargs = {"root": root, "out_root": out_root, "short_side": short_side, "keyint": keyint,
                 "crf": crf, "preset": preset, "endpoint_url": endpoint_url, "limits": limits}
    options = {k: v for k, v in fn_kwargs.items() if k not in ("endpoint_url", "limits")}
    options["limits"] = dataclasses.asdict(limits)
    folder = pp.step_folder(out_root, "transcode", options)
    marker = storage.join(folder, "options.json")
    resuming = storage.exists(marker, endpoint_url=endpoint_url)
    if not resuming:  # before any output: an output found later was written with these options
        storage.write_bytes(marker, json.dumps(options, sort_keys=True).encode(), endpoint_url=endpoint_url)
    log = pp.ResultsLog(folder, endpoint_url=endpoint_url, flush_s=flush_s)
    keys = ("uri", "size")
    df = df if "size" in df.columns else df.assign(size=-1)
    outputs = dict(_listing(out_root, endpoint_url)) if resuming else {}
    wanted = set(zip(df["uri"], df["size"]))
    done = {k: r for k, r in pp.latest_by_key(log.load(), keys).items()
            if k in wanted and r.get("status") not in pp.RETRIED
            and (r.get("status") != "ok" or outputs.get(r.get("out_uri")) == r.get("out_size"))}
    todo = df[[k not in done for k in zip(df["uri"], df["size"])]]
    fn = TranscodeFn(**fn_kwargs)
    todo = todo.assign(**{EXISTING: [outputs.get(fn.out_uri(u) or "", 0) for u in todo["uri"]]})
    plan = pp.plan_pool(decode_resource, DECODE_RESOURCE, concurrency or 0)
    results = pp.run_logged("transcode", len(df), todo, done, TranscodeFn, fn_kwargs, plan,
                            columns=[*TRANSCODE_COLUMNS, "size", *RECORD_COLUMNS], keys=keys, log=log,
                            batch_size=2, progress_interval_s=progress_interval_s)
    report = pd.DataFrame([results[k] for k in zip(df["uri"], df["size"])],
                          columns=[*TRANSCODE_COLUMNS, "action"])
    report = report.fillna({"error": "", "action": "earlier"}).astype(
        {c: "int64" for c in ("num_frames", "out_num_frames", "out_width", "out_height", "out_size")})
    report.index = df.index
    copy_annotations(root, out_root, endpoint_url=endpoint_url, listing=root_listing)
    return _new_manifest(df, report), report[list(TRANSCODE_COLUMNS)].reset_index(drop=True)


def _new_manifest(df: pd.DataFrame, report: pd.DataFrame) -> pd.DataFrame:
    """The new root's manifest: ``df``'s rows whose ``report`` row (same index) is ok, each pointing at its
    output (uri, size, num_frames, width, height); ``df``'s columns less status and error."""
    ok = pd.concat([df.drop(columns=[c for c in TRANSCODE_COLUMNS if c in df and c != "uri"]),
                    report.drop(columns=["uri"])], axis=1)
    ok = ok[ok["status"] == "ok"]
    new = ok.assign(uri=ok["out_uri"], size=ok["out_size"], num_frames=ok["out_num_frames"],
                    width=ok["out_width"], height=ok["out_height"])
    keep = [c for c in df.columns if c not in ("status", "error")] + ["num_frames", "width", "height"]
    return new[list(dict.fromkeys(keep))].reset_index(drop=True)


def _listing(uri: str, endpoint_url: str) -> list[tuple[str, int]]:
    try:
        return storage.list_files(uri, suffixes=None, endpoint_url=endpoint_url)
    except storage.MissingObjectError:
        return []


def copy_annotations(root: str, out_root: str, *, endpoint_url: str = "",
                     listing: Optional[list[tuple[str, int]]] = None) -> list[str]:
    """Copy ``annotations/`` and top-level list/label files of a dataset root; returns them.
    ``listing``: the root's ``storage.list_files(root, suffixes=None)`` if the caller has it already."""
    copied = []
    if listing is None:
        listing = storage.list_files(root, suffixes=None, endpoint_url=endpoint_url)
    for uri, _ in listing:
        rel = storage.relative_to(uri, root)
        top_level_list = "/" not in rel and (rel.lower().endswith(LIST_SUFFIXES)
                                             or rel in ("labels.json", "classids.json"))
        if rel.startswith("annotations/") or top_level_list:
            dest = storage.join(out_root, rel)
            storage.write_bytes(dest, storage.read_bytes(uri, endpoint_url=endpoint_url),
                                endpoint_url=endpoint_url)
            copied.append(dest)
    return copied
