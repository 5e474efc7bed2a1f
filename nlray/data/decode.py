"""Decode only the frames a clip needs, from a video's bytes; classify a bad video by reason.

    data = fetch_video(uri)                               # BadVideo("missing" | "empty", ...)
    with open_video(data, backend="pyav", uri=uri) as video:
        idx = train_indices(video.num_frames, frames=32, stride=2, rng=rng)
        clip = read_frames(video, idx, short_side=288)    # uint8 [32, 288, 512, 3]

Two backends, both single-threaded (one clip decoder = one core; scale out with more decoders):

- ``pyav`` (default; measured fastest by ``jobs/bench_decode.py``): demuxes the packets once (no
  decoding), then for the wanted frames decodes from the keyframe before the first one to the last
  one in ONE pass. Packets whose frame is not wanted are sent with ``skip_frame=NONREF``, so the
  decoder drops them outright when no other frame refers to them (the non-reference B-frames, a
  third to a half of a typical H.264 stream); only wanted frames are converted to RGB, by swscale,
  straight to the output size. A gap longer than a GOP between wanted frames is jumped over.
- ``decord``: ``VideoReader(BytesIO, num_threads=1).get_batch(sorted unique indices)``, which seeks
  to the keyframe before each wanted run and skips forward (decoding, not converting) inside it;
  resizing happens afterwards (decord has no way to ask the size first without decoding a frame,
  and its own resize fails for some widths). decord 0.6 also fails outright ("DECORDArrayCopyFromTo:
  The size must exactly match") on frames 16, 24, 48 or 72 pixels wide; such a video counts as
  undecodable with this backend.

The ten clips of an eval video come from one opening and one pass: ``read_frames`` takes the union
of all indices, decodes it once and gathers each clip from it.

A bad video raises ``BadVideo(reason, uri, detail)`` with reason one of ``REASONS``: ``missing`` (no
such object), ``empty`` (0 bytes), ``truncated`` (an MP4/MOV or Matroska/WebM container whose boxes /
segment run past the end of the bytes, or an MP4 that ends before its index: checked when the video
is opened, so a cut file is always dropped, even when the part a clip wants would still decode),
``undecodable`` (anything else that cannot give the wanted frames: not a video, no video stream,
frames that do not decode).
"""
from __future__ import annotations

import io
from typing import Optional, Protocol

import numpy as np

__all__ = ["REASONS", "BACKENDS", "DEFAULT_BACKEND", "BadVideo", "Video", "PyAVVideo", "DecordVideo",
           "fetch_video", "open_video", "read_frames", "scaled_size", "container_truncated"]

REASONS = ("missing", "empty", "truncated", "undecodable")
BACKENDS = ("pyav", "decord")
DEFAULT_BACKEND = "pyav"  # bench_decode.py: faster than decord and than PyAV seek+decode per core


class BadVideo(Exception):
    """A video that cannot give its clip; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, uri: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"bad-video reason {reason!r} is not one of {list(REASONS)}")
        super().__init__(f"{uri or '<bytes>'}: {reason}: {detail}")
        self.reason, self.uri, self.detail = reason, uri, detail

    def __reduce__(self):  # picklable across Ray processes despite the custom __init__
        return BadVideo, (self.reason, self.uri, self.detail)


class Video(Protocol):
    """An opened video: its frame count and fps, and decoding of chosen frames."""

    num_frames: int
    fps: float
    data: bytes  # the bytes it was opened from (to classify a failure)
    uri: str

    def frames(self, indices: np.ndarray, *, short_side: Optional[int]) -> np.ndarray: ...
    def close(self) -> None: ...


def scaled_size(width: int, height: int, *, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``short_side`` and the aspect ratio kept."""
    if short_side < 1:
        raise ValueError(f"short_side={short_side!r} must be >= 1")
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


# ------------------------------------------------------------------------------- classification


def _iso_bmff_truncated(data: bytes) -> bool:
    """Top-level MP4/MOV boxes: one running past the end, or no 'moov' at all, means truncated."""
    pos, n, seen = 0, len(data), set()
    while pos < n:
        if n - pos < 8:
            return True  # a box header cut short
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        head = 8
        if size == 1:  # 64-bit size follows the type
            if n - pos < 16:
                return True
            size, head = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif size == 0:  # box runs to the end of the file
            size = n - pos
        if size < head or not all(32 <= c < 127 for c in kind):
            return False  # not a box header (4 printable characters): corrupt, not cut
        seen.add(kind)
        if pos + size > n:
            return True
        pos += size
    return b"moov" not in seen


def _ebml_vint(data: bytes, pos: int) -> tuple[int, int, bool]:
    """(value, length, all_ones) of the EBML variable-size integer at ``pos``."""
    first = data[pos]
    length = 9 - first.bit_length() if first else 9
    if length > 8 or pos + length > len(data):
        raise IndexError("bad vint")
    value = first & (0xFF >> length)
    for b in data[pos + 1:pos + length]:
        value = (value << 8) | b
    return value, length, value == (1 << (7 * length)) - 1


def _matroska_truncated(data: bytes) -> bool:
    """EBML header then a Segment whose declared size runs past the end means truncated."""
    try:
        size, ln, _ = _ebml_vint(data, 4)
        pos = 4 + ln + size  # end of the EBML header element
        if pos + 4 > len(data):
            return True
        if data[pos:pos + 4] != b"\x18\x53\x80\x67":
            return False
        size, ln, unknown = _ebml_vint(data, pos + 4)
        return not unknown and pos + 4 + ln + size > len(data)
    except IndexError:
        return True


def container_truncated(data: bytes) -> bool:
    """True when an MP4/MOV or Matroska/WebM container is cut short; False otherwise or unknown."""
    if len(data) >= 8 and data[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return _iso_bmff_truncated(data)
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return _matroska_truncated(data)
    return False


def _bad(data: bytes, uri: str, exc: BaseException) -> BadVideo:
    reason = "truncated" if container_truncated(data) else "undecodable"
    return BadVideo(reason, uri, f"{type(exc).__name__}: {exc}"[:500])


# ------------------------------------------------------------------------------------- backends


class PyAVVideo:
    """PyAV: packets demuxed once; wanted frames decoded in one pass, unwanted non-reference skipped."""

    def __init__(self, data: bytes, *, uri: str = ""):
        import av

        self.data, self.uri = data, uri
        self._container = av.open(io.BytesIO(data), "r")
        if not self._container.streams.video:
            raise ValueError("no video stream")
        self._stream = stream = self._container.streams.video[0]
        self._cc = stream.codec_context
        self._cc.thread_count = 1  # one decoder = one core
        self._cc.thread_type = "NONE"
        self._packets = [p for p in self._container.demux(stream)
                         if p.size and not p.is_discard and (p.pts if p.pts is not None else p.dts) is not None]
        if not self._packets:
            raise ValueError("no video packets")
        pts = np.array([p.pts if p.pts is not None else p.dts for p in self._packets], np.int64)
        order = np.argsort(pts, kind="stable")  # presentation order -> decode position
        self._pos_of_frame = order  # frame index i is packet self._packets[order[i]]
        self._index_of_pts = {int(pts[pos]): i for i, pos in enumerate(order)}
        self._frame_of_pos = np.empty_like(order)
        self._frame_of_pos[order] = np.arange(len(order))
        self._keys = np.flatnonzero([p.is_keyframe for p in self._packets])  # decode positions
        self._pts = pts
        self.num_frames = len(self._packets)
        self.fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        self.width, self.height = self._cc.width, self._cc.height
        self.packets_sent = 0

    def _start_key(self, frame: int) -> int:
        """Decode position of the keyframe to start from for ``frame`` (0 if none before it)."""
        pos = self._pos_of_frame[frame]
        j = int(np.searchsorted(self._keys, pos, side="right")) - 1
        # an open-GOP leading frame shows before its keyframe: start one keyframe earlier
        while j >= 0 and self._pts[self._keys[j]] > self._pts[pos]:
            j -= 1
        return int(self._keys[j]) if j >= 0 else 0

    def frames(self, indices: np.ndarray, *, short_side: Optional[int]) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] for sorted unique frame indices."""
        w, h = (self.width, self.height) if short_side is None else scaled_size(
            self.width, self.height, short_side=short_side)
        out = np.empty((len(indices), h, w, 3), np.uint8)
        self.packets_sent = 0  # packets handed to the decoder by this call (tests check the seeking)
        slot = {int(i): k for k, i in enumerate(indices)}  # frame index -> row of out
        done = np.zeros(len(indices), bool)
        state = _PassState(out=out, slot=slot, done=done, size=(w, h))
        pos, started = 0, False
        for p in np.sort(self._pos_of_frame[indices]):  # wanted frames in decode order
            if p < pos:
                continue  # already sent; its frame comes out of the decoder in display order
            key = self._start_key(int(self._frame_of_pos[p]))
            if not started or key > pos:  # start, or jump over a gap longer than a GOP
                if started:
                    self._drain(state)
                pos, started = max(key, 0), True
            self._send(range(pos, int(p) + 1), state)
            pos = int(p) + 1
        self._drain(state)
        if not done.all():
            missing = [int(i) for i, d in zip(indices, done) if not d]
            raise RuntimeError(f"frames {missing[:8]} of {self.num_frames} did not decode"
                               + (f" ({state.error})" if state.error else ""))
        return out

    def _send(self, positions: range, state: "_PassState") -> None:
        import av

        for q in positions:
            wanted = int(self._frame_of_pos[q]) in state.slot
            skip = "DEFAULT" if wanted else "NONREF"
            if self._cc.skip_frame != skip:
                self._cc.skip_frame = skip
            self.packets_sent += 1
            try:
                for frame in self._cc.decode(self._packets[q]):
                    self._take(frame, state)
            except av.error.FFmpegError as exc:  # a damaged packet: keep going, judge by what decodes
                state.error = state.error or f"{type(exc).__name__}: {exc}"

    def _drain(self, state: "_PassState") -> None:
        import av

        try:
            for frame in self._cc.decode(None):
                self._take(frame, state)
        except av.error.FFmpegError as exc:
            state.error = state.error or f"{type(exc).__name__}: {exc}"
        self._cc.flush_buffers()  # out of the drained (EOF) state: ready for the next pass

    def _take(self, frame, state: "_PassState") -> None:
        i = self._index_of_pts.get(frame.pts)
        k = state.slot.get(i) if i is not None else None
        if k is not None and not state.done[k]:
            w, h = state.size
            state.out[k] = frame.to_ndarray(width=w, height=h, format="rgb24", threads=1)
            state.done[k] = True

    def close(self) -> None:
        self._container.close()


class _PassState:
    """Where one decoding pass puts its frames."""

    def __init__(self, *, out: np.ndarray, slot: dict, done: np.ndarray, size: tuple[int, int]):
        self.out, self.slot, self.done, self.size = out, slot, done, size
        self.error = ""


class DecordVideo:
    """decord: ``get_batch`` of sorted unique indices on a single-threaded VideoReader; resize after."""

    def __init__(self, data: bytes, *, uri: str = ""):
        import decord

        self.data, self.uri = data, uri
        self._reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())

    def frames(self, indices: np.ndarray, *, short_side: Optional[int]) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] for sorted unique frame indices."""
        from nlray.data.transforms import short_side_scale

        batch = self._reader.get_batch(indices.tolist()).asnumpy()  # (K, H, W, 3) native size
        return batch if short_side is None else short_side_scale(batch, size=short_side)

    def close(self) -> None:
        self._reader = None


_BACKEND_CLASSES = {"pyav": PyAVVideo, "decord": DecordVideo}


# ------------------------------------------------------------------------------------ public API


def fetch_video(uri: str, *, endpoint_url: str = "") -> bytes:
    """The video's bytes (S3 or local); a missing object or 0 bytes raises BadVideo."""
    from nlray.data.storage import MissingObjectError, read_bytes

    try:
        data = read_bytes(uri, endpoint_url=endpoint_url)
    except MissingObjectError as exc:
        raise BadVideo("missing", uri, str(exc)) from None
    if not data:
        raise BadVideo("empty", uri, "0 bytes")
    return data


def open_video(data: bytes, *, backend: str = DEFAULT_BACKEND, uri: str = "") -> Video:
    """Open a video from its bytes with ``backend`` (one of BACKENDS); BadVideo if it cannot be."""
    cls = _BACKEND_CLASSES.get(backend)
    if cls is None:
        raise ValueError(f"backend={backend!r} is not one of {list(BACKENDS)}")
    if not data:
        raise BadVideo("empty", uri, "0 bytes")
    if container_truncated(data):  # decided up front, so a cut file is dropped whichever clip is asked
        raise BadVideo("truncated", uri, f"the container runs past the end of the data ({len(data)} bytes)")
    try:
        video = cls(data, uri=uri)
    except Exception as exc:  # each library has its own error types; all mean "cannot open"
        raise _bad(data, uri, exc) from None
    if video.num_frames < 1:
        raise BadVideo("undecodable", uri, "no frames")
    return video


def read_frames(video: Video, indices: np.ndarray, *, short_side: Optional[int] = None) -> np.ndarray:
    """uint8 [*indices.shape, H, W, 3]: every index decoded once, in one pass, whatever the shape.

    ``indices`` may repeat and come in any order (e.g. [num_clips, T] eval clips that overlap).
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= video.num_frames:
        raise ValueError(f"frame indices must lie in [0, {video.num_frames}); got "
                         f"{idx.min() if idx.size else 'none'}..{idx.max() if idx.size else ''}")
    uniq, inverse = np.unique(idx.ravel(), return_inverse=True)  # sorted union; idx = uniq[inverse]
    try:
        frames = video.frames(uniq, short_side=short_side)  # (U, H, W, 3)
    except BadVideo:
        raise
    except Exception as exc:
        raise _bad(video.data, video.uri, exc) from None
    if len(uniq) == idx.size and (np.diff(idx.ravel()) > 0).all():
        return frames.reshape(*idx.shape, *frames.shape[1:])  # already sorted and unique: no copy
    return frames[inverse.reshape(-1)].reshape(*idx.shape, *frames.shape[1:])
