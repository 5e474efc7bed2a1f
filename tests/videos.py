"""Test videos whose frames say which frame they are (and which label), written with PyAV/libx264.

Every frame is one flat colour: red and green carry the frame index (``index % 256`` in two base-16
digits), blue carries the label (``label % 16``). Each digit d is stored as the level ``8 + 16 d``, so
a decoded value read back within +-7 (H.264 rounding, YUV<->RGB, resizing) gives the digit exactly,
and a flat frame survives any resize, crop or flip. A small white square in the top-left quarter
(``marker=True``) makes flips and crops visible; reading uses the median so the marker is ignored.

    write_video(path, num_frames=60, width=64, height=48, gop=25, label=3)
    read_codes(frames_uint8_THWC)  # -> (indices % 256, labels) as int arrays, read independently
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Union

import av
import numpy as np

STEP = 16  # colour levels are 8, 24, ..., 248: 16 digits per channel


def frame_colour(index: int, label: int) -> tuple[int, int, int]:
    """The flat RGB colour of frame ``index`` of a video of class ``label``."""
    lo, hi = index % STEP, (index // STEP) % STEP
    return 8 + STEP * lo, 8 + STEP * hi, 8 + STEP * (label % STEP)


def make_frame(index: int, *, width: int, height: int, label: int = 0,
               marker: bool = True) -> np.ndarray:
    """One RGB uint8 frame [H, W, 3]."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = frame_colour(index, label)
    if marker:  # a white square well inside the top-left quarter
        s = max(2, min(width, height) // 8)
        img[s:2 * s, s:2 * s] = 255
    return img


def make_ramp(index: int, *, width: int, height: int, axis: str = "x") -> np.ndarray:
    """Grey RGB uint8 [H, W, 3] rising from 8 to 248 along ``axis`` ("x" or "y"); ``index`` unused.

    Grey keeps the value in luma (chroma is subsampled), so a pixel of a scaled or cropped frame
    says where along the axis it came from to ~0.5 px: ``ramp_position``.
    """
    n = width if axis == "x" else height
    line = np.rint(8 + 240 * np.arange(n) / (n - 1)).astype(np.uint8)
    grey = np.broadcast_to(line[None, :] if axis == "x" else line[:, None], (height, width))
    return np.repeat(grey[..., None], 3, axis=-1)


def ramp_position(pixels: np.ndarray, *, length: int) -> np.ndarray:
    """Source coordinate along the ramp's axis that ramp pixels [..., 3] encode."""
    return (pixels.astype(np.float64).mean(axis=-1) - 8) * (length - 1) / 240


def write_video(path: Union[str, Path], *, num_frames: int, width: int = 64, height: int = 48,
                fps: int = 30, gop: int = 25, label: int = 0, bframes: int = 2,
                marker: bool = True, crf: int = 12, faststart: bool = False,
                timestamps: bool = True, ramp: str = "") -> Path:
    """Write H.264 (yuv420p) of ``num_frames`` coded frames; keyframe every ``gop`` frames.

    The container follows the suffix (.mp4, .mkv, ...); ``faststart`` puts the MP4 index first;
    ``timestamps=False`` sends frames without pts, which leaves every packet at pts 0 (a broken file);
    ``ramp="x"`` or ``"y"`` writes ``make_ramp`` frames instead of flat coded colours.
    """
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast",
                          "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}"}
        for i in range(num_frames):
            img = (make_ramp(i, width=width, height=height, axis=ramp) if ramp else
                   make_frame(i, width=width, height=height, label=label, marker=marker))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if not timestamps:  # a frame with a time base but no pts is muxed at pts 0
                frame.time_base, frame.pts = Fraction(1, 15360), None
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def video_bytes(tmp_dir: Union[str, Path], name: str = "v.mp4", **kwargs) -> bytes:
    """``write_video`` into ``tmp_dir/name`` and return the file's bytes."""
    return write_video(Path(tmp_dir) / name, **kwargs).read_bytes()


def _digits(values: np.ndarray) -> np.ndarray:
    digits = np.rint((values.astype(np.float64) - 8) / STEP).astype(np.int64)
    err = np.abs(values - (8 + STEP * digits))
    if (err > 7).any() or (digits < 0).any() or (digits >= STEP).any():
        raise AssertionError(f"colour levels {values[err > 7][:5]} are not within 7 of a code level")
    return digits


def read_codes(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame index (mod 256) and label (mod 16) of each frame of uint8 [..., H, W, 3]."""
    frames = np.asarray(frames)
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, frames.shape[-3] * frames.shape[-2], 3)
    median = np.median(flat, axis=1)  # (N, 3): the flat colour; the small marker is outvoted
    d = _digits(median)
    index = (d[:, 0] + STEP * d[:, 1]).reshape(lead)
    label = d[:, 2].reshape(lead)
    return index, label


def decode_all(path_or_bytes: Union[str, Path, bytes]) -> np.ndarray:
    """Every frame, in presentation order, by a plain PyAV decode: the independent reference."""
    import io

    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    with av.open(src) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def write_packet_flood(path: Union[str, Path], *, num_packets: int, width: int = 32, height: int = 32,
                       fps: int = 30) -> Path:
    """H.264 of one keyframe then ``num_packets - 1`` copies of one tiny P-frame packet (~9 bytes).

    Encoding that many frames would take minutes; muxing copies of one packet takes ~1 s per million.
    A hostile file: every packet costs a demuxer that keeps packets far more memory than its bytes.
    The container follows the suffix: an MP4 declares its packet count in its index, Matroska does not.
    """
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "x264-params": "keyint=1000000:bframes=0:scenecut=0"}
        img = np.full((height, width, 3), 128, np.uint8)
        packets = []
        for i in range(2):  # a keyframe, then a P-frame that repeats it (a skip frame)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            packets += stream.encode(frame)
        packets += stream.encode(None)
        key, delta = bytes(packets[0]), bytes(packets[1])
        time_base = packets[0].time_base
        step = int(round(1 / (fps * time_base)))
        for i in range(num_packets):  # muxing takes a packet's buffer: a new packet each time
            packet = av.Packet(key if i == 0 else delta)
            packet.stream, packet.time_base = stream, time_base
            packet.pts = packet.dts = i * step
            packet.is_keyframe = i == 0
            out.mux(packet)
    return path
