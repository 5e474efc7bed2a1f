"""Decoding chosen frames, checked against a plain PyAV decode of every frame (tests/videos.py)."""
import pickle

import numpy as np
import pytest

from nlray.data.badvideo import BadVideo, container_truncated
from nlray.data.decode import BACKENDS, fetch_video, open_video, read_frames
from nlray.data.decode_pyav import PyAVVideo
from nlray.data.transforms import Crop, CropError, scaled_size
from videos import decode_all, ramp_position, read_codes, video_bytes, write_video


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("decode")


@pytest.fixture(scope="module", params=[(25, 2), (10, 0), (60, 3)], ids=["gop25-b2", "gop10-b0", "gop60-b3"])
def video(request, clips_dir):
    """(bytes, every frame decoded by plain PyAV) for a 150-frame video of a given GOP / B-frames."""
    gop, bframes = request.param
    data = video_bytes(clips_dir, f"v{gop}.mp4", num_frames=150, width=96, height=64, gop=gop,
                       bframes=bframes, label=3)
    return data, decode_all(data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chosen_frames_equal_full_decode(video, backend):
    data, ref = video
    assert len(ref) == 150 and (read_codes(ref)[0] == np.arange(150)).all()
    v = open_video(data, backend=backend)
    assert v.num_frames == 150 and v.fps == pytest.approx(30)
    rng = np.random.default_rng(0)
    for trial in range(15):  # random sets, any order, with repeats; and sorted runs
        idx = rng.choice(150, size=int(rng.integers(1, 40)), replace=True)
        if trial % 3 == 0:
            idx = np.sort(idx)
        got = read_frames(v, idx)
        assert got.dtype == np.uint8 and got.shape == (len(idx), 64, 96, 3)
        np.testing.assert_array_equal(got, ref[idx])  # bit-exact: same libavcodec, same frames
    v.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_clips_from_one_pass_match_separate_reads(video, backend):
    data, ref = video
    v = open_video(data, backend=backend)
    idx = np.stack([np.arange(s, s + 40, 2) for s in (0, 5, 30, 100, 110)])  # overlapping clips
    got = read_frames(v, idx)  # (5, 20, H, W, 3) from the union, decoded once
    assert got.shape == (5, 20, 64, 96, 3)
    np.testing.assert_array_equal(got, ref[idx])


@pytest.mark.parametrize("backend", BACKENDS)
def test_resize_at_decode_keeps_frames_and_aspect(video, backend):
    data, ref = video
    v = open_video(data, backend=backend)
    idx = np.arange(20, 84, 2)
    got = read_frames(v, idx, short_side=40)
    assert got.shape == (32, 40, 60, 3)  # 96x64 -> 60x40
    index, label = read_codes(got)
    assert (index == idx).all() and (label == 3).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side,fy,fx", [(96, 0.0, 0.0), (120, 0.3, 0.7), (150, 1.0, 1.0), (108, 0.5, 0.5)])
def test_crop_at_decode_takes_the_asked_square(clips_dir, backend, side, fy, fx):
    """Pixels of grey-ramp videos say where they came from: the crop covers the asked square to ~1 px."""
    s = side / 96  # scaled / decoded; the frames are 160x96
    for axis, length, f, room in (("x", 160, fx, round(160 * s) - 80), ("y", 96, fy, side - 80)):
        data = video_bytes(clips_dir, f"ramp{axis}.mp4", num_frames=8, width=160, height=96, gop=4,
                           ramp=axis, crf=0)
        got = read_frames(open_video(data, backend=backend), np.arange(0, 8, 3), short_side=side,
                          crop=Crop(size=80, fy=fy, fx=fx))
        assert got.shape == (3, 80, 80, 3)
        pos = ramp_position(got, length=length)  # (3, 80, 80) decoded coordinate of each pixel
        profile = pos.mean(axis=(0, 1) if axis == "x" else (0, 2))  # along the axis, 80 values
        start = min(int(f * (room + 1)), room) / s  # where the square begins, in decoded pixels
        i = np.arange(4, 76)  # the outermost pixels blend with what lies beyond the square
        slope, offset = np.polyfit(i, profile[i], 1)  # decoded pixels per output pixel, and where
        assert slope == pytest.approx(1 / s, rel=0.03), (axis, slope, 1 / s)  # the asked scale
        centre = slope * 39.5 + offset  # decoded coordinate of the square's centre
        # within 1 px (PyAV rounds the square's corner to even pixels), plus swscale's sampling
        # convention (its whole-frame scaling sits up to ~1.5 px off PIL/torch's too) and ~0.3 px
        # of reading grey levels back
        assert abs(centre - (start + 40 / s - 0.5)) < 2.5, (axis, centre, start + 40 / s - 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("width,height", [(160, 90), (90, 90), (96, 54), (100, 70)])
def test_crop_at_decode_of_frames_whose_height_is_not_a_multiple_of_4(clips_dir, backend, width, height):
    """4:2:0 chroma of a 90-row frame is 45 rows: a crop must not assume rows pair up (480x270 is common)."""
    data = video_bytes(clips_dir, f"odd{width}x{height}.mp4", num_frames=12, width=width, height=height,
                       gop=5, label=5)
    idx = np.arange(0, 12, 2)
    got = read_frames(open_video(data, backend=backend), idx, short_side=64, crop=Crop(size=48, fy=0.7, fx=0.2))
    assert got.shape == (6, 48, 48, 3)
    index, label = read_codes(got)
    assert (index == idx).all() and (label == 5).all()


def test_crop_that_does_not_fit_is_the_callers_error(clips_dir):
    data = video_bytes(clips_dir, "small.mp4", num_frames=4, width=64, height=40, gop=2)
    with pytest.raises(CropError, match="crop size 48 does not fit frames of 40x64"):
        read_frames(open_video(data), np.arange(4), crop=Crop(size=48))
    with pytest.raises(ValueError, match="fy, fx in"):
        Crop(size=8, fy=1.5)


def test_portrait_short_side_is_width(clips_dir):
    assert scaled_size(360, 640, short_side=256) == (256, 455)
    assert scaled_size(640, 360, short_side=256) == (455, 256)
    # (width 48 would do for PyAV, but decord 0.6 fails on frames 16, 24, 48 or 72 pixels wide)
    data = video_bytes(clips_dir, "portrait.mp4", num_frames=10, width=40, height=96, gop=5)
    for backend in BACKENDS:
        got = read_frames(open_video(data, backend=backend), np.arange(10), short_side=32)
        assert got.shape == (10, 77, 32, 3)  # 96 * 32 / 40 = 76.8


def test_pyav_decodes_from_the_keyframe_before_and_jumps_gaps(clips_dir):
    """Count the packets the PyAV backend sends: only from the keyframe before each wanted run."""
    data = video_bytes(clips_dir, "long.mp4", num_frames=300, width=64, height=48, gop=25, bframes=2)
    v = open_video(data, backend="pyav")
    assert isinstance(v, PyAVVideo)
    read_frames(v, np.arange(260, 276))  # keyframe 250: ~26 packets, not 276
    assert v.packets_sent <= 276 - 250 + 4
    read_frames(v, np.array([[5, 7], [205, 207]]))  # two runs 200 frames apart: two short passes
    assert v.packets_sent <= 2 * 25 + 8
    np.testing.assert_array_equal(read_codes(read_frames(v, np.array([299, 0])))[0], [299 % 256, 0])


def test_broken_timestamps_numbered_by_output_order(clips_dir):
    data = video_bytes(clips_dir, "nopts.mp4", num_frames=40, width=64, height=48, gop=10, bframes=2,
                       timestamps=False)
    ref = decode_all(data)
    assert (read_codes(ref)[0] == np.arange(40)).all()
    v = open_video(data, backend="pyav")
    assert not v._pts_unique  # the case under test: every packet has the same pts
    idx = np.array([[3, 17, 18, 39], [0, 1, 2, 3]])
    np.testing.assert_array_equal(read_frames(v, idx), ref[idx])


def test_short_video_and_small_files_decode(clips_dir):
    data = video_bytes(clips_dir, "short.mp4", num_frames=3, width=32, height=32, gop=1)
    for backend in BACKENDS:
        v = open_video(data, backend=backend)
        assert v.num_frames == 3
        assert read_codes(read_frames(v, np.array([2, 0, 1, 2])))[0].tolist() == [2, 0, 1, 2]


# ------------------------------------------------------------------------------- bad videos


@pytest.fixture(scope="module")
def bad_files(clips_dir):
    """Bytes of every kind of bad video, made from real files, with the reason each must get."""
    mp4 = video_bytes(clips_dir, "ok.mp4", num_frames=90, width=64, height=48, gop=30)
    fast = video_bytes(clips_dir, "fast.mp4", num_frames=90, width=64, height=48, gop=30, faststart=True)
    mkv = video_bytes(clips_dir, "ok.mkv", num_frames=90, width=64, height=48, gop=30)
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    return {
        "cut_mp4_index_at_end": (mp4[:len(mp4) // 2], "truncated"),
        "cut_mp4_faststart": (fast[:int(len(fast) * 0.6)], "truncated"),
        "cut_mkv": (mkv[:len(mkv) // 2], "truncated"),
        "mp4_header_only": (mp4[:32], "truncated"),
        "random_bytes": (noise, "undecodable"),
        "mp4_header_then_noise": (mp4[:32] + noise, "undecodable"),
        "text": (b"<html>404 Not Found</html>", "undecodable"),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["cut_mp4_index_at_end", "cut_mp4_faststart", "cut_mkv", "mp4_header_only",
                                  "random_bytes", "mp4_header_then_noise", "text"])
def test_bad_video_reason(bad_files, kind, backend):
    data, reason = bad_files[kind]
    with pytest.raises(BadVideo) as err:
        v = open_video(data, backend=backend, uri=f"mem://{kind}")
        read_frames(v, np.arange(0, v.num_frames, 2))
    assert err.value.reason == reason and err.value.uri == f"mem://{kind}"
    assert reason in str(err.value) and kind in str(err.value)


def test_intact_containers_are_not_truncated(clips_dir):
    for name, kw in (("a.mp4", {}), ("b.mp4", {"faststart": True}), ("c.mkv", {})):
        data = video_bytes(clips_dir, name, num_frames=20, width=32, height=32, gop=10, **kw)
        assert not container_truncated(data), name
        assert read_frames(open_video(data), np.arange(20)).shape == (20, 32, 32, 3)


def test_empty_and_missing(tmp_path):
    with pytest.raises(BadVideo, match="empty") as err:
        open_video(b"", uri="x.mp4")
    assert err.value.reason == "empty"
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(BadVideo) as err:
        fetch_video(str(tmp_path / "zero.mp4"))
    assert err.value.reason == "empty"
    with pytest.raises(BadVideo) as err:
        fetch_video(str(tmp_path / "nope.mp4"))
    assert err.value.reason == "missing" and err.value.uri.endswith("nope.mp4")


def test_missing_and_present_on_s3(s3_bucket, tmp_path):
    from nlray.data.storage import write_bytes

    path = write_video(tmp_path / "s3.mp4", num_frames=12, width=32, height=32, gop=6, label=7)
    write_bytes(f"s3://{s3_bucket}/v/s3.mp4", path.read_bytes())
    data = fetch_video(f"s3://{s3_bucket}/v/s3.mp4")
    assert read_codes(read_frames(open_video(data), np.arange(12)))[1].tolist() == [7] * 12
    with pytest.raises(BadVideo) as err:
        fetch_video(f"s3://{s3_bucket}/v/absent.mp4")
    assert err.value.reason == "missing"


def test_bad_video_pickles_and_checks_reason():
    bad = pickle.loads(pickle.dumps(BadVideo("truncated", "s3://b/k.mp4", "cut")))
    assert (bad.reason, bad.uri, bad.detail) == ("truncated", "s3://b/k.mp4", "cut")
    with pytest.raises(ValueError, match="'broken'"):
        BadVideo("broken", "u", "d")


def test_bad_arguments_name_the_value(clips_dir):
    data = video_bytes(clips_dir, "args.mp4", num_frames=10, width=32, height=32, gop=5)
    with pytest.raises(ValueError, match="backend='ffmpeg'.*pyav"):
        open_video(data, backend="ffmpeg")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        read_frames(open_video(data), np.array([3, 10]))
