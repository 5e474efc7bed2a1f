"""Which frames a clip takes (docs/paper.md "Training recipe", "Long clips", "Inference").

Indices count the video's own decoded frames, in presentation order (the frame count the decoder
reports). Clips are not resampled to a common fps: the paper samples frames, not seconds, and
Kinetics is almost all 25-30 fps; a 24 fps video gives a slightly longer clip in seconds.

- train: one window of ``frames * stride`` consecutive frames at a uniformly random start, every
  ``stride``-th kept (32x2: 64-frame window, 32 frames; 128x1: 128 consecutive frames).
- eval: ``num_clips`` windows evenly over the whole video: clip k is centred at (k + 0.5) / num_clips
  of the video (PySlowFast spaces starts evenly instead; centring treats both ends alike), clamped so
  that every window lies inside the video when it fits. Starts are then rounded down to a multiple
  of ``stride`` (a shift of at most stride - 1 frames, 1/30 s for 32x2) so that overlapping clips
  take the same frames: the single decoding pass over all clips of a video then decodes and
  converts each shared frame once (for 10 x 32x2 on a 300-frame video: 150 frames, not 201).
- A video shorter than the window is LOOPED, never dropped: the window starts at frame 0 and its
  indices wrap around (``index % num_frames``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["train_indices", "eval_indices", "window_size"]


def _check(num_frames: int, frames: int, stride: int) -> None:
    for name, value in (("num_frames", num_frames), ("frames", frames), ("stride", stride)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")


def window_size(*, frames: int, stride: int) -> int:
    """Frames a clip spans in the video: 64 for 32x2, 128 for 128x1."""
    return frames * stride


def train_indices(num_frames: int, *, frames: int, stride: int,
                  rng: np.random.Generator) -> np.ndarray:
    """int64 [frames]: a random window of frames*stride frames, every stride-th frame (looped if short)."""
    _check(num_frames, frames, stride)
    window = window_size(frames=frames, stride=stride)
    start = int(rng.integers(0, num_frames - window + 1)) if num_frames >= window else 0
    return (start + np.arange(frames, dtype=np.int64) * stride) % num_frames


def eval_indices(num_frames: int, *, frames: int, stride: int, num_clips: int) -> np.ndarray:
    """int64 [num_clips, frames]: clip k centred at (k + 0.5) / num_clips of the video (looped if short)."""
    _check(num_frames, frames, stride)
    if int(num_clips) != num_clips or num_clips < 1:
        raise ValueError(f"num_clips={num_clips!r} must be an integer >= 1")
    window = window_size(frames=frames, stride=stride)
    centres = (np.arange(num_clips) + 0.5) * num_frames / num_clips  # (num_clips,)
    starts = np.clip(np.floor(centres - window / 2), 0, max(num_frames - window, 0)).astype(np.int64)
    starts -= starts % stride  # on a common grid: overlapping clips share frames
    offsets = np.arange(frames, dtype=np.int64) * stride  # (frames,)
    return (starts[:, None] + offsets[None, :]) % num_frames  # (num_clips, frames)
