"""Classify a bad video by reason, from its bytes: the one place that says what "truncated" means.

A bad video raises ``BadVideo(reason, uri, detail)`` with reason one of ``REASONS``: ``missing`` (no
such object), ``empty`` (0 bytes), ``truncated`` (an MP4/MOV or Matroska/WebM container whose boxes /
segment run past the end of the bytes, or an MP4 that ends before its index: checked when the video
is opened, so a cut file is always dropped, even when the part a clip wants would still decode),
``undecodable`` (anything else that cannot give the wanted frames: not a video, no video stream,
frames that do not decode), ``unreachable`` (the store failed every retry for this object: throttling,
5xx, resets, timeouts; an auth error or a missing bucket is not a bad video, it stops the job) and
``timeout`` (decoding took longer than its limit: ``DecodeDeadline``, checked between packets).

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


def mp4_structure(data: bytes) -> str:
    """``ok`` | ``truncated`` (a box runs past the end, or no ``moov``/``moof`` index) | ``corrupt``
    (a box header that is not one: damaged, not cut) | ``not_mp4`` (no known first box)."""
    n = len(data)
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


def container_truncated(data: bytes) -> bool:
    """True when an MP4/MOV or Matroska/WebM container is cut short; False otherwise or unknown."""
    structure = mp4_structure(data)
    if structure != "not_mp4":
        return structure == "truncated"
    if data[:4] == EBML_MAGIC:
        return _matroska_truncated(data)
    return False


def failure_reason(data: bytes, uri: str, exc: BaseException) -> BadVideo:
    """The BadVideo for a decoder's failure on ``data``: ``truncated`` if cut short, else ``undecodable``."""
    reason = "truncated" if container_truncated(data) else "undecodable"
    return BadVideo(reason, uri, f"{type(exc).__name__}: {exc}"[:500])
