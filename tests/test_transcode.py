"""Transcoding one video: the asked shorter side, keyframe interval and the same frames, checked
by demuxing/decoding the output with PyAV (every packet, every frame)."""
from __future__ import annotations

import io

import av
import numpy as np
import pandas as pd
import pytest

from nlray.data import synthetic, transcode
from nlray.data.synthetic_spec import SyntheticSpec


def source_video(width: int, fps: int = 30, seconds: float = 3.0) -> bytes:
    """A synthetic video with x264's default keyframe interval (250: one keyframe here)."""
    spec = SyntheticSpec(classes=("moving_right",), per_class=1, val_per_class=0,
                         width_range=(width, width), aspects=(16 / 9,), fps_choices=(fps,),
                         duration_range=(seconds, seconds))
    plan = synthetic.plan_videos(spec)[0]
    sink = io.BytesIO()
    transcode.encode_h264(synthetic.render_video(plan), sink, width=plan.width,
                          height=plan.height, fps=fps, keyint=250)
    return sink.getvalue()


def inspect(data: bytes) -> dict:
    """Codec, size, rate, keyframe positions (in decode order) and decoded frames."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        info = {"codec": s.codec_context.name, "width": s.codec_context.width,
                "height": s.codec_context.height, "fps": float(s.average_rate),
                "pix_fmt": s.codec_context.pix_fmt}
        packets = [p for p in c.demux(s) if p.size]
        info["keyframes"] = [i for i, p in enumerate(packets) if p.is_keyframe]
    with av.open(io.BytesIO(data)) as c:
        info["frames"] = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    return info


@pytest.mark.parametrize("short_side,keyint", [(64, 16), (90, 32)])
def test_short_side_keyint_and_frames(short_side, keyint):
    data = source_video(width=240)  # 240x136
    src = inspect(data)
    assert src["keyframes"] == [0]
    out_bytes, info = transcode.transcode_video(data, short_side=short_side, keyint=keyint)
    out = inspect(out_bytes)
    assert out["codec"] == "h264" and out["pix_fmt"] == "yuv420p"
    assert min(out["width"], out["height"]) == short_side
    assert abs(out["width"] / out["height"] - src["width"] / src["height"]) < 0.05
    assert out["width"] % 2 == 0 and out["height"] % 2 == 0
    n = len(src["frames"])
    assert abs(len(out["frames"]) - n) <= 1 and out["fps"] == src["fps"]
    # A keyframe exactly every keyint frames and nowhere else (no scene-cut keyframes).
    assert out["keyframes"] == list(range(0, len(out["frames"]), keyint))
    assert info["num_frames"] == n and info["out_width"] == out["width"]
    # Same content: the first frame, downscaled the same way by PyAV, is close.
    with av.open(io.BytesIO(data)) as c:
        first = next(c.decode(video=0)).reformat(width=out["width"], height=out["height"],
                                                 format="rgb24").to_ndarray()
    assert np.abs(first.astype(int) - out["frames"][0].astype(int)).mean() < 12


def test_never_upscales():
    data = source_video(width=96)  # 96x54: shorter side 54 < 256
    out = inspect(transcode.transcode_video(data, short_side=256, keyint=8)[0])
    assert (out["width"], out["height"]) == (96, 54)


def test_output_size_rounds_to_even_and_checks():
    assert transcode.output_size(640, 360, 256) == (456, 256)
    assert transcode.output_size(341, 256, 128) == (170, 128)
    assert transcode.output_size(100, 60, 256) == (100, 60)
    with pytest.raises(ValueError, match="short_side=0"):
        transcode.output_size(640, 360, 0)
    with pytest.raises(ValueError, match="width=33"):
        transcode.encode_h264([], io.BytesIO(), width=33, height=20, fps=25, keyint=8)


def test_transcode_fn_reports_bad_videos(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "good.mp4").write_bytes(source_video(width=128, seconds=1.0))
    (tmp_path / "src" / "empty.mp4").write_bytes(b"")
    (tmp_path / "src" / "garbage.mp4").write_bytes(b"\x00garbage" * 500)
    fn = transcode.TranscodeFn(root=str(tmp_path / "src"), out_root=str(tmp_path / "out"),
                               short_side=32, keyint=4)
    uris = [str(tmp_path / "src" / n) for n in ("good.mp4", "empty.mp4", "garbage.mp4", "gone.mp4")]
    result = fn(pd.DataFrame({"uri": uris}))
    assert list(result["status"]) == ["ok", "empty", "undecodable", "missing"]
    assert list(result["out_uri"]) == [str(tmp_path / "out" / n) for n in
                                       ("good.mp4", "empty.mp4", "garbage.mp4", "gone.mp4")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.mp4"]
    assert inspect((tmp_path / "out" / "good.mp4").read_bytes())["height"] == 32
