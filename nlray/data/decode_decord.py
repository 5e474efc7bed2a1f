"""The decord decode backend: ``VideoReader(BytesIO, num_threads=1).get_batch(sorted unique indices)``.

Single-threaded, like the PyAV backend. decord seeks to the keyframe before each wanted run and
skips forward (decoding, not converting) inside it; resizing happens afterwards (decord has no way
to ask the size first without decoding a frame, and its own resize fails for some widths). decord
0.6 also fails outright ("DECORDArrayCopyFromTo: The size must exactly match") on frames 16, 24,
48 or 72 pixels wide; such a video counts as undecodable with this backend. decord decodes a whole
batch in one call, so its time limit (``DecodeDeadline``) is checked only around the calls.

Limits (``VideoLimits``): decord gives neither the frame size nor a bound on the packets it indexes
before ``VideoReader`` has demuxed the whole file (~4 kB of index a packet: a flood of 200,000 tiny
packets is ~0.9 GB), and its FFmpeg (4.1, bundled) cannot be given ``max_pixels``. So the file is
first opened and demuxed by PyAV (``decode_pyav.open_checked`` + ``count_packets``: packets counted,
not kept, the deadline checked between them), and only a file within every limit reaches decord.
What decord itself then does cannot be bounded or interrupted (one ``VideoReader`` / ``get_batch``
call); the PyAV pass costs about one demux of the file.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from nlray.data.badvideo import DecodeDeadline, VideoLimits
from nlray.data.decode_pyav import NO_LIMITS, count_packets, open_checked
from nlray.data.transforms import Crop, crop_origin, short_side_scale

__all__ = ["DecordVideo"]


class DecordVideo:
    """decord: ``get_batch`` of sorted unique indices on a single-threaded VideoReader; resize after."""

    def __init__(self, data: bytes, *, uri: str = "", deadline: Optional[DecodeDeadline] = None,
                 limits: VideoLimits = NO_LIMITS):
        import decord

        self.data, self.uri, self.limits = data, uri, limits
        self.deadline = deadline or DecodeDeadline(None, uri)
        if limits != NO_LIMITS:  # judged by PyAV first: decord cannot be bounded (module doc)
            container, stream = open_checked(data, limits=limits, uri=uri)
            try:
                count_packets(container, stream, limits=limits, deadline=self.deadline, uri=uri)
            finally:
                container.close()
        self.deadline.check()
        self._reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())
        self.deadline.check()
        limits.check_packets(self.num_frames, uri)  # decord's own count (its FFmpeg may read otherwise)

    def frames(self, indices: np.ndarray, *, short_side: Optional[int],
               crop: Optional[Crop] = None) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] for sorted unique frame indices (H = W = crop.size with a crop)."""
        self.deadline.check()
        batch = self._reader.get_batch(indices.tolist()).asnumpy()  # (K, H, W, 3) native size
        self.deadline.check()  # cannot stop decord mid-call: a late batch is still dropped
        self.limits.check_frame_size(batch.shape[2], batch.shape[1], self.uri)  # as decord decoded it
        if short_side is not None:
            batch = short_side_scale(batch, size=short_side)
        if crop is None:
            return batch
        y, x = crop_origin(batch.shape[2], batch.shape[1], crop)
        return np.ascontiguousarray(batch[:, y:y + crop.size, x:x + crop.size])

    def close(self) -> None:
        self._reader = None

    def __enter__(self) -> "DecordVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
