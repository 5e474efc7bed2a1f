"""The Ray Data pipeline: manifest rows -> shuffled -> CPU decoder actors -> uint8 clip rows.

    ds = build_train_dataset(df, cfg.data, run_name=cfg.name, seed=cfg.train.seed,
                             labels=labels)  # 1 clip/video/epoch; labels: names, index = label_id
    trainer = TorchTrainer(..., datasets={"train": ds})
    # in the worker:
    for b in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=8):
        x = normalize_on_device(b["video"].to(device), dtype=torch.bfloat16)  # (B, C, T, H, W)
    # on the driver or rank 0, for logging:
    bad_video_counts(bad_video_log_name(cfg.name, "train"))  # {"missing": 2, "truncated": 1, ...}

The builders choose the rows: ``build_train_dataset`` takes ``data.train_split`` repeated ``data.repeat``
times (each repeat draws new random clips), ``build_eval_dataset`` one split (``data.val_split`` unless
told). ``has_split`` says whether a split has rows at all (e.g. to skip validation).

Columns (all numeric, so ``iter_torch_batches`` batches them; strings would not convert):

- train: ``video`` uint8 [T, crop, crop, 3], ``label`` int64, ``video_idx`` int64.
- eval: ``video`` uint8 [T, eval_crop, eval_crop, 3], ``label``, ``video_idx``, ``clip_idx``,
  ``crop_idx`` (int64): one row per view, all views of a video from one opening and one pass.

``video_idx`` is the row of the video in ``split_frame(df, split)`` (look ``video_id``/``uri`` up there;
for training, in ``train_frame(df, split, repeat=...)``, which repeats it).
Ray 2.60's ``iter_torch_batches(dtypes={...})`` raises KeyError unless the dict names every column:
pass no dtypes (uint8 and int64 stay as they are) or all of them.

Shuffle: the manifest rows are permuted each time Ray plans the dataset, i.e. at every execution
(epoch), by the ``ManifestRows`` datasource (see it for why not ``random_shuffle``), so each epoch
has a new order. With ``data.shuffle_seed`` set, the sequence of orders is reproducible run to run
and still differs from epoch to epoch. The rows are read by at least twice as many tasks as the decoder pool has
actors at most, one block each of at most ``MAX_ROWS_PER_TASK`` rows (``_rows_dataset``), so that every
decoder gets work at any manifest size.
Clips are made by the decoder actors of ``nlray.data.clips``; rows come from ``ManifestRows``.

Flip: training clips are mirrored left-right with probability 1/2 when ``data.flip``; a mirrored clip of
a class named in ``data.flip_label_map`` takes its partner's label. The names are turned into label ids
here on the driver, from ``labels`` (the label map, index = label_id), before any actor starts.

Bad videos: a decoder that meets one drops it (its clip is simply absent) and reports
``(uri, reason, detail)`` to a named Ray actor ``BadVideoLog`` (one per run and training split, one
per run for evaluation: ``bad_video_log_name``; created here on the driver, which keeps a handle to
it, so it lives as long as the driver). The report waits for the actor's reply, so once a dataset
pass has been consumed the counts include every bad video of it. Counts are of distinct videos per
reason; a video that fails again in a later epoch is not counted twice (``BadVideoLog.reports``
counts every failure).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import pandas as pd
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from nlray.data.badvideo import VideoLimits
from nlray.data.clips import ClipDecoder, EvalClipDecoder
from nlray.data.manifest_rows import ManifestRows
from nlray.data.transforms import flip_label_permutation

__all__ = ["BadVideoLog", "build_train_dataset", "build_eval_dataset", "bad_video_log", "bad_video_log_name",
           "bad_video_counts", "bad_video_list", "split_frame", "train_frame", "has_split",
           "flip_labels"]

LOG_PREFIX = "nlray_bad_videos"
MIN_BLOCK_BYTES = 1 << 20  # decoded blocks no smaller than this (fewer, larger objects for tiny clips)
_LOG_HANDLES: dict[str, Any] = {}  # a named actor dies with its last handle: the driver keeps one


# ------------------------------------------------------------------------------ bad-video log


class BadVideoLog:
    """Ray actor: the distinct bad videos seen, by reason (wrapped with ray.remote when created)."""

    def __init__(self):
        self._entries: dict[str, tuple[str, str]] = {}  # uri -> (reason, detail)
        self._reports = 0

    def report(self, uri: str, reason: str, detail: str) -> None:
        self._entries.setdefault(uri, (reason, detail))
        self._reports += 1

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for reason, _ in self._entries.values():
            out[reason] = out.get(reason, 0) + 1
        return out

    def entries(self) -> list[tuple[str, str, str]]:
        return sorted((uri, r, d) for uri, (r, d) in self._entries.items())

    def reports(self) -> int:
        """Reports received, counting a video again each time it failed (e.g. once per epoch)."""
        return self._reports


def bad_video_log_name(run_name: str, split: str) -> str:
    """The name of the BadVideoLog actor of a run's split (what the trainer passes to bad_video_counts)."""
    return f"{LOG_PREFIX}_{run_name}_{split}"


def bad_video_log(name: str) -> Any:
    """The named BadVideoLog actor, created if it does not exist yet (call on the driver).

    It lives on the driver's node, which the job cannot outlive: on any other node, losing that node would
    lose the counts and fail every later read of them.
    """
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handle = ray.remote(num_cpus=0)(BadVideoLog).options(name=name, get_if_exists=True,
                                                         scheduling_strategy=here).remote()
    _LOG_HANDLES[name] = handle
    return handle


def bad_video_counts(name: str) -> dict[str, int]:
    """Distinct bad videos per reason reported to the log ``name``; {} if no such log."""
    try:
        return ray.get(ray.get_actor(name).counts.remote())
    except ValueError:  # no actor of that name: nothing was built or nothing failed
        return {}


def bad_video_list(name: str) -> list[tuple[str, str, str]]:
    """Sorted (uri, reason, detail) of the distinct bad videos reported to the log ``name``."""
    try:
        return ray.get(ray.get_actor(name).entries.remote())
    except ValueError:
        return []


# ------------------------------------------------------------------------------------- splits


def has_split(df: pd.DataFrame, split: str) -> bool:
    """Whether the manifest has any row of ``split``."""
    return "split" in df.columns and bool((df["split"] == split).any())


def split_frame(df, split: Optional[str]):
    """The manifest rows of ``split`` (all rows if None), renumbered 0..n-1: row n is video_idx n."""
    for col in ("uri", "label_id"):
        if col not in df.columns:
            raise ValueError(f"manifest has no {col!r} column; columns: {list(df.columns)}")
    if split is not None:
        if "split" not in df.columns:
            raise ValueError(f"split={split!r} asked for but the manifest has no 'split' column")
        rows = df[df["split"] == split]
        if rows.empty:
            raise ValueError(f"split={split!r} has no rows; splits in the manifest: "
                             f"{sorted(set(df['split']))}")
        df = rows
    return df.reset_index(drop=True)


def train_frame(df: pd.DataFrame, split: str, *, repeat: int = 1) -> pd.DataFrame:
    """The rows of ``split`` repeated ``repeat`` times, renumbered: each repeat draws new random clips
    (mmaction2's RepeatDataset), so a small set pays the pipeline's per-epoch start-up once per
    several passes."""
    if "split" in df.columns and not has_split(df, split):
        raise ValueError(f"the manifest has no {split!r} rows to train on; its splits: "
                         f"{sorted(df['split'].unique())}")
    return pd.concat([split_frame(df, split)] * repeat, ignore_index=True)


# ----------------------------------------------------------------------------------- datasets


def _rows_dataset(rows: pd.DataFrame, data_cfg: Any, *, shuffle: bool, seed: Optional[int] = None):
    """Dataset of (uri, label_id, video_idx): at least twice as many read tasks as the decoder pool can have
    actors, each of at most ``MAX_ROWS_PER_TASK`` rows, run one at a time.

    Each read task's rows reach the pool as one input, so that many keep every actor busy. Reading rows
    costs milliseconds a task: run at once, as Ray would, they started a worker process each (~200 MB)
    every epoch, 35-39 of them for a Kinetics-sized manifest, and ~8 s of the first batch's wait on 2 cores."""
    source = ManifestRows(rows, shuffle=shuffle, seed=seed)
    return ray.data.read_datasource(source, num_cpus=0, concurrency=1,
                                    override_num_blocks=2 * _most_actors(data_cfg))


def _most_actors(data_cfg: Any) -> int:
    """The decoder pool's largest size: ``data.decode_actors_max``, or ``data.decode_actors`` when fixed (0)."""
    return max(data_cfg.decode_actors, data_cfg.decode_actors_max)


def batch_sized_blocks(ds, rows: int, row_bytes: int):
    """``ds`` whose decoded clips leave each decoder a batch at a time (``rows`` of ``row_bytes``).

    Ray Data gathers a task's output into blocks of up to 128 MiB before any leaves: 680 demo clips, more
    than a whole read task of tiny test clips, all decoded before the first training batch. The setting
    is this dataset's own (its DataContext copy), not the process's."""
    ds.context.target_max_block_size = max(rows * row_bytes, MIN_BLOCK_BYTES)
    return ds


def decoder_pool(data_cfg: Any, resources: Optional[dict] = None) -> dict[str, Any]:
    """map_batches arguments of the decoder actor pool: between ``data.decode_actors`` and
    ``data.decode_actors_max`` actors (Ray Data grows it when decoding lags, and pending actors make the
    autoscaler add decode nodes), each with ``data.decode_cpus`` CPUs and ``resources`` (e.g. one unit of
    the decode node type's custom resource, so that decoding runs on decode nodes)."""
    return {"compute": ray.data.ActorPoolStrategy(min_size=data_cfg.decode_actors, max_size=_most_actors(data_cfg)),
            "num_cpus": data_cfg.decode_cpus, "resources": resources or None,
            "batch_size": data_cfg.decode_batch}


def flip_labels(data_cfg: Any, labels: Optional[Sequence[str]]) -> Optional[list[int]]:
    """Label id of a mirrored clip of each class, from ``data.flip_label_map``; None: no label changes
    (no flip, or an empty map). ValueError naming an unknown label, or a map given without ``labels``."""
    if not data_cfg.flip_label_map or (labels is None and not data_cfg.flip):
        return None
    if labels is None:
        raise ValueError(f"data.flip_label_map={data_cfg.flip_label_map!r} names classes: "
                         "build_train_dataset needs labels= (the label map, index = label_id)")
    try:  # checked with flip off too: a misspelt name is a mistake either way
        perm = flip_label_permutation(labels, data_cfg.flip_label_map)
    except ValueError as e:
        raise ValueError(f"data.flip_label_map: {e}") from None
    return perm.tolist() if data_cfg.flip else None


def build_train_dataset(df: pd.DataFrame, data_cfg: Any, *, run_name: str, seed: int = 0,
                        decoder: type = ClipDecoder, resources: Optional[dict] = None,
                        labels: Optional[Sequence[str]] = None):
    """Training clips of ``data.train_split`` repeated ``data.repeat`` times: a new shuffle and new
    random clips every epoch (module doc); bad videos go to ``bad_video_log_name(run_name, split)``.

    ``decoder``: the actor class, ClipDecoder or a subclass (bench_ingest.py times its batches).
    ``resources``: custom resources each decoder actor asks for (``decoder_pool``).
    ``labels``: class names, index = label_id; needed when ``data.flip_label_map`` is set (``flip_labels``).
    """
    mirrored = flip_labels(data_cfg, labels)  # a bad name fails here, before any actor
    log_name = bad_video_log_name(run_name, data_cfg.train_split)
    bad_video_log(log_name)  # created on the driver: lives as long as the job
    rows = train_frame(df, data_cfg.train_split, repeat=data_cfg.repeat)
    ds = _rows_dataset(rows, data_cfg, shuffle=True, seed=data_cfg.shuffle_seed)
    kwargs = dict(frames=data_cfg.frames, stride=data_cfg.frame_stride,
                  short_side=tuple(data_cfg.train_short_side), crop_size=data_cfg.crop_size,
                  backend=data_cfg.backend, endpoint_url=data_cfg.s3_endpoint_url,
                  log_name=log_name, seed=seed, flip=data_cfg.flip, flip_labels=mirrored,
                  limits=VideoLimits.from_config(data_cfg))
    clips = ds.map_batches(decoder, fn_constructor_kwargs=kwargs, **decoder_pool(data_cfg, resources))
    return batch_sized_blocks(clips, data_cfg.decode_batch, data_cfg.frames * data_cfg.crop_size ** 2 * 3)


def build_eval_dataset(df: pd.DataFrame, data_cfg: Any, *, run_name: str, split: Optional[str] = None,
                       num_clips: Optional[int] = None, num_crops: Optional[int] = None,
                       resources: Optional[dict] = None):
    """Every view (clip x crop) of every video of ``split`` (default ``data.val_split``), in manifest
    order per decoder; bad videos go to ``bad_video_log_name(run_name, "eval")``."""
    split = split or data_cfg.val_split
    log_name = bad_video_log_name(run_name, "eval")
    bad_video_log(log_name)
    kwargs = dict(frames=data_cfg.frames, stride=data_cfg.frame_stride,
                  short_side=data_cfg.eval_short_side, crop_size=data_cfg.eval_crop_size,
                  num_clips=num_clips or data_cfg.eval_num_clips,
                  num_crops=num_crops or data_cfg.eval_num_crops, backend=data_cfg.backend,
                  endpoint_url=data_cfg.s3_endpoint_url, log_name=log_name,
                  limits=VideoLimits.from_config(data_cfg))
    if kwargs["crop_size"] > kwargs["short_side"]:
        raise ValueError(f"data.eval_crop_size={kwargs['crop_size']} must be <= "
                         f"data.eval_short_side={kwargs['short_side']}")
    rows = split_frame(df, split)
    views = _rows_dataset(rows, data_cfg, shuffle=False).map_batches(
        EvalClipDecoder, fn_constructor_kwargs=kwargs, **decoder_pool(data_cfg, resources))
    per_video = kwargs["num_clips"] * kwargs["num_crops"]
    return batch_sized_blocks(views, data_cfg.decode_batch * per_video,
                              data_cfg.frames * kwargs["crop_size"] ** 2 * 3)
