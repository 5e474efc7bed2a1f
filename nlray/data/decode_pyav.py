"""The PyAV decode backend (the default: measured fastest by ``jobs/bench_decode.py``).

Single-threaded (one clip decoder = one core; scale out with more decoders). Demuxes the packets
once (no decoding), then for the wanted frames decodes from the keyframe before the first one to the
last one in ONE pass. Frame i is the packet with the i-th smallest timestamp (as decord numbers
them); a file whose timestamps repeat is decoded from its start instead, numbering frames as they
leave the decoder. Packets whose frame is not wanted are sent with ``skip_frame=NONREF``, so the
decoder drops them outright when no other frame refers to them (the non-reference B-frames, a
third to a half of a typical H.264 stream); only wanted frames are converted to RGB, by swscale,
straight to the output size. A gap longer than a GOP between wanted frames is jumped over.

With a ``Crop`` (training), only the part of the frame that the crop keeps is converted: the
square is mapped back to the decoded frame (corner rounded to even pixels, side to a multiple of
4, for 4:2:0 chroma: within 1-2 px of the asked square, its scale within ~1%), cut from the YUV planes and
scaled to ``size`` by swscale: 3x less conversion work than scaling the whole frame and then
cropping (for a training clip: the whole decode ~25% faster). A random augmentation, so exact
pixel agreement with scale-then-crop does not matter; the square's place and size do.

Limits (``VideoLimits``, all enforced here): the container is opened with FFmpeg's ``max_pixels`` (so
even the frame ``avformat_find_stream_info`` decodes to learn the codec parameters is refused past the
pixel limit: an 8192x8192 file costs ~25 MB to open instead of ~160 MB), then the frame size and aspect
are judged from the codec parameters and the packet count from the container's index (an MP4's sample
count) before anything else is allocated; demuxing stops at ``max_packets``; the deadline is checked
between packets and frames.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from nlray.data.badvideo import DecodeDeadline, VideoLimits
from nlray.data.transforms import Crop, even_box, scaled_size

__all__ = ["PyAVVideo", "open_checked", "count_packets"]

NO_LIMITS = VideoLimits(max_bytes=None, max_frame_pixels=None, max_aspect_ratio=None, max_packets=None,
                        timeout_s=None)


def open_checked(data: bytes, *, limits: VideoLimits, uri: str = ""):
    """(PyAV input container, its first video stream) of ``data``, judged against ``limits`` before
    any frame is decoded by the caller: BadVideo("frame_size") from the codec parameters' width and
    height, BadVideo("too_many_packets") from the packet count the container's index declares.
    ValueError: no video stream. The stream's decoder keeps ``max_pixels`` (a larger frame fails)."""
    import av

    options = {} if limits.max_frame_pixels is None else {"max_pixels": str(int(limits.max_frame_pixels))}
    container = av.open(io.BytesIO(data), "r", options=options)
    try:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        cc = stream.codec_context
        limits.check_frame_size(cc.width, cc.height, uri)
        limits.check_packets(int(stream.frames or 0), uri, declared=True)  # 0: not declared (mkv, ts)
        if options:
            cc.options = dict(options)  # applied when the decoder opens: no frame past the limit
    except BaseException:
        container.close()
        raise
    return container, stream


def limited_packets(container, stream, *, limits: VideoLimits, deadline: DecodeDeadline, uri: str = ""):
    """The stream's packets, demuxed one by one (none kept): BadVideo("too_many_packets") past the limit,
    BadVideo("timeout") past the deadline."""
    count = 0
    for packet in container.demux(stream):
        deadline.check()
        if packet.size:  # not the empty flush packet at the end
            count += 1
            limits.check_packets(count, uri)
        yield packet


def count_packets(container, stream, *, limits: VideoLimits, deadline: DecodeDeadline, uri: str = "") -> int:
    """Demux ``stream`` to its end within the limits (``limited_packets``); the number of packets."""
    return sum(1 for p in limited_packets(container, stream, limits=limits, deadline=deadline, uri=uri) if p.size)


def _timestamp(packet) -> Optional[int]:
    return packet.pts if packet.pts is not None else packet.dts


class PyAVVideo:
    """PyAV: packets demuxed once; wanted frames decoded in one pass, unwanted non-reference skipped."""

    def __init__(self, data: bytes, *, uri: str = "", deadline: Optional[DecodeDeadline] = None,
                 limits: VideoLimits = NO_LIMITS):
        self.data, self.uri, self.limits = data, uri, limits
        self.deadline = deadline or DecodeDeadline(None, uri)
        self._container, stream = open_checked(data, limits=limits, uri=uri)
        try:
            self._index(stream)
        except BaseException:
            self._container.close()
            raise

    def _index(self, stream) -> None:
        """Demux every packet (no decoding): which packet is which frame, where the keyframes are."""
        self.deadline.check()
        self._stream = stream
        self._cc = stream.codec_context
        self._cc.thread_count = 1  # one decoder = one core
        self._cc.thread_type = "NONE"
        self._packets = [p for p in self._demux(stream)
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

    def _demux(self, stream):
        count = 0
        for packet in self._container.demux(stream):
            self.deadline.check()  # BadVideo("timeout"): a huge or looping file does not hold us
            if packet.size:  # not the empty flush packet at the end (an empty packet is not kept)
                count += 1
                self.limits.check_packets(count, self.uri)  # BadVideo("too_many_packets"): each one is kept
            yield packet

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
            box = even_box(self.width, self.height, short_side, crop)  # (x, y, w, h) decoded pixels
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
            self.deadline.check()
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
                self.deadline.check()
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


def _plane(plane) -> np.ndarray:
    """uint8 (height, width) view of one plane of a decoded frame, without its line padding."""
    rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)  # (height, line_size)
    return rows[:plane.height, :plane.width]


def _cut_yuv420p(frame, box: tuple[int, int, int, int]):
    """A new yuv420p VideoFrame holding the even-aligned ``box`` (x, y, w, h) of ``frame``."""
    import av

    x, y, w, h = box
    luma, u, v = (_plane(p) for p in frame.planes)  # (fh, fw), (fh/2, fw/2), (fh/2, fw/2)
    # to_ndarray's packed layout (U and V two half-rows per row) only exists when fh % 4 == 0: read
    # the planes themselves. The box's side is a multiple of 4, so the cut can use the packed layout.
    cut = np.empty((h * 3 // 2, w), np.uint8)  # (h * 3/2, w): Y rows, then U and V packed
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
