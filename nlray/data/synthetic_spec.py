"""What the synthetic dataset holds: its classes, ``SyntheticSpec`` and its presets, and the per-video plans.

A ``SyntheticSpec`` says what to generate; ``plan_videos`` turns it into one ``VideoPlan`` per video
(size, frame rate, length, name, seed), a pure function of the spec. ``synthetic_render`` draws a
plan's frames; ``synthetic`` writes the dataset (and describes the classes).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import string
from dataclasses import dataclass

import numpy as np

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
GENERATOR_VERSION = 1  # bump when the rendering (synthetic_render) changes: the demo cache is keyed by it


# Timing of the longrange videos, in frames.
LONGRANGE_TIMING = {
    "window": 32,  # frames a 16x2 clip spans: every such window of the video sees both motions
    "move": 6,  # frames one motion lasts (3 frames of a stride-2 clip)
    "a_jitter": 4,  # A starts moving 0..3 frames after the first frame every window holds
    "pause": 8,  # still frames at least between the end of A's motion and the start of B's
}


def relation_frame_range(num_frames: int) -> tuple[int, int]:
    """(first, last) frame a motion may start from so that every clip window sees it whole: the still
    frame before it and the frame it ends on lie in [num_frames - window, window - 2] (stride 2)."""
    t = LONGRANGE_TIMING
    return max(0, num_frames - t["window"]), t["window"] - 2 - t["move"]


def relation_frame_limits() -> tuple[int, int]:
    """(fewest, most) frames a longrange video may have: no looped clip, and room for A's motion, the
    pause and B's motion inside every window."""
    t = LONGRANGE_TIMING
    _, last = relation_frame_range(t["window"])
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
