"""The decoder actors of the pipeline: manifest rows in, uint8 clip rows out (``map_batches``).

``ClipDecoder`` makes one random training clip per video; ``EvalClipDecoder`` every view (clip x
crop) of a video from one opening and one decoding pass. A training clip is mirrored left-right
with probability 1/2 unless ``flip=False``; a mirrored clip takes the label ``flip_labels[label]``
(``transforms.flip_label_permutation``: a mirrored "moving_left" clip is a "moving_right" clip).
Clip positions, scales, crops and flips come from each decoder actor's own generator, seeded from
``seed`` and a random actor key: independent across actors, not bit-reproducible (which actor gets
which video is up to the scheduler). A bad video is reported to the named ``BadVideoLog`` actor
(``nlray.data.pipeline``) and skipped: its clip is simply absent.

Failures that must not stop training are bad videos: a video over one of its ``limits``
(``VideoLimits.from_config(cfg.data)``: ``too_large``, ``frame_size``, ``too_many_packets``,
``timeout``), one the store failed to give through every retry
(``unreachable``). A store that fails ``MAX_UNREACHABLE_IN_A_ROW`` videos in a row is down, not
flaky: the decoder raises ``StorageError``, as it does at once for an auth error or a missing bucket.
"""
from __future__ import annotations

import uuid
from typing import Iterator, Optional, Sequence

import numpy as np
import ray

from nlray.data.badvideo import BadVideo, VideoLimits
from nlray.data.decode import fetch_video, open_video, read_frames, read_unique
from nlray.data.sampling import eval_indices, train_indices
from nlray.data.storage import StorageError
from nlray.data.transforms import Crop, crop_corners, flip_with_label

__all__ = ["ClipDecoder", "EvalClipDecoder", "MAX_UNREACHABLE_IN_A_ROW"]

# Unreachable videos in a row, with nothing fetched between them, that mean the store is down: with
# each video retried MAX_ATTEMPTS times (storage), a healthy but flaky store practically never does it.
MAX_UNREACHABLE_IN_A_ROW = 5


class _DecoderBase:
    """Fetch -> open -> sample -> decode; a bad video is reported and skipped."""

    def __init__(self, *, backend: str, endpoint_url: str, log_name: str, seed: int,
                 limits: Optional[VideoLimits]):
        self.backend, self.endpoint_url, self.log_name = backend, endpoint_url, log_name
        # None: the defaults, those of DataConfig (its decode_timeout_s: ~400x a 32x2 clip of a raw
        # Kinetics video, so only a pathological file is cut off)
        self.limits = VideoLimits() if limits is None else limits
        self.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(uuid.uuid4().int,)))
        self.bad_counts: dict[str, int] = {}  # this decoder's own tally (also outside Ray)
        self.unreachable_in_a_row = 0
        self._log = None

    def _fetched(self) -> None:
        """A video's bytes arrived: the store answers."""
        self.unreachable_in_a_row = 0

    def _report(self, bad: BadVideo) -> None:
        """Log a bad video; StorageError when the store has been failing video after video."""
        self._log_bad(bad)
        if bad.reason != "unreachable":
            self._fetched()
            return
        self.unreachable_in_a_row += 1
        if self.unreachable_in_a_row >= MAX_UNREACHABLE_IN_A_ROW:
            raise StorageError(bad.uri, f"{self.unreachable_in_a_row} videos in a row could not be fetched "
                                        f"through every retry: the store is down, not one video "
                                        f"(last: {bad.detail})")

    def _log_bad(self, bad: BadVideo) -> None:
        self.bad_counts[bad.reason] = self.bad_counts.get(bad.reason, 0) + 1
        if self._log is None and ray.is_initialized():
            try:
                self._log = ray.get_actor(self.log_name)
            except ValueError:  # used without the builders (no log): the local tally only
                return
        if self._log is not None:
            ray.get(self._log.report.remote(bad.uri, bad.reason, bad.detail))  # wait: counts complete

    def _open(self, uri: str):
        data = fetch_video(uri, endpoint_url=self.endpoint_url, max_bytes=self.limits.max_bytes)
        self._fetched()
        return open_video(data, backend=self.backend, uri=uri, limits=self.limits)


class ClipDecoder(_DecoderBase):
    """map_batches actor: rows (uri, label_id, video_idx) -> train clips uint8 [T, crop, crop, 3].

    ``flip``: mirror clips left-right with probability 1/2. ``flip_labels``: label id of a mirrored
    clip of each class (``flip_label_permutation``); None keeps every label.
    """

    def __init__(self, *, frames: int, stride: int, short_side: tuple[int, int], crop_size: int,
                 backend: str, endpoint_url: str = "", log_name: str, seed: int = 0,
                 limits: Optional[VideoLimits] = None, flip: bool = True,
                 flip_labels: Optional[Sequence[int]] = None):
        super().__init__(backend=backend, endpoint_url=endpoint_url, log_name=log_name, seed=seed,
                         limits=limits)
        self.frames, self.stride, self.crop_size = frames, stride, crop_size
        self.short_side = (int(short_side[0]), int(short_side[1]))
        self.flip = bool(flip)
        self.flip_labels = None if flip_labels is None else np.asarray(flip_labels, np.int64)

    def clip(self, uri: str) -> np.ndarray:
        """One training clip of the video at ``uri`` (maybe mirrored); BadVideo if it cannot be made."""
        return self.labelled_clip(uri, 0)[0]

    def labelled_clip(self, uri: str, label: int) -> tuple[np.ndarray, int]:
        """(clip, label of the clip): a mirrored clip has its class's mirror label."""
        with self._open(uri) as video:
            idx = train_indices(video.num_frames, frames=self.frames, stride=self.stride, rng=self.rng)
            size = int(self.rng.integers(self.short_side[0], self.short_side[1] + 1))  # short side
            crop = Crop(size=self.crop_size, fy=self.rng.random(), fx=self.rng.random())
            frames = read_frames(video, idx, short_side=size, crop=crop)  # (T, crop, crop, 3)
        if self.flip:
            frames, label = flip_with_label(frames, label, rng=self.rng, permutation=self.flip_labels)
        return np.ascontiguousarray(frames), label  # (T, crop, crop, 3), maybe mirrored

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        clips, labels, rows = [], [], []
        for uri, label, row in zip(batch["uri"], batch["label_id"], batch["video_idx"]):
            try:
                clip, label = self.labelled_clip(str(uri), int(label))
            except BadVideo as bad:
                self._report(bad)
                continue
            clips.append(clip)
            labels.append(label)
            rows.append(int(row))
        if clips:
            yield {"video": np.stack(clips), "label": np.asarray(labels, np.int64),
                   "video_idx": np.asarray(rows, np.int64)}


class EvalClipDecoder(_DecoderBase):
    """map_batches actor: rows -> num_clips x num_crops views per video, uint8 [T, crop, crop, 3]."""

    def __init__(self, *, frames: int, stride: int, short_side: int, crop_size: int, num_clips: int,
                 num_crops: int, backend: str, endpoint_url: str = "", log_name: str, seed: int = 0,
                 limits: Optional[VideoLimits] = None):
        super().__init__(backend=backend, endpoint_url=endpoint_url, log_name=log_name, seed=seed,
                         limits=limits)
        self.frames, self.stride, self.short_side = frames, stride, short_side
        self.crop_size, self.num_clips, self.num_crops = crop_size, num_clips, num_crops

    def views(self, uri: str) -> np.ndarray:
        """uint8 [num_clips, num_crops, T, crop, crop, 3] from one opening and one decoding pass."""
        with self._open(uri) as video:
            idx = eval_indices(video.num_frames, frames=self.frames, stride=self.stride,
                               num_clips=self.num_clips)  # (clips, T)
            uniq, inverse = read_unique(video, idx, short_side=self.short_side)  # (U, H, W, 3), (clips, T)
        s = self.crop_size
        corners = crop_corners(uniq.shape[1], uniq.shape[2], size=s, num_crops=self.num_crops)
        out = np.empty((self.num_clips, len(corners), self.frames, s, s, 3), np.uint8)
        for j, (y, x) in enumerate(corners):  # crop straight from the distinct frames: no clip copy
            window = uniq[:, y:y + s, x:x + s]  # (U, s, s, 3) view
            for c in range(self.num_clips):
                np.take(window, inverse[c], axis=0, out=out[c, j])  # (T, s, s, 3)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for uri, label, row in zip(batch["uri"], batch["label_id"], batch["video_idx"]):
            try:
                views = self.views(str(uri))
            except BadVideo as bad:
                self._report(bad)
                continue
            n_clips, n_crops = views.shape[:2]
            clip_idx, crop_idx = np.meshgrid(np.arange(n_clips), np.arange(n_crops), indexing="ij")
            n = n_clips * n_crops
            yield {"video": views.reshape(n, *views.shape[2:]),  # one video per output block
                   "label": np.full(n, int(label), np.int64), "video_idx": np.full(n, int(row), np.int64),
                   "clip_idx": clip_idx.reshape(n).astype(np.int64),
                   "crop_idx": crop_idx.reshape(n).astype(np.int64)}
