"""Decode only the frames a clip needs, from a video's bytes; classify a bad video by reason.

    data = fetch_video(uri)                               # BadVideo("missing" | "empty", ...)
    with open_video(data, backend="pyav", uri=uri) as video:
        idx = train_indices(video.num_frames, frames=32, stride=2, rng=rng)
        clip = read_frames(video, idx, short_side=288)    # uint8 [32, 288, 512, 3]
        crop = read_frames(video, idx, short_side=288, crop=Crop(size=224, fy=0.3, fx=0.9))  # [32,224,224,3]

Two backends, both single-threaded (one clip decoder = one core; scale out with more decoders):

- ``pyav`` (default; measured fastest by ``jobs/bench_decode.py``): demuxes the packets once (no
  decoding), then for the wanted frames decodes from the keyframe before the first one to the last
  one in ONE pass. Frame i is the packet with the i-th smallest timestamp (as decord numbers them);
  a file whose timestamps repeat is decoded from its start instead, numbering frames as they leave
  the decoder. Packets whose frame is not wanted are sent with ``skip_frame=NONREF``, so the
  decoder drops them outright when no other frame refers to them (the non-reference B-frames, a
  third to a half of a typical H.264 stream); only wanted frames are converted to RGB, by swscale,
  straight to the output size. A gap longer than a GOP between wanted frames is jumped over.
  With a ``Crop`` (training), only the part of the frame that the crop keeps is converted: the
  square is mapped back to the decoded frame (corner rounded to even pixels, side to a multiple of
  4, for 4:2:0 chroma: within 1-2 px of the asked square, its scale within ~1%), cut from the YUV planes and
  scaled to ``size`` by swscale: 3x less conversion work than scaling the whole frame and then
  cropping (for a training clip: the whole decode ~25% faster). A random augmentation, so exact
  pixel agreement with scale-then-crop does not matter; the square's place and size do.
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
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

__all__ = ["REASONS", "BACKENDS", "DEFAULT_BACKEND", "BadVideo", "Crop", "CropError", "Video", "PyAVVideo",
           "DecordVideo", "fetch_video", "open_video", "read_frames", "read_unique", "scaled_size",
           "crop_origin", "container_truncated"]

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


class CropError(ValueError):
    """A crop larger than the (scaled) frame: the caller's sizes are wrong, not the video."""


@dataclass(frozen=True)
class Crop:
    """A ``size`` x ``size`` square of the frame scaled to the short side; ``fy``/``fx`` in [0, 1] place
    it from top/left (0) to bottom/right (1) of the room left around it."""

    size: int
    fy: float = 0.5
    fx: float = 0.5

    def __post_init__(self):
        if self.size < 1 or not (0.0 <= self.fy <= 1.0 and 0.0 <= self.fx <= 1.0):
            raise ValueError(f"{self!r}: size must be >= 1 and fy, fx in [0, 1]")


class Video(Protocol):
    """An opened video: its frame count and fps, and decoding of chosen frames."""

    num_frames: int
    fps: float
    data: bytes  # the bytes it was opened from (to classify a failure)
    uri: str

    def frames(self, indices: np.ndarray, *, short_side: Optional[int],
               crop: Optional[Crop] = None) -> np.ndarray: ...
    def close(self) -> None: ...


def scaled_size(width: int, height: int, *, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``short_side`` and the aspect ratio kept."""
    if short_side < 1:
        raise ValueError(f"short_side={short_side!r} must be >= 1")
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def crop_origin(width: int, height: int, crop: Crop) -> tuple[int, int]:
    """(y, x) of ``crop`` in a ``width`` x ``height`` frame; ValueError if the square does not fit."""
    if crop.size > min(width, height):
        raise CropError(f"crop size {crop.size} does not fit frames of {height}x{width} (H x W)")
    room_y, room_x = height - crop.size, width - crop.size
    # uniform fy/fx in [0, 1) -> every integer position equally likely; 1.0 -> the far edge
    return min(int(crop.fy * (room_y + 1)), room_y), min(int(crop.fx * (room_x + 1)), room_x)


def _even_box(width: int, height: int, short_side: Optional[int], crop: Crop) -> tuple[int, int, int, int]:
    """(x, y, w, h) in the decoded frame of the square ``crop`` takes of the scaled frame.

    Corner even, side a multiple of 4 (within 1 / 2 px of the exact square)."""
    sw, sh = (width, height) if short_side is None else scaled_size(width, height, short_side=short_side)
    y, x = crop_origin(sw, sh, crop)
    s = sw / width  # scaled / decoded
    # side a multiple of 4: 4:2:0 chroma of even size, packed two half-rows per row (_cut_yuv420p)
    side = max(4, min(int(round(crop.size / s / 4)) * 4, width - width % 4, height - height % 4))
    x0 = min(int(round(x / s / 2)) * 2, (width - side) // 2 * 2)  # nearest even: within 1 px
    y0 = min(int(round(y / s / 2)) * 2, (height - side) // 2 * 2)
    return x0, y0, side, side


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


def _timestamp(packet) -> Optional[int]:
    return packet.pts if packet.pts is not None else packet.dts


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
                         if p.size and not p.is_discard and _timestamp(p) is not None]
        if not self._packets:
            raise ValueError("no video packets")
        pts = np.array([_timestamp(p) for p in self._packets], np.int64)
        order = np.argsort(pts, kind="stable")  # presentation order -> decode position
        self._pos_of_frame = order  # frame index i is packet self._packets[order[i]]
        self._index_of_pts = {int(pts[pos]): i for i, pos in enumerate(order)}
        self._frame_of_pos = np.empty_like(order)
        self._frame_of_pos[order] = np.arange(len(order))
        self._keys = np.flatnonzero([p.is_keyframe for p in self._packets])  # decode positions
        self._pts = pts
        self._pts_unique = len(np.unique(pts)) == len(pts)  # else: broken timestamps (see frames)
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

    def frames(self, indices: np.ndarray, *, short_side: Optional[int],
               crop: Optional[Crop] = None) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] for sorted unique frame indices (H = W = crop.size with a crop)."""
        w, h = (self.width, self.height) if short_side is None else scaled_size(
            self.width, self.height, short_side=short_side)
        box = None
        if crop is not None:
            box = _even_box(self.width, self.height, short_side, crop)  # (x, y, w, h) decoded pixels
            w = h = crop.size
        out = np.empty((len(indices), h, w, 3), np.uint8)
        self.packets_sent = 0  # packets handed to the decoder by this call (tests check the seeking)
        slot = {int(i): k for k, i in enumerate(indices)}  # frame index -> row of out
        done = np.zeros(len(indices), bool)
        state = _PassState(out=out, slot=slot, done=done, size=(w, h), box=box)
        if self._pts_unique:
            self._seek_pass(indices, state)
        else:  # timestamps cannot say which frame is which: count frames from the start instead
            state.counter = 0
            self._send(range(len(self._packets)), state, until=int(indices[-1]))
            self._drain(state)
        if not done.all():
            missing = [int(i) for i, d in zip(indices, done) if not d]
            raise RuntimeError(f"frames {missing[:8]} of {self.num_frames} did not decode"
                               + (f" ({state.error})" if state.error else ""))
        return out

    def _seek_pass(self, indices: np.ndarray, state: "_PassState") -> None:
        """From the keyframe before each wanted run to its last wanted frame, in decode order."""
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

    def _send(self, positions: range, state: "_PassState", *, until: Optional[int] = None) -> None:
        """Decode these packets; with ``until``, no skipping, and stop once frame ``until`` is out."""
        import av

        for q in positions:
            if until is not None and state.counter > until:
                return
            wanted = until is not None or int(self._frame_of_pos[q]) in state.slot
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
        if state.counter is not None:  # frames leave the decoder in display order
            i, state.counter = state.counter, state.counter + 1
        else:
            i = self._index_of_pts.get(frame.pts)
        k = state.slot.get(i) if i is not None else None
        if k is not None and not state.done[k]:
            w, h = state.size
            if state.box is not None and frame.format.name == "yuv420p":
                frame = _cut_yuv420p(frame, state.box)  # convert only what the crop keeps
            elif state.box is not None:  # other pixel formats: the whole frame, then the square
                x, y, bw, bh = state.box
                frame = frame.reformat(format="rgb24", threads=1)
                whole = frame.to_ndarray()[y:y + bh, x:x + bw]
                frame = type(frame).from_ndarray(np.ascontiguousarray(whole), format="rgb24")
            state.out[k] = frame.to_ndarray(width=w, height=h, format="rgb24", threads=1)
            state.done[k] = True

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "PyAVVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cut_yuv420p(frame, box: tuple[int, int, int, int]):
    """A new yuv420p VideoFrame holding the even-aligned ``box`` (x, y, w, h) of ``frame``."""
    import av

    x, y, w, h = box
    fh, fw = frame.height, frame.width
    yuv = frame.to_ndarray()  # (fh * 3/2, fw): Y rows, then U and V packed two half-rows per row
    luma = yuv[:fh]
    u = yuv[fh:fh + fh // 4].reshape(fh // 2, fw // 2)
    v = yuv[fh + fh // 4:fh + fh // 2].reshape(fh // 2, fw // 2)
    cut = np.empty((h * 3 // 2, w), np.uint8)  # the same packed layout, for the box
    cut[:h] = luma[y:y + h, x:x + w]
    cut[h:h + h // 4] = u[y // 2:(y + h) // 2, x // 2:(x + w) // 2].reshape(h // 4, w)
    cut[h + h // 4:] = v[y // 2:(y + h) // 2, x // 2:(x + w) // 2].reshape(h // 4, w)
    out = av.VideoFrame.from_ndarray(cut, format="yuv420p")
    out.colorspace, out.color_range = frame.colorspace, frame.color_range  # same RGB conversion
    return out


class _PassState:
    """Where one decoding pass puts its frames."""

    def __init__(self, *, out: np.ndarray, slot: dict, done: np.ndarray, size: tuple[int, int],
                 box: Optional[tuple[int, int, int, int]] = None):
        self.out, self.slot, self.done, self.size, self.box = out, slot, done, size, box
        self.error = ""
        self.counter: Optional[int] = None  # set: frames are numbered by output order


class DecordVideo:
    """decord: ``get_batch`` of sorted unique indices on a single-threaded VideoReader; resize after."""

    def __init__(self, data: bytes, *, uri: str = ""):
        import decord

        self.data, self.uri = data, uri
        self._reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())

    def frames(self, indices: np.ndarray, *, short_side: Optional[int],
               crop: Optional[Crop] = None) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] for sorted unique frame indices (H = W = crop.size with a crop)."""
        from nlray.data.transforms import short_side_scale

        batch = self._reader.get_batch(indices.tolist()).asnumpy()  # (K, H, W, 3) native size
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
        raise _bad(video.data, video.uri, exc) from None
    return frames, inverse.reshape(idx.shape)
