"""The synthetic dataset: real H.264 files in the official layout whose class is recoverable from
motion, checked by decoding every frame with PyAV and measuring the blob independently."""
from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from pathlib import Path

import av
import boto3
import numpy as np
import pytest

from nlray.data import synthetic
from nlray.data.synthetic_spec import CLASSES, TINY_SPEC, SyntheticSpec

HEADER = ["label", "youtube_id", "time_start", "time_end", "split"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    assert synthetic.make_dataset(str(root), TINY_SPEC) == str(root)
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == HEADER
        return list(reader)


def decode_all(path) -> tuple[np.ndarray, str, float]:
    """Every frame (RGB uint8 [T, H, W, 3]), the codec name and the stream's frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return np.stack(frames), stream.codec_context.name, float(stream.average_rate)


def blob_masks(frames: np.ndarray) -> np.ndarray:
    """Pixels that differ from the per-pixel temporal median (the static background)."""
    video = frames.astype(np.float32)
    return np.abs(video - np.median(video, axis=0)).sum(-1) > 60


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_layout_csvs_and_files_agree(tiny_root):
    rows = {split: read_csv(tiny_root / "annotations" / f"{split}.csv")
            for split in ("train", "validate")}
    expected = set()
    for split, folder in (("train", "train"), ("validate", "val")):
        assert {r["split"] for r in rows[split]} == {split}
        for r in rows[split]:
            expected.add(f"{folder}/{r['label']}/{r['youtube_id']}_{int(r['time_start']):06d}_"
                         f"{int(r['time_end']):06d}.mp4")
    found = {p.relative_to(tiny_root).as_posix() for p in tiny_root.rglob("*.mp4")}
    assert found == expected and len(found) == len(rows["train"]) + len(rows["validate"])
    # Balanced classes: every class has per_class train and val_per_class val videos.
    assert Counter(r["label"] for r in rows["train"]) == {c: TINY_SPEC.per_class
                                                         for c in TINY_SPEC.classes}
    assert Counter(r["label"] for r in rows["validate"]) == {c: TINY_SPEC.val_per_class
                                                            for c in TINY_SPEC.classes}
    assert len({r["youtube_id"] for split in rows.values() for r in split}) == len(found)
    assert (tiny_root / synthetic.MARKER).is_file()
    assert not list(tiny_root.parent.glob(".tiny.tmp-*"))  # the temp folder was renamed away


def test_videos_are_h264_and_motion_gives_the_label(tiny_root):
    sizes, rates = set(), set()
    for path in sorted(tiny_root.rglob("*.mp4")):
        label = path.parent.name
        frames, codec, fps = decode_all(path)
        assert codec == "h264"
        t, h, w, _ = frames.shape
        assert t >= 64 and h % 2 == 0 and w % 2 == 0
        sizes.add((w, h))
        rates.add(round(fps))
        masks = blob_masks(frames)
        # First and last few frames: where the blob starts and ends.
        start, end = centroid(masks[:3].any(0)), centroid(masks[-3:].any(0))
        axis = 0 if label in ("moving_left", "moving_right") else 1
        sign = -1 if label in ("moving_left", "moving_up") else 1
        move = (end - start)[axis] / (w, h)[axis]
        assert sign * move > 0.3, (path, label, start, end)
        assert abs((end - start)[1 - axis]) / (w, h)[1 - axis] < 0.1, (path, label, start, end)
    assert len(sizes) > 3 and rates <= set(TINY_SPEC.fps_choices)  # Kinetics-like variety


def motion_fit(frames: np.ndarray, field: str) -> float:
    """Least-squares fit of one motion parameter k to brightness constancy I_t + grad(I).v = 0,
    with v = k * (-dy, dx) ("rotation": k > 0 is clockwise on screen, y points down) or
    v = k * (dx, dy) ("scale": k > 0 grows), about the centre of the changing pixels."""
    gray = frames.astype(np.float32).mean(-1)
    activity = gray.std(0)
    ys, xs = np.mgrid[0:gray.shape[1], 0:gray.shape[2]].astype(np.float32)
    cx, cy = (xs * activity).sum() / activity.sum(), (ys * activity).sum() / activity.sum()
    dx, dy = xs - cx, ys - cy
    vx, vy = (-dy, dx) if field == "rotation" else (dx, dy)
    i_t = gray[1:] - gray[:-1]
    i_y, i_x = np.gradient(0.5 * (gray[1:] + gray[:-1]), axis=(1, 2))
    g = i_x * vx + i_y * vy
    return float(-(i_t * g).sum() / (g * g).sum())


def test_other_motion_classes_are_recoverable(tmp_path):
    spec = SyntheticSpec(classes=CLASSES[4:], per_class=2, val_per_class=0, width_range=(112, 128),
                         aspects=(4 / 3,), seed=3)
    root = synthetic.make_dataset(str(tmp_path / "ds"), spec)
    for path in sorted(Path(root).rglob("*.mp4")):
        label = path.parent.name
        frames, _, fps = decode_all(path)
        if label in ("growing", "shrinking"):
            k = motion_fit(frames, "scale")
            assert (k > 0) if label == "growing" else (k < 0), (label, k)
        elif label.startswith("rotating"):
            k = motion_fit(frames, "rotation")
            assert (k > 0) if label == "rotating_clockwise" else (k < 0), (label, k)
        else:
            # Flicker: the blob's mean brightness crosses its average twice per cycle.
            region = frames.astype(np.float32).std(0).sum(-1) > 40
            level = frames[:, region].mean(axis=(1, 2))
            crossings = np.count_nonzero(np.diff(np.sign(level - level.mean())))
            per_s = crossings / 2 / (len(frames) / fps)
            assert (per_s < 1.5) if label == "flickering_slow" else (per_s > 2.5), (label, per_s)


def test_same_seed_same_dataset_other_seed_differs(tmp_path, tiny_root):
    again = synthetic.make_dataset(str(tmp_path / "again"), TINY_SPEC)
    other = synthetic.make_dataset(str(tmp_path / "other"),
                                   SyntheticSpec(**{**TINY_SPEC.__dict__, "seed": 1}))
    csv_bytes = lambda root: (Path(root) / "annotations" / "train.csv").read_bytes()  # noqa: E731
    assert csv_bytes(again) == csv_bytes(tiny_root) != csv_bytes(other)
    first = sorted(Path(again).rglob("*.mp4"))[0]
    assert np.array_equal(decode_all(first)[0], decode_all(tiny_root / first.relative_to(again))[0])


def test_existing_output_is_refused_unless_overwrite(tmp_path, tiny_root):
    with pytest.raises(ValueError, match=str(tiny_root)):
        synthetic.make_dataset(str(tiny_root), TINY_SPEC)


def test_ensure_demo_dataset_generates_once(tmp_path):
    root = Path(synthetic.ensure_demo_dataset(str(tmp_path), TINY_SPEC))
    marker = root / synthetic.MARKER
    stamp = marker.stat().st_mtime_ns
    videos = sorted(root.rglob("*.mp4"))
    assert len(videos) == len(TINY_SPEC.classes) * (TINY_SPEC.per_class + TINY_SPEC.val_per_class)
    assert synthetic.ensure_demo_dataset(str(tmp_path), TINY_SPEC) == str(root)
    assert marker.stat().st_mtime_ns == stamp  # not generated again
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no temp folders left


def test_make_dataset_on_s3(s3_bucket):
    out = f"s3://{s3_bucket}/synth"
    synthetic.make_dataset(out, TINY_SPEC)
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]}
    n = len(TINY_SPEC.classes) * (TINY_SPEC.per_class + TINY_SPEC.val_per_class)
    assert len([k for k in keys if k.endswith(".mp4")]) == n
    assert {"synth/annotations/train.csv", "synth/annotations/validate.csv",
            f"synth/{synthetic.MARKER}"} <= keys


@pytest.mark.parametrize("kwargs,match", [
    ({"classes": ("moving_sideways",)}, "moving_sideways"),
    ({"per_class": 0}, "per_class=0"),
    ({"width_range": (200, 100)}, "width_range"),
    ({"fps_choices": ()}, "fps_choices"),
])
def test_bad_spec_names_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticSpec(**kwargs)


# ----------------------------------------------------------------------- mirror pairs of classes


def direction_of(frames: np.ndarray) -> np.ndarray:
    """(dx, dy) from the blob's centroid over the first three frames to the last three."""
    masks = blob_masks(frames)
    return centroid(masks[-3:].any(0)) - centroid(masks[:3].any(0))


def test_flip_label_map_is_what_a_mirror_does_to_each_class():
    """Mirror every rendered class left-right and read the class back from the pixels: the pairs of
    FLIP_LABEL_MAP swap, every other class stays what it was."""
    spec = SyntheticSpec(classes=CLASSES, per_class=1, val_per_class=0, width_range=(112, 128),
                         aspects=(4 / 3,), seed=5)
    partner = {a: b for pair in synthetic.FLIP_LABEL_MAP for a, b in (pair, pair[::-1])}
    for plan in synthetic.plan_videos(spec):
        mirrored = synthetic.render_video(plan)[:, :, ::-1]
        want = partner.get(plan.label, plan.label)
        if plan.label.startswith("moving"):
            dx, dy = direction_of(mirrored)
            seen = (("moving_right" if dx > 0 else "moving_left") if abs(dx) > abs(dy) else
                    ("moving_down" if dy > 0 else "moving_up"))
        elif plan.label.startswith("rotating"):
            seen = "rotating_clockwise" if motion_fit(mirrored, "rotation") > 0 else "rotating_counterclockwise"
        elif plan.label in ("growing", "shrinking"):
            seen = "growing" if motion_fit(mirrored, "scale") > 0 else "shrinking"
        else:  # flicker: a mirror leaves time alone
            seen = plan.label
        assert seen == want, (plan.label, seen, want)
    assert synthetic.LONGRANGE_FLIP_LABEL_MAP == ()


# --------------------------------------------------------------------------- the longrange set

LONGRANGE_SMALL = dataclasses.replace(synthetic.LONGRANGE_SPEC, per_class=8, val_per_class=2, seed=2)
CHANGE = 60  # summed RGB change of a pixel between frames that counts as motion (codec noise: < 30)
MOVING = 10  # changed pixels that make a frame part of a motion (an object's step: > 35; codec: < 5)


@pytest.fixture(scope="module")
def longrange_videos(tmp_path_factory) -> list[tuple[str, np.ndarray]]:
    """(label, every decoded frame) of each video of a small longrange set, written as H.264."""
    root = tmp_path_factory.mktemp("synthetic") / "longrange"
    synthetic.make_dataset(str(root), LONGRANGE_SMALL)
    return [(path.parent.name, decode_all(path)[0]) for path in sorted(root.rglob("*.mp4"))]


def motion_events(frames: np.ndarray) -> list[dict]:
    """The bursts of motion in uint8 [T, H, W, 3], read from the pixels alone: runs of frames that
    differ from the frame before, each with its first and last such frame, its direction (the
    centroid of the changed pixels, tracked from its first frame to its last) and the box of every
    pixel it changed (x0, y0, x1, y1)."""
    video = frames.astype(np.float32)
    changed = np.abs(video[1:] - video[:-1]).sum(-1) > CHANGE  # (T-1, H, W): frame t+1 vs frame t
    moving = np.flatnonzero(changed.sum((1, 2)) > MOVING) + 1  # frames that differ from the one before
    runs = np.split(moving, np.flatnonzero(np.diff(moving) > 1) + 1) if len(moving) else []
    events = []
    for run in runs:
        track = np.array([centroid(changed[t - 1]) for t in run])  # (len, 2): x, y
        move = track[-1] - track[0]
        axis = int(abs(move[1]) > abs(move[0]))
        ys, xs = np.nonzero(changed[run[0] - 1:run[-1]].any(0))
        events.append({"first": int(run[0]), "last": int(run[-1]), "move": move,
                       "direction": (axis, int(np.sign(move[axis]))), "centre": track.mean(0),
                       "box": (xs.min(), ys.min(), xs.max(), ys.max())})
    return events


def relation(events: list[dict]) -> str:
    """The longrange class two clean motions make."""
    assert len(events) == 2, [(e["first"], e["last"]) for e in events]
    for e in events:
        axis = e["direction"][0]
        assert abs(e["move"][axis]) > 2 * abs(e["move"][1 - axis]), e["move"]  # one of 4 directions
    return "same_direction" if events[0]["direction"] == events[1]["direction"] else "different_direction"


def test_longrange_spec_is_balanced_and_big_enough():
    plans = synthetic.plan_videos(synthetic.LONGRANGE_SPEC)
    for split, least in (("train", 200), ("validate", 60)):
        counts = Counter(p.label for p in plans if p.split == split)
        assert set(counts) == set(synthetic.LONGRANGE_CLASSES) and len(set(counts.values())) == 1
        assert sum(counts.values()) >= least
    lo, hi = synthetic.relation_frame_limits()
    assert all(lo <= p.num_frames <= hi and p.width == p.height for p in plans)
    assert synthetic.SPECS["longrange"] is synthetic.LONGRANGE_SPEC


def test_longrange_label_is_the_relation_of_two_far_apart_motions(longrange_videos):
    """An independent reading of the pixels (no generator internals) gives the label: exactly two
    motions, one after the other with still frames between, far apart, same direction or not; a
    mirrored video keeps its class."""
    directions = Counter()
    for label, frames in longrange_videos:
        t, h, w, _ = frames.shape
        events = motion_events(frames)
        assert relation(events) == label
        assert relation(motion_events(frames[:, :, ::-1])) == label  # flip-invariant: no label pairs
        a, b = events
        assert b["first"] - a["last"] > synthetic.LONGRANGE_TIMING["pause"]  # >= 8 still frames between
        assert np.linalg.norm(a["centre"] - b["centre"]) > 0.25 * w  # far apart...
        ax0, ay0, ax1, ay1 = a["box"]
        bx0, by0, bx1, by1 = b["box"]
        assert ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0  # ...their paths never touch
        directions.update(e["direction"] for e in events)
    assert len(directions) == 4  # all four directions occur


def test_both_objects_stay_inside_every_train_crop(longrange_videos):
    """A 64 crop of a frame scaled to a short side <= 80 keeps the middle 80% at least: every pixel
    either object ever covers (the objects are bright, min(R, G, B) > 170; the darkened background
    is not) lies in it, to 1 px."""
    lo, hi = synthetic.LONGRANGE_GEOMETRY["keep"]
    assert 64 / 80 >= hi - lo
    for label, frames in longrange_videos:
        t, h, w, _ = frames.shape
        ys, xs = np.nonzero((frames.min(-1) > 170).any(0))  # (H, W): anywhere an object ever was
        assert len(xs) > 2 * (synthetic.LONGRANGE_GEOMETRY["side"] * w - 2) ** 2  # both objects seen
        assert lo * w - 1 <= xs.min() and xs.max() <= hi * w + 1, (xs.min(), xs.max(), w)
        assert lo * h - 1 <= ys.min() and ys.max() <= hi * h + 1, (ys.min(), ys.max(), h)


def test_every_16x2_clip_sees_both_motions(longrange_videos):
    """Every training window of 16 frames 2 apart (the demo preset), and so every evaluation clip,
    holds both motions whole: the label is read from the clip's own frames."""
    from nlray.data.sampling import eval_indices

    for label, frames in longrange_videos:
        n = len(frames)
        for start in range(0, n - 32 + 1):
            clip = frames[start:start + 32:2]  # (16, H, W, 3): train_indices' window at this start
            assert relation(motion_events(clip)) == label, (label, start)
        assert eval_indices(n, frames=16, stride=2, num_clips=4)[:, 0].max() <= n - 32  # among those starts


def test_longrange_classes_do_not_mix_with_motion_classes():
    with pytest.raises(ValueError, match="same_direction"):
        SyntheticSpec(classes=("same_direction", "moving_left"))
    with pytest.raises(ValueError, match=r"give 80 to 80 frames a video; the longrange classes need 32 to 39"):
        dataclasses.replace(synthetic.LONGRANGE_SPEC, duration_range=(3.2, 3.2))
