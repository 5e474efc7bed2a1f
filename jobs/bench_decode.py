"""Clip decoding speed per core: the shipped decoder against PySlowFast-style PyAV seek-and-decode.

    python jobs/bench_decode.py            # full: 4 Kinetics-like videos, ~2-4 minutes on 2 cores
    python jobs/bench_decode.py --quick    # smoke: one small video, a few seconds

Videos, generated here into a temp dir (no data needed):
- ``raw``: 640x360, 30 fps, 10 s, libx264 at its defaults (preset medium: B-frames, 3 refs, crf 23),
  keyframe every 250 frames: like a Kinetics download. Content: a textured background panning,
  moving shapes and sensor-like noise (~2 Mbit/s: at the costly end of Kinetics' 360p videos).
- ``prepared``: the same videos through ``nlray.data.transcode`` (what ``prepare_kinetics.py
  --transcode`` runs: shorter side 256, keyframe every 32 frames).

Cases (same frames, same output size for both sides of each ratio; decoders single-threaded):
- ``{32x2,128x1}/{form}/vs_pyav_seek``: one training clip per opening (random window, shorter side
  random in [256, 320], random 224 crop: what the pipeline's decoder does, less the flip); baseline:
  open, ``container.seek`` to the keyframe before the window, decode to the window's end, convert
  the clip's frames with swscale to the scaled size, crop the same square. The shipped decoder cuts
  the square before converting, so its pixels differ slightly (``mean_abs_pixel_diff``).
- ``eval10/{form}/vs_separate_seeks``: the 10 eval clips (32x2, shorter side 256) of a video from one
  opening and one pass, against ten separate seek-and-decodes (PySlowFast opens per view).
- ``{32x2,128x1,eval10}/prepared_vs_raw``: shipped decoder, prepared against raw.
- ``{32x2,128x1}/{form}/decord_vs_pyav_seek``: the decord backend, to show why the default is pyav.

"Per core" = clips per CPU-second of this process (``time.process_time``, all threads), so a
decoder's helper threads count and other jobs sharing the machine do not; wall-clock rates are
recorded too. Methods alternate clip by clip on identical indices. One JSON object per line.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlray.data import transcode  # noqa: E402
from nlray.data.decode import BACKENDS, DEFAULT_BACKEND, open_video, read_frames  # noqa: E402
from nlray.data.sampling import eval_indices, train_indices  # noqa: E402
from nlray.data.transforms import Crop, crop_origin, scaled_size  # noqa: E402


# ------------------------------------------------------------------------------------- videos


def render_frames(*, width: int, height: int, num_frames: int, seed: int):
    """Kinetics-like RGB frames: panning smooth texture, two moving shapes, mild noise."""
    rng = np.random.default_rng(seed)
    pad = 200
    coarse = rng.integers(0, 256, (3, (height + pad) // 8, (width + pad) // 8)).astype(np.float32)
    coarse = torch.from_numpy(coarse)  # (3, h/8, w/8): smooth after bicubic upsampling
    tex = torch.nn.functional.interpolate(coarse[None], size=(height + pad, width + pad), mode="bicubic")
    tex = tex[0].clamp(0, 255).byte().permute(1, 2, 0).numpy()  # (H+pad, W+pad, 3)
    vx, vy = rng.uniform(-1.5, 1.5, 2)
    colours = rng.integers(0, 256, (2, 3))
    for i in range(num_frames):
        x0, y0 = int(pad / 2 + vx * i) % pad, int(pad / 2 + vy * i) % pad
        frame = tex[y0:y0 + height, x0:x0 + width].copy()
        for k, colour in enumerate(colours):  # shapes on elliptic paths
            cx = int(width / 2 + width / 3 * np.sin(i / (17 + 9 * k) + k))
            cy = int(height / 2 + height / 3 * np.cos(i / (13 + 7 * k)))
            r = height // (6 + 3 * k)
            frame[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] = colour
        frame += rng.integers(0, 5, frame.shape, dtype=np.uint8)
        yield frame


def write_raw(path: Path, *, width: int, height: int, fps: int, seconds: float, gop: int, seed: int) -> bytes:
    """H.264 at libx264's defaults (preset medium, crf 23) except the fixed keyframe interval."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for frame in render_frames(width=width, height=height, num_frames=int(fps * seconds), seed=seed):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return path.read_bytes()


def prepare(data: bytes, *, short_side: int) -> bytes:
    """The video through nlray.data.transcode (what prepare_kinetics.py --transcode runs per video)."""
    return transcode.transcode_video(data, short_side=short_side)[0]


# ---------------------------------------------------------------------------------- decoders


def pyav_seek_clip(data: bytes, indices: np.ndarray, *, short_side: int,
                   crop: Optional[Crop] = None) -> np.ndarray:
    """PySlowFast-style: open, seek to the keyframe before the window, decode to its end; then crop."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count, stream.codec_context.thread_type = 1, "NONE"
        fps, tb, start = float(stream.average_rate), stream.time_base, stream.start_time or 0
        w, h = scaled_size(stream.width, stream.height, short_side=short_side)
        first, last = int(indices.min()), int(indices.max())
        margin = 2  # frames: PySlowFast seeks a little early (B-frame reordering)
        container.seek(start + max(int((first - margin) / fps / tb), 0), stream=stream, backward=True,
                       any_frame=False)
        want, got = set(indices.tolist()), {}
        for frame in container.decode(stream):
            i = round(float((frame.pts - start) * tb) * fps)
            if i in want:
                got[i] = frame.to_ndarray(width=w, height=h, format="rgb24", threads=1)
            if i >= last:
                break
    clip = np.stack([got[int(i)] for i in indices])  # (T, H, W, 3)
    if crop is None:
        return clip
    y, x = crop_origin(w, h, crop)
    return clip[:, y:y + crop.size, x:x + crop.size]


def shipped_clip(data: bytes, indices: np.ndarray, *, short_side: int, backend: str,
                 crop: Optional[Crop] = None) -> np.ndarray:
    """What the pipeline's decoders run (less the flip): open, read_frames with scale (and crop)."""
    with open_video(data, backend=backend) as video:
        return read_frames(video, indices, short_side=short_side, crop=crop)


def separate_seeks(data: bytes, clips: np.ndarray, *, short_side: int) -> np.ndarray:
    return np.stack([pyav_seek_clip(data, c, short_side=short_side) for c in clips])


# ---------------------------------------------------------------------------------- measuring


class Meter:
    """CPU seconds and wall seconds spent by one method, clip by clip."""

    def __init__(self):
        self.cpu = self.wall = 0.0
        self.clips = 0

    def run(self, fn: Callable[[], np.ndarray], clips: int = 1) -> np.ndarray:
        c, t = time.process_time(), time.perf_counter()
        out = fn()
        self.cpu += time.process_time() - c
        self.wall += time.perf_counter() - t
        self.clips += clips
        return out

    def rates(self) -> tuple[float, float]:
        return self.clips / max(self.cpu, 1e-9), self.clips / max(self.wall, 1e-9)


def record(name: str, a: Meter, b: Meter, **extra) -> dict:
    (a_cpu, a_wall), (b_cpu, b_wall) = a.rates(), b.rates()
    out = {"name": name, "speedup": round(a_cpu / b_cpu, 3), "clips_per_cpu_s": round(a_cpu, 3),
           "baseline_clips_per_cpu_s": round(b_cpu, 3), "wall_speedup": round(a_wall / b_wall, 3),
           "clips_per_s": round(a_wall, 3), "baseline_clips_per_s": round(b_wall, 3), "clips": a.clips}
    out.update(extra)
    print(json.dumps(out), flush=True)
    return out


def _compare(name: str, videos: list[bytes], plan: list[list[tuple]], fn_a: Callable, fn_b: Callable,
             *, check: str, **extra) -> tuple[dict, Meter, Meter]:
    """Alternate fn_a / fn_b on the same clips (plan[v]: (indices, short side, crop)) of every video.

    check: "equal" (identical output), "close" (mean |difference| of the outputs recorded: the
    shipped crop is cut before scaling, ~1 px from scale-then-crop) or "" (nothing).
    """
    a, b, same, diffs = Meter(), Meter(), True, []
    for v, data in enumerate(videos):
        for k, (idx, side, crop) in enumerate(plan[v]):
            n = len(idx) if idx.ndim == 2 else 1
            order = [(a, fn_a), (b, fn_b)] if k % 2 == 0 else [(b, fn_b), (a, fn_a)]
            outs = {id(m): m.run(lambda f=f: f(data, idx, side, crop), clips=n) for m, f in order}
            oa, ob = outs[id(a)], outs[id(b)]
            if check == "equal":
                same &= bool(np.array_equal(oa, ob))
            elif check == "close":
                same &= oa.shape == ob.shape
                diffs.append(float(np.abs(oa.astype(np.int16) - ob).mean()))
    if check:
        extra["same_frames"] = same  # same frames, same shape (and, for "equal", same pixels)
    if diffs:
        extra["mean_abs_pixel_diff"] = round(float(np.mean(diffs)), 2)
    return record(name, a, b, **extra), a, b


def main(argv: Optional[list[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one small video, two clips per case (smoke test)")
    p.add_argument("--videos", type=int, default=4, help="raw videos to generate (full mode)")
    p.add_argument("--clips", type=int, default=8, help="training clips per video and case")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS,
                   help="the shipped decoder's backend")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return run(args)


def _shipped(data, idx, side, crop, *, backend):
    return shipped_clip(data, idx, short_side=side, backend=backend, crop=crop)


def _baseline(data, idx, side, crop):
    return pyav_seek_clip(data, idx, short_side=side, crop=crop)


def _ten_seeks(data, idx, side, crop):
    return separate_seeks(data, idx, short_side=side)


def _videos(args: argparse.Namespace, tmp: Path) -> tuple[dict, dict, dict]:
    """(forms {"raw": [bytes], "prepared": [bytes]}, sizes, info) for this run."""
    if args.quick:
        geo = dict(width=320, height=180, fps=30, seconds=3, gop=60)
        sizes = dict(videos=1, clips=2, train_side=(128, 160), crop=112, eval_side=128)
    else:
        geo = dict(width=640, height=360, fps=30, seconds=10, gop=250)
        sizes = dict(videos=args.videos, clips=args.clips, train_side=(256, 320), crop=224, eval_side=256)
    t0 = time.perf_counter()
    raw = [write_raw(tmp / f"raw{v}.mp4", seed=args.seed + v, **geo) for v in range(sizes["videos"])]
    prepared = [prepare(d, short_side=sizes["eval_side"]) for d in raw]
    info = {"raw": f"{geo['width']}x{geo['height']} {geo['fps']}fps {geo['seconds']}s gop{geo['gop']}",
            "raw_kbit_s": round(8 * np.mean([len(d) for d in raw]) / geo["seconds"] / 1e3),
            "prepared_kbit_s": round(8 * np.mean([len(d) for d in prepared]) / geo["seconds"] / 1e3),
            "n_videos": sizes["videos"], "backend": args.backend,
            "setup_s": round(time.perf_counter() - t0, 1)}
    return {"raw": raw, "prepared": prepared}, sizes, info


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(1)  # the decord backend resizes with torch: keep it to one core too
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        forms, sizes, info = _videos(args, Path(tmp))
    counts = [open_video(d).num_frames for d in forms["raw"]]
    assert counts == [open_video(d).num_frames for d in forms["prepared"]], "transcode changed frame counts"
    rng = np.random.default_rng(args.seed)
    shipped = functools.partial(_shipped, backend=args.backend)
    decord = functools.partial(_shipped, backend="decord")
    same = "equal" if args.backend == "pyav" else "close"
    lo, hi = sizes["train_side"]
    out = []
    for label, frames, stride in (("32x2", 32, 2), ("128x1", 128, 1)):
        plan = [[(train_indices(n, frames=frames, stride=stride, rng=rng), int(rng.integers(lo, hi + 1)),
                  Crop(size=sizes["crop"], fy=rng.random(), fx=rng.random())) for _ in range(sizes["clips"])]
                for n in counts]  # the same clips for every method and form
        ship = {}
        for form, videos in forms.items():
            rec, ship[form], _ = _compare(f"{label}/{form}/vs_pyav_seek", videos, plan, shipped, _baseline,
                                          check="close", **info)
            out.append(rec)
            out.append(_compare(f"{label}/{form}/decord_vs_pyav_seek", videos, plan, decord, _baseline,
                                check="close", **info)[0])
        out.append(record(f"{label}/prepared_vs_raw", ship["prepared"], ship["raw"], **info))
    plan = [[(eval_indices(n, frames=32, stride=2, num_clips=10), sizes["eval_side"], None)] for n in counts]
    ship = {}
    for form, videos in forms.items():
        rec, ship[form], _ = _compare(f"eval10/{form}/vs_separate_seeks", videos, plan, shipped, _ten_seeks,
                                      check=same, **info)
        out.append(rec)
    out.append(record("eval10/prepared_vs_raw", ship["prepared"], ship["raw"], **info))
    return out


if __name__ == "__main__":
    main()
