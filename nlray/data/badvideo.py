"""Classify a bad video by reason, from its bytes: the one place that says what "truncated" means.

A bad video raises ``BadVideo(reason, uri, detail)`` with reason one of ``REASONS``: ``missing`` (no
such object), ``empty`` (0 bytes), ``truncated`` (an MP4/MOV or Matroska/WebM container whose boxes /
segment run past the end of the bytes, or an MP4 that ends before its index: checked when the video
is opened, so a cut file is always dropped, even when the part a clip wants would still decode),
``undecodable`` (anything else that cannot give the wanted frames: not a video, no video stream,
frames that do not decode), ``unreachable`` (the store failed every retry for this object: throttling,
5xx, resets, timeouts; an auth error or a missing bucket is not a bad video, it stops the job).

Four more say that a video costs more than one untrusted file may (``VideoLimits``, the ``data.max_*``
and ``data.decode_timeout_s`` keys; README "Security"):

- ``too_large``: the object has more bytes than ``max_bytes``; the store stops reading past the limit
  (``storage.read_bytes(max_bytes=)``), so a huge object never sits in memory.
- ``frame_size``: the coded frame has more than ``max_frame_pixels`` pixels, or its long side is more
  than ``max_aspect_ratio`` times its short side. Judged from the stream's codec parameters when the
  video is opened, before any frame buffer is allocated: a 2.6 kB 16x16384 H.264 file scaled to a
  256 short side is 3 GiB a frame set. The PyAV decoder is also opened with FFmpeg's ``max_pixels``, so
  a frame that grows mid-stream cannot be decoded past the limit.
- ``too_many_packets``: the container declares, or demuxing finds, more than ``max_packets`` packets
  (every demuxed packet is kept, ~0.9 kB of memory each for PyAV and ~4 kB for decord's index, however
  tiny): demuxing stops at the limit.
- ``timeout``: decoding took longer than ``timeout_s`` (``DecodeDeadline``, checked between container
  boxes, packets and frames), counted from before the container checks and the opening.

The container checks walk only top-level box / element headers, so they are cheap and independent
of any decoder: a file cut short (an interrupted download or upload) is told apart from one that
was never a video. The decoders (``nlray.data.decode``) and the probe (``nlray.data.probe``) both
use them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

from nlray.choices import BAD_VIDEO_REASONS

__all__ = ["REASONS", "BadVideo", "VideoLimits", "DecodeDeadline", "container_truncated", "mp4_structure", "failure_reason"]

REASONS = BAD_VIDEO_REASONS
# ISO-BMFF (mp4/mov) top-level boxes: seeing one first means "this is an mp4".
MP4_TOP_BOXES = frozenset({b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot",
                           b"uuid", b"meta", b"moof", b"mfra", b"sidx", b"pdin", b"prft", b"emsg"})
MP4_INDEX_BOXES = frozenset({b"moov", b"moof"})  # without one, the frames cannot be found
_BOXES_PER_CHECK = 4096  # mp4_structure looks at its deadline this often (~1 ms of boxes)
EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # Matroska / WebM
MATROSKA_SEGMENT = b"\x18\x53\x80\x67"


class BadVideo(Exception):
    """A video that cannot give its clip; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, uri: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"bad-video reason {reason!r} is not one of {list(REASONS)}")
        super().__init__(f"{uri or '<bytes>'}: {reason}: {detail}")
        self.reason, self.uri, self.detail = reason, uri, detail

    def __reduce__(self):  # picklable across Ray processes despite the custom __init__
        return BadVideo, (self.reason, self.uri, self.detail)


@dataclass(frozen=True)
class VideoLimits:
    """What one untrusted video may cost before it is dropped as bad (README "Security").

    Each limit has its own reason: ``too_large`` (bytes of the object), ``frame_size`` (width x height
    of the coded frame, or long side / short side: a 16x16384 video scaled to a 256 short side is 3 GiB
    a frame set), ``too_many_packets`` (packets demuxed) and ``timeout`` (wall time, ``DecodeDeadline``).
    None: no limit. Picklable: decoders, probe and transcode actors receive one.
    """

    max_bytes: Optional[int] = 256 * 2**20
    max_frame_pixels: Optional[int] = 3840 * 2160
    max_aspect_ratio: Optional[float] = 4.0
    max_packets: Optional[int] = 100_000
    timeout_s: Optional[float] = 60.0

    @classmethod
    def from_config(cls, data_cfg: Any) -> "VideoLimits":
        """The limits of a ``DataConfig`` (``data.max_video_bytes`` ... ``data.decode_timeout_s``)."""
        return cls(max_bytes=data_cfg.max_video_bytes, max_frame_pixels=data_cfg.max_frame_pixels,
                   max_aspect_ratio=data_cfg.max_aspect_ratio, max_packets=data_cfg.max_packets,
                   timeout_s=data_cfg.decode_timeout_s)

    def deadline(self, uri: str = "") -> "DecodeDeadline":
        return DecodeDeadline(self.timeout_s, uri)

    def check_bytes(self, size: int, uri: str = "") -> None:
        """BadVideo("too_large") when ``size`` bytes are over ``max_bytes``."""
        if self.max_bytes is not None and size > self.max_bytes:
            raise BadVideo("too_large", uri, f"{size} bytes, over the limit of {self.max_bytes} "
                                             "(data.max_video_bytes)")

    def check_frame_size(self, width: int, height: int, uri: str = "") -> None:
        """BadVideo("frame_size") when a ``width`` x ``height`` frame is over the pixel or aspect limit.

        A size that is unknown (0) is not judged here: the decoder's own ``max_pixels`` still holds."""
        width, height = int(width or 0), int(height or 0)
        if width <= 0 or height <= 0:
            return
        if self.max_frame_pixels is not None and width * height > self.max_frame_pixels:
            raise BadVideo("frame_size", uri, f"{width}x{height} = {width * height} pixels, over the limit "
                                              f"of {self.max_frame_pixels} (data.max_frame_pixels)")
        aspect = max(width, height) / min(width, height)
        if self.max_aspect_ratio is not None and aspect > self.max_aspect_ratio:
            raise BadVideo("frame_size", uri, f"{width}x{height}: aspect {aspect:g}, over the limit of "
                                              f"{self.max_aspect_ratio:g} (data.max_aspect_ratio)")

    def check_packets(self, count: int, uri: str = "", *, declared: bool = False) -> None:
        """BadVideo("too_many_packets") when ``count`` packets (demuxed so far, or ``declared`` by the
        container's index) are over ``max_packets``."""
        if self.max_packets is not None and count > self.max_packets:
            what = "the container declares" if declared else "demuxing found more than"
            raise BadVideo("too_many_packets", uri, f"{what} {count if declared else self.max_packets} "
                                                    f"packets, over the limit of {self.max_packets} "
                                                    "(data.max_packets)")


class DecodeDeadline:
    """When decoding one video must be over: ``check()`` raises BadVideo("timeout") from then on.

    A thread cannot be killed, so the decoders call ``check()`` between packets (and frames): a
    video never holds a decoder longer than its limit plus one packet's work. None: no limit.
    """

    def __init__(self, limit_s: Optional[float], uri: str = ""):
        self.limit_s, self.uri = limit_s, uri
        self.end = math.inf if limit_s is None else time.monotonic() + limit_s

    def check(self) -> None:
        if time.monotonic() >= self.end:
            raise BadVideo("timeout", self.uri, f"decoding took longer than its limit of {self.limit_s:g} s")


def mp4_structure(data: bytes, deadline: Optional["DecodeDeadline"] = None) -> str:
    """``ok`` | ``truncated`` (a box runs past the end, or no ``moov``/``moof`` index) | ``corrupt``
    (a box header that is not one: damaged, not cut) | ``not_mp4`` (no known first box).

    ``deadline``: checked every ``_BOXES_PER_CHECK`` boxes (a file of millions of 8-byte boxes)."""
    n = len(data)
    boxes = 0
    if n < 8 or data[4:8] not in MP4_TOP_BOXES:
        return "not_mp4"
    pos, seen = 0, set()
    while pos < n:
        if n - pos < 8:
            return "truncated"  # a box header cut short
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        head = 8
        if size == 1:  # 64-bit size follows the type
            if n - pos < 16:
                return "truncated"
            size, head = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif size == 0:  # box runs to the end of the file
            size = n - pos
        if size < head or not all(32 <= c < 127 for c in kind):
            return "corrupt"  # not a box header (4 printable characters)
        seen.add(kind)
        boxes += 1
        if deadline is not None and boxes % _BOXES_PER_CHECK == 0:
            deadline.check()
        if pos + size > n:
            return "truncated"
        pos += size
    return "ok" if MP4_INDEX_BOXES & seen else "truncated"


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
        if data[pos:pos + 4] != MATROSKA_SEGMENT:
            return False
        size, ln, unknown = _ebml_vint(data, pos + 4)
        return not unknown and pos + 4 + ln + size > len(data)
    except IndexError:
        return True


def container_truncated(data: bytes, deadline: Optional["DecodeDeadline"] = None) -> bool:
    """True when an MP4/MOV or Matroska/WebM container is cut short; False otherwise or unknown.

    ``deadline`` (optional): BadVideo("timeout") if walking the boxes outlasts it."""
    structure = mp4_structure(data, deadline)
    if structure != "not_mp4":
        return structure == "truncated"
    if data[:4] == EBML_MAGIC:
        return _matroska_truncated(data)
    return False


def failure_reason(data: bytes, uri: str, exc: BaseException) -> BadVideo:
    """The BadVideo for a decoder's failure on ``data``: ``truncated`` if cut short, else ``undecodable``."""
    reason = "truncated" if container_truncated(data) else "undecodable"
    return BadVideo(reason, uri, f"{type(exc).__name__}: {exc}"[:500])
