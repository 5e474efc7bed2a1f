"""The Ray Data pipeline end to end on a real moto S3 endpoint and on a local folder.

Every test video's pixels say which frame and which class they are (tests/videos.py), so each
clip that comes out is checked against its own content: right label, right frames, right shape.
"""
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from nlray.config import DataConfig
from nlray.data.pipeline import (bad_video_counts, bad_video_list, bad_video_log_name, build_eval_dataset,
                                 build_train_dataset, has_split, split_frame, train_frame)
from nlray.data.sampling import eval_indices
from videos import read_codes, video_bytes

# (name, frames, label): 12 and 10 frames are shorter than an 8x2 window (16): they must loop
GOOD = [("a", 40, 0), ("b", 33, 1), ("c", 60, 2), ("d", 12, 3), ("e", 10, 4), ("f", 50, 5), ("g", 24, 6)]
BAD = {"missing": "gone.mp4", "empty": "zero.mp4", "truncated": "cut.mp4", "undecodable": "noise.mp4"}
CFG = dict(frames=8, frame_stride=2, train_short_side=[48, 56], crop_size=40, eval_short_side=48,
           eval_crop_size=48, decode_batch=2, decode_actors=2, decode_actors_max=0, decode_cpus=0.5)


def write_dataset(tmp_path, put) -> pd.DataFrame:
    """Write the good and bad videos with ``put(name, bytes) -> uri``; the manifest as a DataFrame."""
    rows = []
    for name, n, label in GOOD:
        data = video_bytes(tmp_path, f"{name}.mp4", num_frames=n, width=80, height=60, gop=8, label=label)
        rows.append((put(f"{name}.mp4", data), label, n))
    cut = video_bytes(tmp_path, "cut_src.mp4", num_frames=40, width=80, height=60, gop=8)
    bad_bytes = {"zero.mp4": b"", "cut.mp4": cut[:len(cut) // 2],
                 "noise.mp4": np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()}
    for reason, name in BAD.items():
        uri = put(name, bad_bytes[name]) if name in bad_bytes else put(name, None)
        rows.append((uri, 9, 0))
    return pd.DataFrame({"uri": [r[0] for r in rows], "label_id": [r[1] for r in rows],
                         "label": [f"class{r[1]}" for r in rows], "split": "train",
                         "video_id": [f"id{i}" for i in range(len(rows))],
                         "num_frames": [r[2] for r in rows]})


@pytest.fixture
def s3_manifest(s3_bucket, tmp_path):
    from nlray.data.storage import write_bytes

    def put(name, data):
        uri = f"s3://{s3_bucket}/train/{name}"
        if data is not None:  # None: listed in the manifest, never written ("missing")
            write_bytes(uri, data)
        return uri

    return write_dataset(tmp_path, put)


@pytest.fixture
def local_manifest(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()

    def put(name, data):
        if data is not None:
            (root / name).write_bytes(data)
        return str(root / name)

    return write_dataset(tmp_path, put)


def check_train_batch(batch: dict, df: pd.DataFrame) -> list[int]:
    """Every clip's content against its row: label, 8 frames 2 apart (looped), shape; -> video_idx."""
    video, label, rows = batch["video"], batch["label"], batch["video_idx"]
    assert video.dtype == torch.uint8 and video.shape[1:] == (8, 40, 40, 3)
    assert label.dtype == torch.int64 and rows.dtype == torch.int64
    index, content_label = read_codes(video.numpy())
    for k, row in enumerate(rows.tolist()):
        n = int(df.num_frames[row])
        assert label[k] == df.label_id[row] and (content_label[k] == df.label_id[row]).all()
        start = int(index[k, 0])
        assert index[k].tolist() == [((start + 2 * j) % n) % 256 for j in range(8)], (row, n)
        if n >= 16:
            assert start + 16 <= n  # the window fits: no looping needed
    return rows.tolist()


def consume_split(ds, n: int, df: pd.DataFrame) -> list[int]:
    """What Ray Train does: streaming_split into n shards, each read by its own consumer."""
    shards, out, errors = ds.streaming_split(n), [], []

    def read(it):
        try:
            # Ray 2.60: a dtypes dict must name every column (a missing one is a KeyError)
            dtypes = {"video": torch.uint8, "label": torch.int64, "video_idx": torch.int64}
            for b in it.iter_torch_batches(batch_size=3, dtypes=dtypes):
                out.extend(check_train_batch(b, df))
        except BaseException as exc:  # surface in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(it,)) for it in shards]
    [t.start() for t in threads]
    [t.join() for t in threads]
    if errors:
        raise errors[0]
    return out


def test_train_clips_from_s3_labels_loops_and_bad_videos(ray_local, s3_manifest):
    df = s3_manifest
    log = bad_video_log_name("test_train_s3", "train")
    ds = build_train_dataset(df, DataConfig(**CFG, backend="pyav"), run_name="test_train_s3")
    good = set(range(len(GOOD)))
    epoch1 = consume_split(ds, 2, df)
    assert sorted(epoch1) == sorted(good)  # every good video once, no bad one
    assert bad_video_counts(log) == {reason: 1 for reason in BAD}
    listed = {uri.rsplit("/", 1)[1]: reason for uri, reason, _ in bad_video_list(log)}
    assert listed == {name: reason for reason, name in BAD.items()}


def test_bad_video_log_counts_distinct_videos():
    """Every epoch reports a bad video again: the counts are of distinct videos, reports of all."""
    from nlray.data.pipeline import BadVideoLog

    log = BadVideoLog()  # the plain class behind the Ray actor
    for _ in range(3):  # three epochs
        log.report("s3://b/cut.mp4", "truncated", "d1")
        log.report("s3://b/gone.mp4", "missing", "d2")
    log.report("s3://b/zero.mp4", "empty", "d3")
    assert log.counts() == {"truncated": 1, "missing": 1, "empty": 1} and log.reports() == 7
    assert log.entries() == [("s3://b/cut.mp4", "truncated", "d1"), ("s3://b/gone.mp4", "missing", "d2"),
                             ("s3://b/zero.mp4", "empty", "d3")]


def test_eval_views_from_local_folder(ray_local, local_manifest):
    df = local_manifest
    log = bad_video_log_name("test_eval_local", "eval")
    ds = build_eval_dataset(df, DataConfig(**CFG, backend="decord"), run_name="test_eval_local", split="train",
                            num_clips=3, num_crops=3)  # (the train test uses the other backend)
    seen = {}
    for b in ds.iter_torch_batches(batch_size=5):
        video = b["video"].numpy()
        assert video.dtype == np.uint8 and video.shape[1:] == (8, 48, 48, 3)
        index, content_label = read_codes(video)
        for k in range(len(video)):
            row, clip, crop = int(b["video_idx"][k]), int(b["clip_idx"][k]), int(b["crop_idx"][k])
            n = int(df.num_frames[row])
            want = eval_indices(n, frames=8, stride=2, num_clips=3)[clip] % 256  # what clip k must hold
            assert index[k].tolist() == want.tolist()
            assert (content_label[k] == df.label_id[row]).all() and b["label"][k] == df.label_id[row]
            seen[(row, clip, crop)] = seen.get((row, clip, crop), 0) + 1
    assert seen == {(r, c, s): 1 for r in range(len(GOOD)) for c in range(3) for s in range(3)}
    assert bad_video_counts(log) == {reason: 1 for reason in BAD}


def test_split_frame_checks_the_manifest():
    df = pd.DataFrame({"uri": ["a", "b", "c"], "label_id": [0, 1, 0], "split": ["train", "val", "train"]})
    assert split_frame(df, "train").uri.tolist() == ["a", "c"]
    want = r"split='test' has no rows; splits in the manifest: \['train', 'val'\]"
    with pytest.raises(ValueError, match=want):
        split_frame(df, "test")
    with pytest.raises(ValueError, match="no 'label_id' column"):
        split_frame(df.drop(columns="label_id"), None)


def test_train_frame_repeats_the_train_split_and_names_the_splits():
    df = pd.DataFrame({"uri": ["a", "b", "c"], "label_id": [0, 1, 0], "split": ["train", "val", "train"]})
    assert train_frame(df, "train", repeat=2).uri.tolist() == ["a", "c", "a", "c"]
    assert has_split(df, "val") and not has_split(df, "test")
    with pytest.raises(ValueError, match=r"no 'test' rows to train on; its splits: \['train', 'val'\]"):
        train_frame(df, "test")


def test_eval_crop_larger_than_short_side_is_refused(ray_local):
    df = pd.DataFrame({"uri": ["a"], "label_id": [0], "split": ["val"]})
    with pytest.raises(ValueError, match="data.eval_crop_size=64 must be <= data.eval_short_side=48"):
        build_eval_dataset(df, DataConfig(**{**CFG, "eval_crop_size": 64}), run_name="test_refused")


def test_eval_views_equal_crops_of_decoded_clips(tmp_path):
    """EvalClipDecoder crops straight from the distinct frames: same as cropping each decoded clip."""
    from nlray.data.clips import EvalClipDecoder
    from nlray.data.decode import open_video, read_frames
    from nlray.data.transforms import spatial_crops

    path = tmp_path / "v.mp4"
    path.write_bytes(video_bytes(tmp_path, "src.mp4", num_frames=50, width=96, height=64, gop=10, label=2))
    dec = EvalClipDecoder(frames=8, stride=2, short_side=48, crop_size=40, num_clips=4, num_crops=3,
                          backend="pyav", log_name="unused")
    views = dec.views(str(path))
    assert views.shape == (4, 3, 8, 40, 40, 3)
    clips = read_frames(open_video(path.read_bytes()), eval_indices(50, frames=8, stride=2, num_clips=4),
                        short_side=48)
    for c in range(4):
        np.testing.assert_array_equal(views[c], spatial_crops(clips[c], size=40, num_crops=3))


def test_manifest_rows_new_order_each_plan_one_frame_per_task():
    """The datasource behind the per-epoch shuffle, read without Ray: every row once, one frame a task."""
    from nlray.data.manifest_rows import ManifestRows

    df = pd.DataFrame({"uri": [f"u{i}" for i in range(23)], "label_id": np.arange(23) % 5})

    def plan(source, parallelism=4):
        frames = [list(task()) for task in source.get_read_tasks(parallelism)]
        assert all(len(f) == 1 for f in frames)  # one DataFrame per read task
        sizes = sorted(len(f[0]) for f in frames)
        assert sizes[-1] <= source.max_rows and sizes[-1] - sizes[0] <= 1 and len(frames) % parallelism == 0
        rows = pd.concat([f[0] for f in frames])
        assert (rows.uri == "u" + rows.video_idx.astype(str)).all()  # each row keeps its uri and label
        assert (rows.label_id == rows.video_idx % 5).all()
        assert sorted(rows.video_idx) == list(range(23))
        return rows.video_idx.tolist()

    shuffled = ManifestRows(df, shuffle=True)
    orders = [plan(shuffled) for _ in range(3)]
    assert orders[0] != orders[1] != orders[2]  # a new order per plan (per epoch)
    seeded = [ManifestRows(df, shuffle=True, seed=7) for _ in range(2)]
    first, second = ([plan(s) for _ in range(2)] for s in seeded)
    assert first == second and first[0] != first[1]  # reproducible sequence, still new each epoch
    assert plan(ManifestRows(df, shuffle=False)) == list(range(23))
    assert plan(ManifestRows(df, shuffle=True, max_rows=5)) != list(range(23))  # 8 tasks of <= 5 rows


def test_a_read_task_stays_small_and_named_at_kinetics_size():
    """246,000 rows over a pool of 1 decoder: Ray 2.60 reads ``read_fn.__name__`` of any read task over
    1 MiB (a functools.partial has none: the crash of a large manifest); here every task is far below."""
    import ray.cloudpickle as pickle

    from nlray.data.manifest_rows import ManifestRows

    n = 246_000
    df = pd.DataFrame({"uri": [f"s3://kinetics/train/abseiling/{i:011d}_000010_000020.mp4" for i in range(n)],
                       "label_id": np.arange(n) % 400})
    tasks = ManifestRows(df, shuffle=True, seed=0).get_read_tasks(2)
    sizes = [len(pickle.dumps(t)) for t in tasks]
    assert max(sizes) < 512 * 1024, max(sizes)
    assert len(tasks) % 2 == 0  # a multiple of what the pipeline asks: every decoder gets as many blocks
    assert all(t.read_fn.__name__ == "read_manifest_rows" for t in tasks)
    assert sum(t.metadata.num_rows for t in tasks) == n


@pytest.mark.parametrize("actors, actors_max, blocks", [(2, 0, 4), (2, 8, 16), (1, 0, 2)])
def test_the_rows_reach_the_decoders_in_twice_as_many_blocks_as_the_pool_has_actors_at_most(
        ray_local, actors, actors_max, blocks):
    # one block is one decoder task: fewer than the pool's actors would leave some idle
    from nlray.data.pipeline import _rows_dataset

    rows = pd.DataFrame({"uri": [f"u{i}" for i in range(64)], "label_id": np.arange(64) % 4})
    cfg = DataConfig(decode_actors=actors, decode_actors_max=actors_max, decode_batch=2)
    got = _rows_dataset(rows, cfg, shuffle=True, seed=0).materialize()
    assert got.num_blocks() == blocks
    assert sorted(got.to_pandas().video_idx) == list(range(64))


# ------------------------------------------------------------------------- flips and mirror labels

FLIP_CFG = dict(frames=8, frame_stride=2, train_short_side=[48, 48], crop_size=48, decode_batch=2,
                decode_actors=1, decode_actors_max=0, decode_cpus=0.5, backend="pyav")
LEFT_RIGHT = [["moving_left", "moving_right"]]


@pytest.fixture(scope="module")
def motion_videos(tmp_path_factory):
    """(manifest, labels): square synthetic H.264 videos of the 4 translations (a crop of the short side
    is the whole frame, so the blob is always in view), 3 per class."""
    from nlray.data.dataset import build_manifest
    from nlray.data.synthetic import make_dataset
    from nlray.data.synthetic_spec import CLASSES, SyntheticSpec

    spec = SyntheticSpec(classes=CLASSES[:4], per_class=3, val_per_class=0, width_range=(64, 80),
                         aspects=(1.0,), duration_range=(2.7, 3.0), seed=4)
    root = make_dataset(str(tmp_path_factory.mktemp("motion") / "ds"), spec)
    df, labels, missing = build_manifest(root)
    assert not missing and set(labels) == set(CLASSES[:4])
    return df, labels


def pixel_direction(clip: np.ndarray) -> str:
    """The translation class uint8 [T, H, W, 3] shows: least-squares (vx, vy) of brightness constancy
    I_t + I_x vx + I_y vy = 0 over the whole clip, then its larger component's sign (y points down)."""
    gray = clip.astype(np.float64).mean(-1)  # (T, H, W)
    i_t = gray[1:] - gray[:-1]
    i_y, i_x = np.gradient(0.5 * (gray[1:] + gray[:-1]), axis=(1, 2))
    a = np.array([[(i_x * i_x).sum(), (i_x * i_y).sum()], [(i_x * i_y).sum(), (i_y * i_y).sum()]])
    vx, vy = np.linalg.solve(a, -np.array([(i_t * i_x).sum(), (i_t * i_y).sum()]))
    if abs(vx) > abs(vy):
        return "moving_right" if vx > 0 else "moving_left"
    return "moving_down" if vy > 0 else "moving_up"


def decoder(labels, **kwargs):
    from nlray.data.clips import ClipDecoder
    from nlray.data.transforms import flip_label_permutation

    perm = flip_label_permutation(labels, LEFT_RIGHT)
    return ClipDecoder(frames=8, stride=2, short_side=(48, 48), crop_size=48, backend="pyav", log_name="unused",
                       flip_labels=perm, **kwargs)


def test_a_mirrored_moving_left_clip_gets_moving_right_label(motion_videos):
    df, labels = motion_videos
    dec = decoder(labels, seed=3)
    outcomes = set()
    for row in df.itertuples():
        for _ in range(8):
            clip, label = dec.labelled_clip(row.uri, int(row.label_id))
            assert clip.shape == (8, 48, 48, 3) and clip.flags.c_contiguous
            shown = pixel_direction(clip)
            assert labels[label] == shown, (row.label, labels[label], shown)  # the label says what is seen
            outcomes.add((row.label, labels[label]))
    assert {("moving_left", "moving_right"), ("moving_left", "moving_left"),
            ("moving_right", "moving_left"), ("moving_right", "moving_right")} <= outcomes  # both, both ways
    assert {o for o in outcomes if o[0] in ("moving_up", "moving_down")} == {("moving_up", "moving_up"),
                                                                             ("moving_down", "moving_down")}


def test_flip_false_never_mirrors(motion_videos):
    df, labels = motion_videos
    dec = decoder(labels, seed=3, flip=False)
    for row in df.itertuples():
        for _ in range(8):
            clip, label = dec.labelled_clip(row.uri, int(row.label_id))
            assert label == row.label_id and pixel_direction(clip) == row.label


@pytest.mark.parametrize("flip", [True, False])
def test_train_dataset_labels_mirrored_clips_by_name(ray_local, motion_videos, flip):
    """build_train_dataset turns data.flip_label_map's names into ids on the driver: every clip that
    comes out carries the label of what it shows."""
    df, labels = motion_videos
    cfg = DataConfig(**FLIP_CFG, repeat=4, flip=flip, flip_label_map=LEFT_RIGHT)
    ds = build_train_dataset(df, cfg, run_name=f"test_flip_{flip}", labels=labels)
    rows = train_frame(df, "train", repeat=4)
    mirrored = 0
    for b in ds.iter_torch_batches(batch_size=4):
        for clip, label, row in zip(b["video"].numpy(), b["label"].tolist(), b["video_idx"].tolist()):
            assert labels[label] == pixel_direction(clip)
            mirrored += labels[label] != rows.label[row]
    assert (mirrored > 0) == flip  # 24 left/right clips: all unmirrored by chance with p = 2^-23


def test_unknown_flip_label_fails_on_the_driver_before_any_actor():
    df = pd.DataFrame({"uri": ["a"], "label_id": [0], "split": ["train"]})
    labels = ["moving_left", "moving_right"]
    cfg = DataConfig(**FLIP_CFG, flip_label_map=[["moving_left", "moving_sideways"]])
    want = r"data.flip_label_map: .*'moving_sideways' is not a label; labels: \['moving_left', 'moving_right'\]"
    with pytest.raises(ValueError, match=want):  # no Ray here: it fails before the log actor is made
        build_train_dataset(df, cfg, run_name="test_unknown_flip", labels=labels)
    with pytest.raises(ValueError, match="needs labels="):
        build_train_dataset(df, DataConfig(**FLIP_CFG, flip_label_map=LEFT_RIGHT), run_name="test_no_labels")


def test_decoded_clips_leave_a_decoder_a_batch_at_a_time(ray_local):
    """Ray Data's default gathers 128 MiB of a task's output before any leaves (5,400 clips of 8x32x32: more
    than a read task): the training dataset's own blocks are a decode batch, the process's default stays."""
    from ray.data import DataContext

    from nlray.data.pipeline import MIN_BLOCK_BYTES, build_train_dataset

    default = DataContext.get_current().target_max_block_size
    cfg = DataConfig(frames=8, crop_size=32, train_short_side=[32, 40], decode_batch=4, decode_actors=1,
                     decode_actors_max=0, decode_cpus=0.5)
    rows = pd.DataFrame({"uri": [f"s3://b/v{i}.mp4" for i in range(10_000)], "label_id": 0, "split": "train"})
    ds = build_train_dataset(rows, cfg, run_name="blocks", seed=0)
    assert ds.context.target_max_block_size == MIN_BLOCK_BYTES  # 4 clips of 24.6 KB: the floor
    big = build_train_dataset(rows, DataConfig(frames=32, crop_size=224, decode_batch=8, decode_actors=1,
                                               decode_actors_max=0), run_name="blocks", seed=0)
    assert big.context.target_max_block_size == 8 * 32 * 224 * 224 * 3
    assert DataContext.get_current().target_max_block_size == default
