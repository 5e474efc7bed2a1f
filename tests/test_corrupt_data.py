"""A training epoch over a dataset on S3 with every kind of damaged or odd file: the good ones give their
clips (checked against their pixels), the bad ones are counted by the reason written down for each.

Truth table (``KINDS``): what each kind of file SHOULD give.

| file                                                   | verdict                               |
|--------------------------------------------------------|---------------------------------------|
| plain 64x48 H.264                                      | good                                  |
| 5 frames (shorter than the 16-frame window)            | good: looped                          |
| 170x128, 16x16 (the crop fits the short side scaled)   | good                                  |
| grayscale: H.264 4:0:0 (libx264 ``pix_fmt=gray``)      | good: decoded as yuv420p, flat chroma |
| variable frame rate (irregular pts, 5..90 ms apart)    | good: frames numbered in pts order    |
| duration header lies (mvhd/tkhd/mdhd x0.1 or x100)     | good: frames counted from the index   |
| 0 bytes                                                | bad: empty                            |
| cut in the middle of a GOP (index first or last)       | bad: truncated                        |
| random bytes named .mp4                                | bad: undecodable                      |
| listed in the manifest, not in the bucket              | bad: missing                          |
| audio only (AAC .mp4, AAC .m4a renamed .mp4, MP2 .mp4) | bad: undecodable (no video stream)    |

Each bad kind is 3 of the 30 files (10%). The time limit on one video's decode (``timeout``) is tested
on a normal video with a tiny limit.
"""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from nlray.config import DataConfig
from nlray.data import storage
from nlray.data.badvideo import BadVideo, DecodeDeadline, VideoLimits
from nlray.data.clips import ClipDecoder
from nlray.data.decode import BACKENDS, open_video, read_frames
from nlray.data.pipeline import bad_video_counts, bad_video_list, bad_video_log_name, build_train_dataset
from videos import STEP, decode_all, make_frame, read_codes, video_bytes

CFG = dict(frames=8, frame_stride=2, train_short_side=[48, 56], crop_size=40, decode_batch=2,
           decode_actors=2, decode_actors_max=0, decode_cpus=0.5, backend="pyav")
W, H, N = 64, 48, 20  # the plain videos: 64x48, 20 frames


# ------------------------------------------------------------------------------ file makers


def level(digit: int) -> int:
    return 8 + STEP * digit  # the grey level of one code digit (videos.py)


def gray_video(path: Path, *, num_frames: int, label: int) -> bytes:
    """H.264 4:0:0: the top half's grey says the label, the bottom half's the frame index mod 16."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "gray"
        stream.options = {"crf": "12", "preset": "veryfast", "x264-params": "keyint=8:scenecut=0"}
        for i in range(num_frames):
            img = np.empty((H, W, 3), np.uint8)
            img[:H // 2], img[H // 2:] = level(label), level(i % STEP)  # grey RGB: the encoder keeps luma
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    return path.read_bytes()


def vfr_video(path: Path, *, num_frames: int, label: int, seed: int) -> bytes:
    """Coded frames (videos.py) at irregular times: 5..90 ms apart, in a 1/1000 time base."""
    pts = np.concatenate([[0], np.cumsum(np.random.default_rng(seed).integers(5, 90, num_frames - 1))])
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "12", "preset": "veryfast",
                          "x264-params": "keyint=8:min-keyint=8:scenecut=0:bframes=2"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(make_frame(i, width=W, height=H, label=label), format="rgb24")
            frame.pts, frame.time_base = int(pts[i]), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path.read_bytes()


def audio_only(fmt: str, codec: str) -> bytes:
    """Half a second of silence in an audio-only MP4 (``fmt="ipod"``: an .m4a)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=16000 if codec == "aac" else 32000)
        stream.layout = "mono"
        size, sample_fmt, dtype = (1024, "fltp", np.float32) if codec == "aac" else (1152, "s16", np.int16)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, size), dtype), format=sample_fmt, layout="mono")
            frame.sample_rate, frame.pts = stream.rate, i * size
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def cut_mid_gop(data: bytes, *, frame: int) -> bytes:
    """The file cut halfway through the packet of ``frame`` (mid-GOP with keyframes every 8 frames)."""
    with av.open(io.BytesIO(data)) as c:
        packets = sorted((p.pts, p.pos, p.size) for p in c.demux(video=0) if p.size)
    _, pos, size = packets[frame]
    return data[:pos + size // 2]


_DURATION_AT = {b"mvhd": (24, 32), b"tkhd": (28, 36), b"mdhd": (24, 32)}  # offset in version 0 / 1 boxes


def lie_about_duration(data: bytes, factor: float) -> bytes:
    """The MP4 with the durations of its mvhd, tkhd and mdhd boxes multiplied by ``factor``."""
    out = bytearray(data)

    def walk(start: int, end: int) -> None:
        pos = start
        while pos + 8 <= end:
            size, kind = int.from_bytes(out[pos:pos + 4], "big"), bytes(out[pos + 4:pos + 8])
            if kind in (b"moov", b"trak", b"mdia"):
                walk(pos + 8, pos + size)
            elif kind in _DURATION_AT:
                version = out[pos + 8]
                at, n = pos + _DURATION_AT[kind][version], (4, 8)[version]
                out[at:at + n] = int(int.from_bytes(out[at:at + n], "big") * factor).to_bytes(n, "big")
            pos += size

    walk(0, len(out))
    return bytes(out)


def container_duration(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        return c.duration


# --------------------------------------------------------------------------------- the dataset

# kind -> (verdict, copies): "good" or the bad-video reason it must be counted under
KINDS = {"plain": ("good", 3), "five_frames": ("good", 2), "170x128": ("good", 2), "16x16": ("good", 2),
         "gray": ("good", 2), "vfr": ("good", 2), "duration_lies": ("good", 2),
         "zero_bytes": ("empty", 3), "cut_mid_gop": ("truncated", 3), "random_bytes": ("undecodable", 3),
         "missing": ("missing", 3), "audio_only": ("undecodable", 3)}


def make_file(kind: str, copy: int, label: int, tmp: Path) -> tuple[bytes | None, int]:
    """(bytes or None for a missing object, frame count) of copy ``copy`` of ``kind``."""
    name = f"{kind}{copy}.mp4"
    if kind == "plain":
        return video_bytes(tmp, name, num_frames=N, width=W, height=H, gop=8, label=label), N
    if kind == "five_frames":
        return video_bytes(tmp, name, num_frames=5, width=W, height=H, gop=8, label=label), 5
    if kind in ("170x128", "16x16"):
        w, h = map(int, kind.split("x"))
        return video_bytes(tmp, name, num_frames=N, width=w, height=h, gop=8, label=label), N
    if kind == "gray":
        return gray_video(tmp / name, num_frames=N, label=label), N
    if kind == "vfr":
        return vfr_video(tmp / name, num_frames=N, label=label, seed=copy), N
    if kind == "duration_lies":  # x0.1: FFmpeg believes it (checked below); x100: it sees through it
        data = video_bytes(tmp, name, num_frames=N, width=W, height=H, gop=8, label=label)
        return lie_about_duration(data, (0.1, 100)[copy]), N
    if kind == "zero_bytes":
        return b"", 0
    if kind == "cut_mid_gop":  # index first (faststart) or last
        data = video_bytes(tmp, name, num_frames=40, width=W, height=H, gop=8, faststart=copy != 1)
        return cut_mid_gop(data, frame=(12, 20, 28)[copy]), 0
    if kind == "random_bytes":
        return np.random.default_rng(copy).bytes((300, 5000, 40000)[copy]), 0
    if kind == "missing":
        return None, 0
    if kind == "audio_only":
        return audio_only(*(("mp4", "aac"), ("ipod", "aac"), ("mp4", "mp2"))[copy]), 0
    raise AssertionError(kind)


@pytest.fixture
def corrupt_manifest(s3_bucket, tmp_path) -> pd.DataFrame:
    """The 30 files on moto S3 and their manifest, with columns kind and verdict (the truth)."""
    rows, label = [], 0
    for kind, (verdict, copies) in KINDS.items():
        for copy in range(copies):
            data, frames = make_file(kind, copy, label, tmp_path)
            uri = f"s3://{s3_bucket}/train/{kind}{copy}.mp4"
            if data is not None:
                storage.write_bytes(uri, data)
            rows.append(dict(uri=uri, label_id=label if verdict == "good" else 15, kind=kind, verdict=verdict,
                             num_frames=frames))
            label += verdict == "good"
    df = pd.DataFrame(rows).assign(split="train", label=lambda d: "class" + d.label_id.astype(str))
    assert (df.verdict != "good").mean() >= 0.5 and df[df.verdict == "good"].label_id.is_unique
    assert all((df.kind == k).mean() >= 0.1 for k, (v, _) in KINDS.items() if v != "good")
    return df


def gray_index(video: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Frame index mod 16 of each frame of a grey clip, which must show its file's label grey: its top
    and bottom greys matched to those of the whole file decoded by plain PyAV (``reference``; a 4:0:0
    file's greys come out of the decoder rescaled, so they are read against the file, not videos.py)."""
    assert np.abs(video.astype(int) - video[..., :1]).max() <= 3  # grey: R = G = B
    ref_top = np.median(reference[:16, :4, :, 0], axis=(1, 2))  # (16,) the label's grey, every frame
    ref_bottom = np.median(reference[:16, -4:, :, 0], axis=(1, 2))  # (16,) the greys of digits 0..15
    top = np.median(video[:, :10, :, 0], axis=(1, 2))  # (T,) the crop's top rows: always the top half
    bottom = np.median(video[:, -10:, :, 0], axis=(1, 2))  # (T,) its bottom rows: the bottom half
    assert np.abs(top[:, None] - ref_top[None]).max() <= 7  # the label's grey, frame after frame
    index = np.abs(bottom[:, None] - ref_bottom[None]).argmin(axis=1)
    assert np.abs(bottom - ref_bottom[index]).max() <= 7
    return index


def check_clip(video: np.ndarray, label: int, row: pd.Series) -> None:
    """A clip against its file: its pixels' label and 8 frames 2 apart (looped when shorter than 16)."""
    n = int(row.num_frames)
    assert label == row.label_id, row.uri
    if row.kind == "gray":  # the label's grey, checked against the file's own decoded frames
        index = gray_index(video, decode_all(storage.read_bytes(row.uri)))
        mod = STEP
    else:
        index, content_label = read_codes(video)
        assert (content_label == row.label_id).all(), row.uri
        mod = 256
    start = int(index[0])
    assert index.tolist() == [((start + 2 * j) % n) % mod for j in range(8)], (row.uri, index)


def test_an_epoch_over_corrupt_data_gives_every_good_clip_and_counts_every_bad_file(ray_local,
                                                                                   corrupt_manifest):
    df = corrupt_manifest
    lies = df[df.kind == "duration_lies"].uri.tolist()
    assert container_duration(storage.read_bytes(lies[0])) < 0.2 * container_duration(
        storage.read_bytes(df[df.kind == "plain"].uri.iloc[0]))  # the lie is really there
    ds = build_train_dataset(df, DataConfig(**CFG), run_name="test_corrupt")
    seen = []
    for batch in ds.iter_batches(batch_size=4, batch_format="numpy"):
        for video, label, row in zip(batch["video"], batch["label"], batch["video_idx"]):
            assert video.shape == (8, 40, 40, 3)
            check_clip(video, int(label), df.iloc[int(row)])
            seen.append(int(row))
    good = df.index[df.verdict == "good"].tolist()
    assert sorted(seen) == good  # every good video exactly once, no bad one
    log = bad_video_log_name("test_corrupt", "train")
    bad = df[df.verdict != "good"]
    assert bad_video_counts(log) == bad.verdict.value_counts().to_dict()
    listed = {uri: reason for uri, reason, _ in bad_video_list(log)}
    assert listed == dict(zip(bad.uri, bad.verdict))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_decode_over_its_time_limit_is_dropped_as_a_timeout(tmp_path, backend):
    path = tmp_path / "v.mp4"
    path.write_bytes(video_bytes(tmp_path, "src.mp4", num_frames=N, width=W, height=H, gop=8, label=3))
    batch = {"uri": np.array([str(path)]), "label_id": np.array([3]), "video_idx": np.array([0])}
    kwargs = dict(frames=8, stride=2, short_side=(48, 48), crop_size=40, backend=backend, log_name="unused")
    [out] = list(ClipDecoder(**kwargs)(batch))  # the default limit: decoded
    assert read_codes(out["video"])[1].tolist() == [[3] * 8]
    dec = ClipDecoder(**kwargs, limits=VideoLimits(timeout_s=0.0))
    assert list(dec(batch)) == [] and dec.bad_counts == {"timeout": 1}


class _ExpiresAfter(DecodeDeadline):
    """A deadline that passes after ``checks`` checks: says where the decoder checks it."""

    def __init__(self, checks: int):
        super().__init__(None, "v.mp4")
        self.left = checks

    def check(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise BadVideo("timeout", self.uri, "expired")


def test_the_time_limit_is_checked_between_packets(tmp_path):
    """A thread cannot be killed: the PyAV pass checks the deadline before every packet it decodes."""
    data = video_bytes(tmp_path, "v.mp4", num_frames=40, width=W, height=H, gop=40)  # one GOP: no skipping
    video = open_video(data, backend="pyav")
    video.deadline = _ExpiresAfter(5)
    with pytest.raises(BadVideo) as err:
        read_frames(video, np.arange(30, 40))
    assert err.value.reason == "timeout" and video.packets_sent == 5  # stopped at the 6th of 40 packets
    with pytest.raises(BadVideo, match="timeout: decoding took longer than its limit of 0 s"):
        DecodeDeadline(0.0, "v.mp4").check()
    DecodeDeadline(None).check()  # no limit: never
