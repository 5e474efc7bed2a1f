"""A synthetic Kinetics-like dataset: real H.264 .mp4 files in the official Kinetics layout.

    root/annotations/train.csv      label,youtube_id,time_start,time_end,split
    root/annotations/validate.csv
    root/train/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4
    root/val/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4

Classes differ only by motion over time: a textured blob moving left / right / up / down,
rotating clockwise / counter-clockwise, growing / shrinking or flickering slowly / fast. Colours,
background textures, sizes and the path's centre are random, and every path is symmetric about its
middle, so the distribution of a single frame is the same for the two classes of a pair: a network
that averages frames over time (C2D) cannot tell them apart from appearance, a temporal one can.
Frame sizes, aspect ratios, frame rates and durations vary per video like Kinetics (scaled down).

The "longrange" set (``LONGRANGE_SPEC``) asks for a relation across space and time instead: two small
squares on opposite sides of the frame; square A moves (right, left, down or up) early in the video,
square B, far away, starts moving 14-20 frames after A did; the class says whether B repeats A's
direction (``LONGRANGE_CLASSES``). No single frame, and no single place, holds the answer.

    python jobs/make_synthetic.py --out s3://bucket/synthetic --classes 6 --per-class 24
    python jobs/make_synthetic.py --out /data/longrange --preset longrange
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import multiprocessing
import os
import string
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nlray.data import storage
from nlray.data.transcode import encode_h264

# Motion classes; pairs (left/right, ...) are mirror images in time of each other.
CLASSES = ("moving_left", "moving_right", "moving_up", "moving_down", "growing", "shrinking",
           "rotating_clockwise", "rotating_counterclockwise", "flickering_slow", "flickering_fast")
# Pairs of CLASSES that a left-right mirror swaps: the data.flip_label_map of a set of motion classes.
FLIP_LABEL_MAP = (("moving_left", "moving_right"), ("rotating_clockwise", "rotating_counterclockwise"))
# The longrange set's classes: does B's later, far-away motion repeat A's direction? A mirror turns both
# motions alike, so the class survives a flip: no flip label pairs.
LONGRANGE_CLASSES = ("same_direction", "different_direction")
LONGRANGE_FLIP_LABEL_MAP: tuple = ()
SPLIT_DIRS = {"train": "train", "validate": "val"}  # CSV split name -> folder
GENERATOR_VERSION = 1  # bump when the rendering changes: the demo cache is keyed by it
MARKER = "_COMPLETE.json"
MIN_JOBS_FOR_POOL = 48  # starting spawned workers costs seconds: not worth it for tiny sets


# Timing of the longrange videos, in frames.
LONGRANGE_TIMING = {
    "window": 32,  # frames a 16x2 clip spans: every such window of the video sees both motions
    "move": 6,  # frames one motion lasts (3 frames of a stride-2 clip)
    "a_jitter": 4,  # A starts moving 0..3 frames after the first frame every window holds
    "pause": 8,  # still frames at least between the end of A's motion and the start of B's
}


def _relation_frame_range(num_frames: int) -> tuple[int, int]:
    """(first, last) frame a motion may start from so that every clip window sees it whole: the still
    frame before it and the frame it ends on lie in [num_frames - window, window - 2] (stride 2)."""
    t = LONGRANGE_TIMING
    return max(0, num_frames - t["window"]), t["window"] - 2 - t["move"]


def relation_frame_limits() -> tuple[int, int]:
    """(fewest, most) frames a longrange video may have: no looped clip, and room for A's motion, the
    pause and B's motion inside every window."""
    t = LONGRANGE_TIMING
    _, last = _relation_frame_range(t["window"])
    return t["window"], t["window"] + last - (t["a_jitter"] - 1) - t["move"] - t["pause"]


def _check_relation_frames(spec: SyntheticSpec) -> None:
    """ValueError unless every video of a longrange spec has a frame count ``relation_frame_limits`` allows."""
    lo, hi = relation_frame_limits()
    fewest = int(round(spec.duration_range[0] * min(spec.fps_choices)))
    most = int(round(spec.duration_range[1] * max(spec.fps_choices)))
    if fewest < lo or most > hi:
        raise ValueError(f"duration_range={spec.duration_range!r}, fps_choices={spec.fps_choices!r} give "
                         f"{fewest} to {most} frames a video; the longrange classes need {lo} to {hi}")


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; every video is a pure function of (spec, split, index)."""

    classes: tuple[str, ...] = CLASSES[:6]  # class names, all of CLASSES or all of LONGRANGE_CLASSES
    per_class: int = 24  # train videos per class
    val_per_class: int = 8  # validation videos per class
    width_range: tuple[int, int] = (96, 160)  # frame width, uniform (even)
    aspects: tuple[float, ...] = (4 / 3, 16 / 9, 3 / 2, 1.0)  # width / height, Kinetics-like mix
    fps_choices: tuple[int, ...] = (24, 25, 30)
    duration_range: tuple[float, float] = (2.7, 4.0)  # seconds: >= 64 frames at 24 fps
    gop: int = 250  # keyframe interval of the encoder (x264's default, like raw Kinetics)
    crf: int = 23
    seed: int = 0

    def __post_init__(self) -> None:
        family = LONGRANGE_CLASSES if self.classes and self.classes[0] in LONGRANGE_CLASSES else CLASSES
        bad = [c for c in self.classes if c not in family]
        if bad or not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes={self.classes!r}: need distinct names, all from {list(CLASSES)} "
                             f"or all from {list(LONGRANGE_CLASSES)}")
        if self.per_class < 1 or self.val_per_class < 0:
            raise ValueError(f"per_class={self.per_class}, val_per_class={self.val_per_class}: "
                             "need per_class >= 1 and val_per_class >= 0")
        lo, hi = self.width_range
        if not 32 <= lo <= hi:
            raise ValueError(f"width_range={self.width_range!r}: need 32 <= lo <= hi")
        if not 0.5 <= self.duration_range[0] <= self.duration_range[1]:
            raise ValueError(f"duration_range={self.duration_range!r}: need 0.5 <= lo <= hi seconds")
        if not self.fps_choices or min(self.fps_choices) < 1 or self.gop < 1:
            raise ValueError(f"fps_choices={self.fps_choices!r}, gop={self.gop}: need positive values")
        if family is LONGRANGE_CLASSES:
            _check_relation_frames(self)

    def key(self) -> str:
        """A short hash naming this spec (and the generator version) in caches."""
        blob = json.dumps([GENERATOR_VERSION, dataclasses.asdict(self)], sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


# The embedded default's dataset: 6 classes x (40 train + 10 val), ~128x96 frames, ~3 s each.
DEMO_SPEC = SyntheticSpec(per_class=40, val_per_class=10)
# For tests: 4 classes (both translation pairs) x (2 train + 1 val), small and short.
TINY_SPEC = SyntheticSpec(classes=CLASSES[:4], per_class=2, val_per_class=1, width_range=(64, 96),
                          duration_range=(2.7, 3.0), fps_choices=(24, 25, 30))
# The long-range relation set: 2 classes x (500 train + 50 val), square 80-96 px frames, 36 frames (25 fps)
# so that every 16x2 clip (the demo preset's) sees both motions (LONGRANGE_TIMING). A relation needs the
# videos: the demo's NL-I3D learnt it from 1000 (~100% val after ~5000 steps of 8 clips), not from 400.
LONGRANGE_SPEC = SyntheticSpec(classes=LONGRANGE_CLASSES, per_class=500, val_per_class=50,
                               width_range=(80, 96), aspects=(1.0,), fps_choices=(25,),
                               duration_range=(1.44, 1.44))
SPECS = {"demo": DEMO_SPEC, "tiny": TINY_SPEC,  # data.synthetic -> spec (nlray.choices.SYNTHETIC_SETS)
         "longrange": LONGRANGE_SPEC}


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render and name one video."""

    split: str  # "train" | "validate"
    label: str
    youtube_id: str
    time_start: int
    time_end: int
    width: int
    height: int
    fps: int
    num_frames: int
    seed: int

    @property
    def relpath(self) -> str:
        return (f"{SPLIT_DIRS[self.split]}/{self.label}/"
                f"{self.youtube_id}_{self.time_start:06d}_{self.time_end:06d}.mp4")


_ID_CHARS = string.ascii_letters + string.digits + "-_"  # YouTube's id alphabet


def plan_videos(spec: SyntheticSpec) -> list[VideoPlan]:
    """Deterministic per-video parameters for the whole dataset (balanced classes)."""
    rng = np.random.default_rng(spec.seed)
    plans = []
    for split, count in (("train", spec.per_class), ("validate", spec.val_per_class)):
        for i in range(count):
            for label in spec.classes:
                width = int(rng.integers(spec.width_range[0] // 2, spec.width_range[1] // 2 + 1)) * 2
                aspect = float(rng.choice(spec.aspects))
                height = max(32, int(round(width / aspect / 2)) * 2)  # H.264 4:2:0 needs even dims
                fps = int(rng.choice(spec.fps_choices))
                duration = float(rng.uniform(*spec.duration_range))
                start = int(rng.integers(0, 600))
                plans.append(VideoPlan(
                    split=split, label=label,
                    youtube_id="".join(rng.choice(list(_ID_CHARS), size=11)),
                    time_start=start, time_end=start + 10, width=width, height=height, fps=fps,
                    num_frames=max(2, int(round(duration * fps))),
                    seed=int(rng.integers(0, 2**31 - 1))))
    return plans


# ------------------------------------------------------------------------------------ rendering


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static textured background: smooth colour blobs plus fine grain, float32 [H, W, 3]."""
    gh, gw = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    coarse = rng.uniform(0.1, 0.9, size=(gh, gw, 3)).astype(np.float32)
    ys = np.linspace(0, gh - 1, height, dtype=np.float32)
    xs = np.linspace(0, gw - 1, width, dtype=np.float32)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    # Bilinear upsampling of the coarse grid: smooth, Kinetics-like colour regions.
    smooth = ((1 - wy) * ((1 - wx) * coarse[y0][:, x0] + wx * coarse[y0][:, x1])
              + wy * ((1 - wx) * coarse[y1][:, x0] + wx * coarse[y1][:, x1]))
    grain = rng.normal(0.0, 0.04, size=(height, width, 1)).astype(np.float32)
    return np.clip(smooth + grain, 0.0, 1.0)


def _trajectory(plan: VideoPlan, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-frame centre (x, y), radius, angle and brightness of the blob for the plan's class.

    Every path is symmetric about its middle (s runs from -1 to 1), so the two classes of a pair
    visit the same positions / sizes / angles with the same frequency: only the order differs.
    """
    h, w, n = plan.height, plan.width, plan.num_frames
    s = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    r = float(rng.uniform(0.11, 0.15)) * min(h, w)
    x = np.full(n, rng.uniform(r, w - r), np.float32)
    y = np.full(n, rng.uniform(r, h - r), np.float32)
    radius = np.full(n, r, np.float32)
    angle = np.full(n, rng.uniform(0, 2 * np.pi), np.float32)
    bright = np.ones(n, np.float32)
    kind, _, how = plan.label.partition("_")
    if kind == "moving":
        sign = -1.0 if how in ("left", "up") else 1.0
        dim = w if how in ("left", "right") else h
        travel = float(rng.uniform(0.85, 1.0)) * (dim - 2 * r - 2)
        centre = rng.uniform(r + 1 + travel / 2, dim - r - 1 - travel / 2)
        (x if how in ("left", "right") else y)[:] = centre + sign * travel / 2 * s
    elif plan.label in ("growing", "shrinking"):
        ratio = float(rng.uniform(2.2, 3.0))  # end radius / start radius
        sign = 1.0 if plan.label == "growing" else -1.0
        r_mid = min(h, w) * 0.42 / np.sqrt(ratio)  # the largest radius still fits the frame
        radius = (r_mid * np.exp(sign * np.log(ratio) / 2 * s)).astype(np.float32)
        x[:], y[:] = rng.uniform(0.45, 0.55) * w, rng.uniform(0.45, 0.55) * h
    elif kind == "rotating":
        turns = float(rng.uniform(0.6, 1.2))  # over the whole video: < 90 degrees between frames
        sign = -1.0 if how == "clockwise" else 1.0  # image y points down: +angle is clockwise
        angle = angle - sign * np.pi * turns * s
        radius[:] = 0.3 * min(h, w)
        x[:], y[:] = rng.uniform(0.4, 0.6) * w, rng.uniform(0.4, 0.6) * h
    elif kind == "flickering":
        hz = rng.uniform(0.5, 1.0) if how == "slow" else rng.uniform(3.0, 4.5)
        t = np.arange(n, dtype=np.float32) / plan.fps
        bright = 0.55 + 0.45 * np.cos(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi))
    else:
        raise AssertionError(f"SyntheticSpec validated the class names; got {plan.label!r}")
    return {"x": x, "y": y, "radius": radius, "angle": angle.astype(np.float32),
            "bright": bright.astype(np.float32)}


def render_video(plan: VideoPlan) -> np.ndarray:
    """The plan's frames, uint8 [T, H, W, 3] RGB."""
    if plan.label in LONGRANGE_CLASSES:
        return _render_relation(plan)
    return _render_blob(plan)


def _render_blob(plan: VideoPlan) -> np.ndarray:
    """One textured blob moving as its motion class says, uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(plan.seed)
    h, w = plan.height, plan.width
    background = _background(rng, h, w)
    colours = rng.uniform(0.0, 1.0, size=(2, 3)).astype(np.float32)
    colours[1] = 1.0 - colours[0]  # the two stripe colours contrast with each other
    aspect = float(rng.uniform(0.6, 0.85))  # an ellipse: its orientation shows rotation
    stripes = float(rng.uniform(2.0, 3.5))  # stripes across the blob's long axis
    path = _trajectory(plan, rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((plan.num_frames, h, w, 3), np.uint8)
    for t in range(plan.num_frames):
        r, a = path["radius"][t], path["angle"][t]
        dx, dy = xx - path["x"][t], yy - path["y"][t]
        # Blob-local coordinates (rotated with the blob, scaled by its radius).
        u = (np.cos(a) * dx + np.sin(a) * dy) / r
        v = (-np.sin(a) * dx + np.cos(a) * dy) / (r * aspect)
        rho = np.sqrt(u * u + v * v)
        alpha = np.clip((1.0 - rho) * r / 1.5, 0.0, 1.0)[..., None]  # ~1.5 px soft edge
        band = (np.sin(np.pi * stripes * u) > 0)[..., None]
        blob = np.where(band, colours[0], colours[1]) * path["bright"][t]
        out[t] = (255.0 * (alpha * blob + (1.0 - alpha) * background) + 0.5).astype(np.uint8)
    return out


# ------------------------------------------------------------------------- the longrange set

# Layout of the longrange videos, as fractions of the (square) frame's side.
LONGRANGE_GEOMETRY = {
    "keep": (0.2, 0.8),  # every train crop keeps this band of a square frame (a 64 crop of <= 80 px)
    "side": 0.11,  # side of an object (7 px at 64 px)
    "travel": 0.12,  # one motion's length (8 px at 64 px, ~1.3 px a frame)
    "apart": 0.3,  # the two paths' middles differ by this much in x or y at least: opposite sides or corners
}
DIRECTIONS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))  # (dx, dy), y down: right, left, down, up
MAX_LAYOUT_TRIES = 1000  # ~7% of draws are far enough apart: 1000 misses in a row never happen


def _relation_times(num_frames: int, rng: np.random.Generator) -> tuple[int, int]:
    """Last still frame before A's motion and before B's: A early, B at least ``pause`` frames later."""
    t = LONGRANGE_TIMING
    first, last = _relation_frame_range(num_frames)
    start_a = first + int(rng.integers(0, t["a_jitter"]))
    start_b = int(rng.integers(start_a + t["move"] + t["pause"], last + 1))
    return start_a, start_b


def _relation_middles(rng: np.random.Generator) -> np.ndarray:
    """float64 [2, 2]: the middle (x, y) of A's and of B's path, in frame fractions, ``apart`` apart.

    Drawn without looking at the directions: wherever an object moves from its middle, it stays whole
    inside the kept square, and where the objects sit says nothing about how they will move.
    """
    g = LONGRANGE_GEOMETRY
    reach = (g["side"] + g["travel"]) / 2  # from a path's middle to the far edge of the object
    lo, hi = g["keep"][0] + reach, g["keep"][1] - reach
    for _ in range(MAX_LAYOUT_TRIES):
        middles = rng.uniform(lo, hi, size=(2, 2))  # (object, xy)
        if np.abs(middles[0] - middles[1]).max() >= g["apart"]:
            return middles
    raise AssertionError(f"no layout {g['apart']} apart in {MAX_LAYOUT_TRIES} draws: {g}")


def _relation_paths(plan: VideoPlan, rng: np.random.Generator) -> np.ndarray:
    """float32 [2, T, 2]: centre (x, y) of objects A and B in every frame, in frame fractions."""
    same = plan.label == "same_direction"
    dir_a = int(rng.integers(4))
    dir_b = dir_a if same else (dir_a + int(rng.integers(1, 4))) % 4  # one of the 3 others
    middles = _relation_middles(rng)  # (2, 2)
    starts = _relation_times(plan.num_frames, rng)
    frames = np.arange(plan.num_frames, dtype=np.float64)
    travel = LONGRANGE_GEOMETRY["travel"]
    paths = np.empty((2, plan.num_frames, 2), np.float32)
    for k, (d, t0) in enumerate(zip((dir_a, dir_b), starts)):
        direction = np.asarray(DIRECTIONS[d])
        done = np.clip((frames - t0) / LONGRANGE_TIMING["move"], 0.0, 1.0)  # (T,): 0 still .. 1 arrived
        paths[k] = middles[k] + travel * (done[:, None] - 0.5) * direction  # (T, 2)
    return paths


def _square_alpha(xx: np.ndarray, yy: np.ndarray, centre: np.ndarray, side: float) -> np.ndarray:
    """Coverage [H, W] of an axis-aligned square of ``side`` px at ``centre`` (px): 1 px soft edges,
    so that sub-pixel steps show."""
    ax = np.clip(side / 2 + 0.5 - np.abs(xx - centre[0]), 0.0, 1.0)
    ay = np.clip(side / 2 + 0.5 - np.abs(yy - centre[1]), 0.0, 1.0)
    return ax * ay


def _render_relation(plan: VideoPlan) -> np.ndarray:
    """Two bright squares on a darkened textured background moving as ``_relation_paths`` says."""
    rng = np.random.default_rng(plan.seed)
    h, w = plan.height, plan.width
    background = 0.6 * _background(rng, h, w)  # <= ~0.6: the bright squares stand out
    colours = rng.uniform(0.75, 1.0, size=(2, 3)).astype(np.float32)
    paths = _relation_paths(plan, rng) * np.array([w, h], np.float32)  # (2, T, 2) in px
    side = LONGRANGE_GEOMETRY["side"] * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((plan.num_frames, h, w, 3), np.uint8)
    for t in range(plan.num_frames):
        frame = background
        for k in range(2):
            alpha = _square_alpha(xx, yy, paths[k, t], side)[..., None]  # (H, W, 1)
            frame = alpha * colours[k] + (1.0 - alpha) * frame
        out[t] = (255.0 * frame + 0.5).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------ writing


def _write_one(job: tuple[VideoPlan, int, int, str]) -> str:
    """Render and encode one video below a local root (top level: runs in a worker process)."""
    plan, gop, crf, root = job
    path = Path(root) / plan.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = render_video(plan)
    encode_h264(frames, str(path), width=plan.width, height=plan.height, fps=plan.fps,
                keyint=gop, crf=crf)
    return plan.relpath


def _write_csvs(plans: list[VideoPlan], root: Path) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in SPLIT_DIRS:
        rows = [p for p in plans if p.split == split]
        if not rows:
            continue
        with open(root / "annotations" / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for p in rows:
                writer.writerow([p.label, p.youtube_id, p.time_start, p.time_end, p.split])


def _generate_local(spec: SyntheticSpec, root: Path, processes: int) -> int:
    """Write every video, the CSVs and finally the marker into ``root`` (a fresh folder)."""
    plans = plan_videos(spec)
    jobs = [(p, spec.gop, spec.crf, str(root)) for p in plans]
    if processes > 1 and len(jobs) >= MIN_JOBS_FOR_POOL:
        # spawn, not fork: the caller may be a Ray driver with threads running. An executor
        # (unlike multiprocessing.Pool) raises if a worker dies instead of hanging.
        with ProcessPoolExecutor(min(processes, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_one, jobs, chunksize=4))
    else:
        for job in jobs:
            _write_one(job)
    _write_csvs(plans, root)
    (root / MARKER).write_text(json.dumps({"spec": dataclasses.asdict(spec), "key": spec.key(),
                                           "videos": len(plans)}, indent=1))
    return len(plans)


def make_dataset(out: str, spec: SyntheticSpec = DEMO_SPEC, *, endpoint_url: str = "",
                 processes: int = 2, overwrite: bool = False) -> str:
    """Generate the dataset at ``out`` (local path, file:// or s3://) and return ``out``.

    Videos are written to a local temp folder first: locally it is renamed into place (readers
    never see half a dataset), for S3 it is uploaded and the marker file goes last.
    """
    if _existing_files(out, endpoint_url):
        if not overwrite:
            raise ValueError(f"out={out!r} already holds files; pass overwrite=True "
                             "(--overwrite) or choose an empty location")
        storage.delete_tree(out, endpoint_url=endpoint_url)
    with storage.staged_tree(out, last=MARKER, endpoint_url=endpoint_url) as tmp:
        _generate_local(spec, Path(tmp), processes)
    return out


def _existing_files(out: str, endpoint_url: str) -> list[tuple[str, int]]:
    try:
        return storage.list_files(out, suffixes=None, endpoint_url=endpoint_url)
    except storage.MissingObjectError:  # a local folder not made yet
        return []


def ensure_dataset_at(uri: str, spec: SyntheticSpec, *, endpoint_url: str = "", processes: int = 2) -> str:
    """``uri`` (e.g. on the cluster's shared S3 storage) holding ``spec``'s dataset, generated unless its
    marker file (written last) is there already."""
    if not storage.exists(storage.join(uri, MARKER), endpoint_url=endpoint_url):
        make_dataset(uri, spec, endpoint_url=endpoint_url, processes=processes, overwrite=True)
    return uri


def ensure_demo_dataset(cache_dir: str, spec: SyntheticSpec = DEMO_SPEC, *,
                        processes: int = 2) -> str:
    """The local root of ``spec``'s dataset under ``cache_dir``, generated on first use only.

    Generation writes to a temp folder and renames it into place, so concurrent callers and
    interrupted runs never leave a partial dataset behind; the marker file says it is complete.
    """
    root = Path(os.path.expanduser(cache_dir)) / "synthetic" / f"{spec.key()}"
    if (root / MARKER).is_file():
        return str(root)
    try:
        with storage.staged_tree(str(root)) as tmp:  # renamed into place when complete
            _generate_local(spec, Path(tmp), processes)
    except OSError:
        if not (root / MARKER).is_file():  # lost a race to a complete copy: fine
            raise
    return str(root)
