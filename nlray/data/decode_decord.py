"""The decord decode backend: ``VideoReader(BytesIO, num_threads=1).get_batch(sorted unique indices)``.

Single-threaded, like the PyAV backend. decord seeks to the keyframe before each wanted run and
skips forward (decoding, not converting) inside it; resizing happens afterwards (decord has no way
to ask the size first without decoding a frame, and its own resize fails for some widths). decord
0.6 also fails outright ("DECORDArrayCopyFromTo: The size must exactly match") on frames 16, 24,
48 or 72 pixels wide; such a video counts as undecodable with this backend. decord decodes a whole
batch in one call, so its time limit (``DecodeDeadline``) is checked only around the calls.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from nlray.data.badvideo import DecodeDeadline
from nlray.data.transforms import Crop, crop_origin, short_side_scale

__all__ = ["DecordVideo"]


class DecordVideo:
    """decord: ``get_batch`` of sorted unique indices on a single-threaded VideoReader; resize after."""

    def __init__(self, data: bytes, *, uri: str = "", deadline: Optional[DecodeDeadline] = None):
        import decord

        self.data, self.uri = data, uri
        self.deadline = deadline or DecodeDeadline(None, uri)
        self._reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())
        self.deadline.check()

    def frames(self, indices: np.ndarray, *, short_side: Optional[int],
               crop: Optional[Crop] = None) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] for sorted unique frame indices (H = W = crop.size with a crop)."""
        self.deadline.check()
        batch = self._reader.get_batch(indices.tolist()).asnumpy()  # (K, H, W, 3) native size
        self.deadline.check()  # cannot stop decord mid-call: a late batch is still dropped
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
