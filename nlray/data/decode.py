"""Decode only the frames a clip needs, from a video's bytes: the public API over the backends.

    limits = VideoLimits.from_config(cfg.data)  # or VideoLimits(): the defaults
    data = fetch_video(uri, max_bytes=limits.max_bytes)  # BadVideo("missing" | "empty" | "too_large" | ...)
    with open_video(data, backend="pyav", uri=uri, limits=limits) as video:
        idx = train_indices(video.num_frames, frames=32, stride=2, rng=rng)
        clip = read_frames(video, idx, short_side=288)    # uint8 [32, 288, 512, 3]
        crop = read_frames(video, idx, short_side=288, crop=Crop(size=224, fy=0.3, fx=0.9))  # [32,224,224,3]

Two backends behind the ``Video`` interface, both single-threaded (one clip decoder = one core;
scale out with more decoders), one module each: ``pyav`` (default; ``nlray.data.decode_pyav``) and
``decord`` (``nlray.data.decode_decord``). A new backend is a new module and a row of ``_BACKEND_CLASSES``.

The ten clips of an eval video come from one opening and one pass: ``read_frames`` takes the union
of all indices, decodes it once and gathers each clip from it.

A bad video raises ``BadVideo(reason, uri, detail)`` (``nlray.data.badvideo`` says which reason).
``open_video(..., limits=)`` bounds what one video may cost (``VideoLimits``; default: its defaults):
its bytes (``too_large``), its frame size and aspect, judged from the codec parameters before any frame
buffer (``frame_size``), the packets demuxed (``too_many_packets``) and the time from before the
container checks and the opening to the last frame read (``timeout``: checked between container boxes,
packets and frames with PyAV; around the calls with decord, after a PyAV pass that enforces the others).
``fetch_video(..., max_bytes=)`` has the store refuse an object over the byte limit without reading it all.
"""
from __future__ import annotations

from typing import Optional, Protocol

import numpy as np

from nlray.choices import DECODE_BACKENDS, check_choice
from nlray.data import storage
from nlray.data.badvideo import BadVideo, DecodeDeadline, VideoLimits, container_truncated, failure_reason
from nlray.data.decode_decord import DecordVideo
from nlray.data.decode_pyav import PyAVVideo
from nlray.data.storage import MissingObjectError, UnreachableError
from nlray.data.transforms import Crop, CropError

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Video", "fetch_video", "open_video", "read_frames", "read_unique"]

BACKENDS = DECODE_BACKENDS
DEFAULT_BACKEND = "pyav"  # bench_decode.py: faster than decord and than PyAV seek+decode per core


class Video(Protocol):
    """An opened video: its frame count and fps, and decoding of chosen frames."""

    num_frames: int
    fps: float
    data: bytes  # the bytes it was opened from (to classify a failure)
    uri: str
    deadline: DecodeDeadline  # when decoding must be over (raises BadVideo("timeout"))

    def frames(self, indices: np.ndarray, *, short_side: Optional[int],
               crop: Optional[Crop] = None) -> np.ndarray: ...
    def close(self) -> None: ...


_BACKEND_CLASSES = {"pyav": PyAVVideo, "decord": DecordVideo}  # one per DECODE_BACKENDS
assert tuple(_BACKEND_CLASSES) == BACKENDS


def fetch_video(uri: str, *, endpoint_url: str = "", max_bytes: Optional[int] = None) -> bytes:
    """The video's bytes (S3 or local); a missing object, 0 bytes, an object over ``max_bytes``
    (``too_large``: the store stops at the limit, no separate size request) or a store that failed
    every retry for it raises BadVideo. Other storage errors (auth, missing bucket) concern every
    video: they raise."""
    try:
        data = storage.read_bytes(uri, endpoint_url=endpoint_url, max_bytes=max_bytes)
    except storage.ObjectTooLargeError as exc:
        raise BadVideo("too_large", uri, f"{exc.size} bytes, over the limit of {exc.limit} "
                                         "(data.max_video_bytes)") from None
    except MissingObjectError as exc:
        raise BadVideo("missing", uri, str(exc)) from None
    except UnreachableError as exc:
        raise BadVideo("unreachable", uri, exc.cause[:500]) from None
    if not data:
        raise BadVideo("empty", uri, "0 bytes")
    return data


def open_video(data: bytes, *, backend: str = DEFAULT_BACKEND, uri: str = "",
               limits: Optional[VideoLimits] = None) -> Video:
    """Open a video from its bytes with ``backend`` (one of BACKENDS); BadVideo if it cannot be.

    ``limits``: what it may cost (module doc; None: ``VideoLimits()``, the defaults). Its ``timeout_s``
    counts from now, before the container checks, to the last frame read from it."""
    check_choice("backend", backend, BACKENDS)
    limits = VideoLimits() if limits is None else limits
    deadline = limits.deadline(uri)  # first: the container checks and the opening count too
    if not data:
        raise BadVideo("empty", uri, "0 bytes")
    limits.check_bytes(len(data), uri)  # bytes that did not come through fetch_video
    if container_truncated(data, deadline):  # decided up front: a cut file is dropped whichever clip is asked
        raise BadVideo("truncated", uri, f"the container runs past the end of the data ({len(data)} bytes)")
    try:
        video = _BACKEND_CLASSES[backend](data, uri=uri, deadline=deadline, limits=limits)
    except BadVideo:
        raise
    except Exception as exc:  # each library has its own error types; all mean "cannot open"
        raise failure_reason(data, uri, exc) from None
    if video.num_frames < 1:
        raise BadVideo("undecodable", uri, "no frames")
    return video


def read_frames(video: Video, indices: np.ndarray, *, short_side: Optional[int] = None,
                crop: Optional[Crop] = None) -> np.ndarray:
    """uint8 [*indices.shape, H, W, 3]: every index decoded once, in one pass, whatever the shape.

    ``indices`` may repeat and come in any order (e.g. [num_clips, T] eval clips that overlap).
    ``short_side`` scales the shorter side; ``crop`` then keeps one square of that scaled frame.
    """
    idx = np.asarray(indices, dtype=np.int64)
    frames, inverse = read_unique(video, idx, short_side=short_side, crop=crop)
    if len(frames) == idx.size and (np.diff(idx.ravel()) > 0).all():
        return frames.reshape(*idx.shape, *frames.shape[1:])  # already sorted and unique: no copy
    return frames[inverse.reshape(-1)].reshape(*idx.shape, *frames.shape[1:])


def read_unique(video: Video, indices: np.ndarray, *, short_side: Optional[int] = None,
                crop: Optional[Crop] = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [U, H, W, 3] the distinct frames, sorted; int64 ``inverse`` shaped like ``indices``).

    ``frames[inverse]`` is what ``read_frames`` returns; crops can be taken without that copy.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= video.num_frames:
        raise ValueError(f"frame indices must lie in [0, {video.num_frames}); got "
                         f"{idx.min() if idx.size else 'none'}..{idx.max() if idx.size else ''}")
    uniq, inverse = np.unique(idx.ravel(), return_inverse=True)  # sorted union; idx = uniq[inverse]
    try:
        frames = video.frames(uniq, short_side=short_side, crop=crop)  # (U, H, W, 3)
    except (BadVideo, CropError):
        raise
    except Exception as exc:
        raise failure_reason(video.data, video.uri, exc) from None
    return frames, inverse.reshape(idx.shape)
