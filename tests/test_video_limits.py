"""What one untrusted video may cost (issue 18, finding 4): hostile files meet ``VideoLimits`` and are
dropped with their own reason, with the decoding process's peak memory bounded.

Real H.264 files made here with PyAV/libx264 (tests/videos.py): a 16x16384 video of 32 frames (~10 kB;
before the limits, the default eval decoder decoded it with +3.3 GB of peak memory), a flood of 200,000
~9-byte packets (before: +140-170 MB peak for one PyAV training clip, +0.6-0.7 GB with decord), an
object over the byte limit; and a normal video that still decodes, frame for frame, under the default
limits. Peak memory is VmHWM of a fresh process (``test_peak_memory_...``).
"""
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nlray.config import DataConfig
from nlray.data import decode
from nlray.data.badvideo import BadVideo, DecodeDeadline, VideoLimits, container_truncated
from nlray.data.clips import ClipDecoder, EvalClipDecoder
from nlray.data.decode import BACKENDS, fetch_video, open_video, read_frames
from videos import decode_all, read_codes, write_packet_flood, write_video

CFG = DataConfig()
DEFAULT = VideoLimits.from_config(CFG)  # what a run uses unless its config says otherwise
FLOOD_PACKETS = 200_000
FLOOD_LIMIT = 1000
PEAK_GROWTH_BOUND_MB = 100  # the decoding process, over every hostile video below (module doc: GBs before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    return {
        "tall": write_video(d / "tall.mp4", num_frames=32, width=16, height=16384, gop=32, marker=False),
        "flood_mp4": write_packet_flood(d / "flood.mp4", num_packets=FLOOD_PACKETS),  # count in its index
        "flood_mkv": write_packet_flood(d / "flood.mkv", num_packets=FLOOD_PACKETS),  # found by demuxing
        "normal": write_video(d / "normal.mp4", num_frames=90, width=96, height=64, gop=25, label=5),
    }


def decoders(backend, limits, **kw):
    """(train, eval) decoders with the default data config's clip shapes (eval: 10 clips x 3 crops)."""
    train = ClipDecoder(frames=CFG.frames, stride=CFG.frame_stride, short_side=tuple(CFG.train_short_side),
                        crop_size=CFG.crop_size, backend=backend, log_name="unused", limits=limits, **kw)
    evaluate = EvalClipDecoder(frames=CFG.frames, stride=CFG.frame_stride, short_side=CFG.eval_short_side,
                               crop_size=CFG.eval_crop_size, num_clips=CFG.eval_num_clips,
                               num_crops=CFG.eval_num_crops, backend=backend, log_name="unused", limits=limits)
    return train, evaluate


def batch(path):
    return {"uri": np.array([str(path)]), "label_id": np.array([5]), "video_idx": np.array([0])}


def dropped(backend, limits, path):
    """bad_counts of the train and the eval decoder on one video (each must give no rows)."""
    counts = []
    for dec in decoders(backend, limits):
        assert list(dec(batch(path))) == []
        counts.append(dec.bad_counts)
    return counts


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tall_video_is_dropped_for_its_frame_size_before_decoding(files, backend):
    assert dropped(backend, DEFAULT, files["tall"]) == [{"frame_size": 1}] * 2
    with pytest.raises(BadVideo, match="16x16384: aspect 1024, over the limit of 4") as err:
        open_video(files["tall"].read_bytes(), backend=backend, limits=DEFAULT)
    assert err.value.reason == "frame_size"
    # the pixel limit on its own (aspect unbounded): 262,144 pixels against 262,143
    few = dataclasses.replace(DEFAULT, max_aspect_ratio=None, max_frame_pixels=16 * 16384 - 1)
    with pytest.raises(BadVideo, match="16x16384 = 262144 pixels, over the limit of 262143"):
        open_video(files["tall"].read_bytes(), backend=backend, limits=few)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["flood_mp4", "flood_mkv"])
def test_a_packet_flood_stops_at_max_packets(files, backend, kind):
    limits = dataclasses.replace(DEFAULT, max_packets=FLOOD_LIMIT)
    start = time.monotonic()
    assert dropped(backend, limits, files[kind]) == [{"too_many_packets": 1}] * 2
    with pytest.raises(BadVideo) as err:
        open_video(files[kind].read_bytes(), backend=backend, limits=limits)
    assert err.value.reason == "too_many_packets"
    if kind == "flood_mp4":  # its index says so: refused at opening, nothing demuxed
        assert f"the container declares {FLOOD_PACKETS} packets, over the limit of {FLOOD_LIMIT}" in str(err.value)
    else:  # Matroska declares no count: demuxing stops at the limit, not at the 200,000th packet
        assert f"demuxing found more than {FLOOD_LIMIT} packets" in str(err.value)
    assert time.monotonic() - start < 5  # 3 openings; demuxing all 200,000 packets takes ~1.5 s each


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_object_over_max_bytes_is_too_large(files, backend):
    path = files["normal"]
    size = path.stat().st_size
    assert size > 4_000  # ~6.8 kB
    limits = dataclasses.replace(DEFAULT, max_bytes=4_000)
    assert dropped(backend, limits, path) == [{"too_large": 1}] * 2
    with pytest.raises(BadVideo, match=f"too_large: {size} bytes, over the limit of 4000"):
        fetch_video(str(path), max_bytes=4_000)
    with pytest.raises(BadVideo, match="too_large"):  # bytes that did not come through fetch_video
        open_video(path.read_bytes(), backend=backend, limits=limits)
    assert len(fetch_video(str(path), max_bytes=size)) == size  # exactly at the limit: read


def test_an_s3_object_over_max_bytes_is_too_large(files, s3_bucket):
    import boto3

    data = files["normal"].read_bytes()
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="v/big.mp4", Body=data)
    uri = f"s3://{s3_bucket}/v/big.mp4"
    with pytest.raises(BadVideo, match=f"too_large: {len(data)} bytes, over the limit of 4000"):
        fetch_video(uri, max_bytes=4_000)
    assert fetch_video(uri, max_bytes=len(data)) == data


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_normal_video_decodes_as_before_under_the_default_limits(files, backend):
    data = files["normal"].read_bytes()
    ref = decode_all(data)  # (90, 64, 96, 3) by a plain PyAV decode
    idx = np.array([0, 7, 30, 31, 64, 89])
    got = read_frames(open_video(data, backend=backend), idx)  # open_video's default: VideoLimits()
    assert got.shape == (6, 64, 96, 3) and np.abs(got.astype(int) - ref[idx]).max() <= 2
    train, evaluate = decoders(backend, DEFAULT, flip=False)
    [clip] = list(train(batch(files["normal"])))
    assert clip["video"].shape == (1, CFG.frames, CFG.crop_size, CFG.crop_size, 3)
    frames, labels = read_codes(clip["video"][0])
    assert (labels == 5).all() and (np.diff(frames) == CFG.frame_stride).all()
    [views] = list(evaluate(batch(files["normal"])))
    assert views["video"].shape == (CFG.eval_num_clips * CFG.eval_num_crops, CFG.frames, CFG.eval_crop_size,
                                    CFG.eval_crop_size, 3)
    assert train.bad_counts == evaluate.bad_counts == {}


def test_the_deadline_starts_before_the_container_checks(files, monkeypatch):
    """Time spent checking the container counts against the limit (it used to start after them)."""
    def slow_truncated(data, deadline=None):
        time.sleep(0.3)
        return False

    monkeypatch.setattr(decode, "container_truncated", slow_truncated)
    with pytest.raises(BadVideo, match="timeout"):
        open_video(files["normal"].read_bytes(), limits=dataclasses.replace(DEFAULT, timeout_s=0.2))
    # and the box walk itself looks at the deadline: 100,000 empty boxes
    boxes = b"\x00\x00\x00\x08free" * 100_000
    with pytest.raises(BadVideo, match="timeout"):
        container_truncated(boxes, DecodeDeadline(0.0, "boxes.mp4"))
    assert container_truncated(boxes) is True  # no index box: a cut file, as before


_CHILD = r"""
import dataclasses, json, resource, sys, time
from nlray.config import DataConfig
from nlray.data.badvideo import VideoLimits
sys.path.insert(0, "tests")
from test_video_limits import batch, decoders

backend, files = sys.argv[1], json.loads(sys.argv[2])
limits = VideoLimits.from_config(DataConfig())
def peak():  # this process's peak resident memory, MB: VmHWM, which starts afresh at exec. Not
    # ru_maxrss: Linux keeps that across fork + exec, so a child of a big pytest starts at pytest's size
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
print("at start: ru_maxrss MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "VmHWM MB", peak(),
      file=sys.stderr)
import av, decord  # noqa: F401 (the libraries loaded: their own size is not the videos' cost)
base, out = peak(), {}  # no warm-up decode: it would raise the peak (decord's: ~+0.5 GB) and hide growth
for name, lim in [("tall", limits), ("flood_mkv", dataclasses.replace(limits, max_packets=1000)),
                  ("flood_mp4", dataclasses.replace(limits, max_packets=1000)),
                  ("normal", dataclasses.replace(limits, max_bytes=4_000))]:
    t = time.monotonic()
    for dec in decoders(backend, lim):
        assert list(dec(batch(files[name]))) == [], name
        out.setdefault(name, []).append(dec.bad_counts)
    out[name] += [round(time.monotonic() - t, 2), round(peak() - base, 1)]  # s, peak growth so far (MB)
print(json.dumps({"base_mb": base, "peak_mb": peak(), "cases": out}))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_peak_memory_stays_bounded_over_every_hostile_video(files, backend):
    """A fresh process (its VmHWM is its peak resident memory; the baseline is taken after the imports,
    with nothing decoded yet, so nothing hides what follows): the tall video through the train and the
    default eval decoder (10 clips x 3 crops, 256 short side), both floods and the oversized object add
    less than PEAK_GROWTH_BOUND_MB (measured: ~25 MB, mostly the MP4 flood's 200,000-entry index)."""
    root = Path(__file__).resolve().parent.parent
    paths = json.dumps({k: str(v) for k, v in files.items()})
    proc = subprocess.run([sys.executable, "-c", _CHILD, backend, paths], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(backend, json.dumps(got), proc.stderr.strip().splitlines()[-1:])
    cases = got["cases"]
    assert [c[:2] for c in cases.values()] == [
        [{"frame_size": 1}] * 2, [{"too_many_packets": 1}] * 2, [{"too_many_packets": 1}] * 2,
        [{"too_large": 1}] * 2]
    assert got["peak_mb"] - got["base_mb"] < PEAK_GROWTH_BOUND_MB, got
