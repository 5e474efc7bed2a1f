"""The Ray Data pipeline: manifest rows -> shuffled -> CPU decoder actors -> uint8 clip rows.

    ds = build_train_dataset(df, cfg.data, seed=cfg.train.seed)          # one clip per video per epoch
    trainer = TorchTrainer(..., datasets={"train": ds})
    # in the worker:
    for b in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=8):
        x = normalize_on_device(b["video"].to(device), dtype=torch.bfloat16)  # (B, C, T, H, W)
    # on the driver or rank 0, for logging:
    bad_video_counts(bad_video_log_name("train"))  # {"missing": 2, "truncated": 1, ...}

Columns (all numeric, so ``iter_torch_batches`` batches them; strings would not convert):

- train: ``video`` uint8 [T, crop, crop, 3], ``label`` int64, ``video_idx`` int64.
- eval: ``video`` uint8 [T, eval_crop, eval_crop, 3], ``label``, ``video_idx``, ``clip_idx``,
  ``crop_idx`` (int64): one row per view, all views of a video from one opening and one pass.

``video_idx`` is the row of the video in ``split_frame(df, split)`` (look ``video_id``/``uri`` up there).
Ray 2.60's ``iter_torch_batches(dtypes={...})`` raises KeyError unless the dict names every column:
pass no dtypes (uint8 and int64 stay as they are) or all of them.

Shuffle: the manifest rows are permuted each time Ray plans the dataset, i.e. at every execution
(epoch), by the ``ManifestRows`` datasource (see it for why not ``random_shuffle``), so each epoch
has a new order. With ``data.shuffle_seed`` set, the sequence of orders is reproducible run to run
and still differs from epoch to epoch. Rows travel in blocks of ``data.decode_batch`` so that all
``data.decode_actors`` decoders get work.
Clip positions, scales, crops and flips come from each decoder actor's own generator, seeded from
``seed`` and a random actor key: independent across actors, not bit-reproducible (which actor gets
which video is up to the scheduler).

Bad videos: a decoder that meets one drops it (its clip is simply absent) and reports
``(uri, reason, detail)`` to a named Ray actor ``BadVideoLog`` (one per split, created here on the
driver, which keeps a handle to it, so it lives as long as the driver). The report waits for the
actor's reply, so once a dataset pass has been consumed the counts include every bad video of it.
Counts are of distinct videos per reason; a video that fails again in a later epoch is not counted
twice (``BadVideoLog.reports`` counts every failure).
"""
from __future__ import annotations

import uuid
from typing import Any, Iterator, Optional

import numpy as np
from ray.data import Datasource

from nlray.data.decode import BadVideo, Crop, fetch_video, open_video, read_frames, read_unique
from nlray.data.sampling import eval_indices, train_indices
from nlray.data.transforms import crop_corners, random_flip

__all__ = ["BadVideoLog", "ClipDecoder", "EvalClipDecoder", "ManifestRows", "build_train_dataset",
           "build_eval_dataset", "bad_video_log", "bad_video_log_name", "bad_video_counts",
           "bad_video_list", "split_frame"]

LOG_PREFIX = "nlray_bad_videos"
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


def bad_video_log_name(split: str) -> str:
    """The name of the BadVideoLog actor of a split (what the trainer passes to bad_video_counts)."""
    return f"{LOG_PREFIX}_{split}"


def bad_video_log(name: str) -> Any:
    """The named BadVideoLog actor, created if it does not exist yet (call on the driver)."""
    import ray

    handle = ray.remote(num_cpus=0)(BadVideoLog).options(name=name, get_if_exists=True).remote()
    _LOG_HANDLES[name] = handle
    return handle


def bad_video_counts(name: str) -> dict[str, int]:
    """Distinct bad videos per reason reported to the log ``name``; {} if no such log."""
    import ray

    try:
        return ray.get(ray.get_actor(name).counts.remote())
    except ValueError:  # no actor of that name: nothing was built or nothing failed
        return {}


def bad_video_list(name: str) -> list[tuple[str, str, str]]:
    """Sorted (uri, reason, detail) of the distinct bad videos reported to the log ``name``."""
    import ray

    try:
        return ray.get(ray.get_actor(name).entries.remote())
    except ValueError:
        return []


# ----------------------------------------------------------------------------------- decoders


class _DecoderBase:
    """Fetch -> open -> sample -> decode; a bad video is reported and skipped."""

    def __init__(self, *, backend: str, endpoint_url: str, log_name: str, seed: int):
        self.backend, self.endpoint_url, self.log_name = backend, endpoint_url, log_name
        self.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(uuid.uuid4().int,)))
        self.bad_counts: dict[str, int] = {}  # this decoder's own tally (also outside Ray)
        self._log = None

    def _report(self, bad: BadVideo) -> None:
        import ray

        self.bad_counts[bad.reason] = self.bad_counts.get(bad.reason, 0) + 1
        if self._log is None and ray.is_initialized():
            try:
                self._log = ray.get_actor(self.log_name)
            except ValueError:  # used without the builders (no log): the local tally only
                return
        if self._log is not None:
            ray.get(self._log.report.remote(bad.uri, bad.reason, bad.detail))  # wait: counts complete

    def _open(self, uri: str):
        return open_video(fetch_video(uri, endpoint_url=self.endpoint_url), backend=self.backend, uri=uri)


class ClipDecoder(_DecoderBase):
    """map_batches actor: rows (uri, label_id, video_idx) -> train clips uint8 [T, crop, crop, 3]."""

    def __init__(self, *, frames: int, stride: int, short_side: tuple[int, int], crop_size: int,
                 backend: str, endpoint_url: str = "", log_name: str, seed: int = 0):
        super().__init__(backend=backend, endpoint_url=endpoint_url, log_name=log_name, seed=seed)
        self.frames, self.stride, self.crop_size = frames, stride, crop_size
        self.short_side = (int(short_side[0]), int(short_side[1]))

    def clip(self, uri: str) -> np.ndarray:
        """One training clip of the video at ``uri``; BadVideo if it cannot be made."""
        with self._open(uri) as video:
            idx = train_indices(video.num_frames, frames=self.frames, stride=self.stride, rng=self.rng)
            size = int(self.rng.integers(self.short_side[0], self.short_side[1] + 1))  # short side
            crop = Crop(size=self.crop_size, fy=self.rng.random(), fx=self.rng.random())
            frames = read_frames(video, idx, short_side=size, crop=crop)  # (T, crop, crop, 3)
        return np.ascontiguousarray(random_flip(frames, rng=self.rng))  # (T, crop, crop, 3), maybe mirrored

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        clips, labels, rows = [], [], []
        for uri, label, row in zip(batch["uri"], batch["label_id"], batch["video_idx"]):
            try:
                clips.append(self.clip(str(uri)))
            except BadVideo as bad:
                self._report(bad)
                continue
            labels.append(int(label))
            rows.append(int(row))
        if clips:
            yield {"video": np.stack(clips), "label": np.asarray(labels, np.int64),
                   "video_idx": np.asarray(rows, np.int64)}


class EvalClipDecoder(_DecoderBase):
    """map_batches actor: rows -> num_clips x num_crops views per video, uint8 [T, crop, crop, 3]."""

    def __init__(self, *, frames: int, stride: int, short_side: int, crop_size: int, num_clips: int,
                 num_crops: int, backend: str, endpoint_url: str = "", log_name: str, seed: int = 0):
        super().__init__(backend=backend, endpoint_url=endpoint_url, log_name=log_name, seed=seed)
        self.frames, self.stride, self.short_side = frames, stride, short_side
        self.crop_size, self.num_clips, self.num_crops = crop_size, num_clips, num_crops

    def views(self, uri: str) -> np.ndarray:
        """uint8 [num_clips, num_crops, T, crop, crop, 3] from one opening and one decoding pass."""
        with self._open(uri) as video:
            idx = eval_indices(video.num_frames, frames=self.frames, stride=self.stride,
                               num_clips=self.num_clips)  # (clips, T)
            uniq, inverse = read_unique(video, idx, short_side=self.short_side)  # (U, H, W, 3), (clips, T)
        s = self.crop_size
        corners = crop_corners(uniq.shape[1], uniq.shape[2], size=s, num_crops=self.num_crops)
        out = np.empty((self.num_clips, len(corners), self.frames, s, s, 3), np.uint8)
        for j, (y, x) in enumerate(corners):  # crop straight from the distinct frames: no clip copy
            window = uniq[:, y:y + s, x:x + s]  # (U, s, s, 3) view
            for c in range(self.num_clips):
                np.take(window, inverse[c], axis=0, out=out[c, j])  # (T, s, s, 3)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for uri, label, row in zip(batch["uri"], batch["label_id"], batch["video_idx"]):
            try:
                views = self.views(str(uri))
            except BadVideo as bad:
                self._report(bad)
                continue
            n_clips, n_crops = views.shape[:2]
            clip_idx, crop_idx = np.meshgrid(np.arange(n_clips), np.arange(n_crops), indexing="ij")
            n = n_clips * n_crops
            yield {"video": views.reshape(n, *views.shape[2:]),  # one video per output block
                   "label": np.full(n, int(label), np.int64), "video_idx": np.full(n, int(row), np.int64),
                   "clip_idx": clip_idx.reshape(n).astype(np.int64),
                   "crop_idx": crop_idx.reshape(n).astype(np.int64)}


# ----------------------------------------------------------------------------------- datasets


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


def _rows_block(uris: np.ndarray, labels: np.ndarray, rows: np.ndarray, block: int) -> Iterator[Any]:
    """A read task's output: its rows as pandas blocks of ``block`` rows."""
    import pandas as pd

    for i in range(0, len(uris), block):
        yield pd.DataFrame({"uri": uris[i:i + block], "label_id": labels[i:i + block],
                            "video_idx": rows[i:i + block]})


class ManifestRows(Datasource):
    """Ray Data datasource of (uri, label_id, video_idx), shuffled anew each time it is planned.

    Ray plans a dataset again at every execution (every epoch), so a permutation drawn in
    ``get_read_tasks`` is a per-epoch shuffle that needs no all-to-all shuffle: Ray 2.60's
    ``random_shuffle`` runs hash-shuffle tasks/actors that need CPUs of their own, which a decoder
    pool holding every CPU starves (the job hangs), and it is slow for a few small rows. Read tasks
    take 0 CPUs for the same reason. With ``seed`` the sequence of orders is reproducible.
    """

    def __init__(self, rows, *, block: int, shuffle: bool, seed: Optional[int] = None):
        self.uris = rows["uri"].astype(str).to_numpy()
        self.labels = rows["label_id"].astype(np.int64).to_numpy()
        self.block, self.shuffle, self.seed, self.plans = block, shuffle, seed, 0

    def estimate_inmemory_data_size(self) -> int:
        return int(sum(len(u) for u in self.uris) + 16 * len(self.uris))

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context: Any = None) -> list:
        import functools

        from ray.data import ReadTask
        from ray.data.block import BlockMetadata

        n = len(self.uris)
        order = np.arange(n, dtype=np.int64)
        if self.shuffle:
            entropy = None if self.seed is None else [self.seed, self.plans]
            order = np.random.default_rng(entropy).permutation(n)
        self.plans += 1
        per_task = max(self.block, -(-n // max(parallelism, 1)))  # whole blocks per read task
        per_task = -(-per_task // self.block) * self.block
        tasks = []
        for i in range(0, n, per_task):
            part = order[i:i + per_task]
            meta = BlockMetadata(num_rows=len(part), size_bytes=None, exec_stats=None, input_files=None)
            read = functools.partial(_rows_block, self.uris[part], self.labels[part], part, self.block)
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks


def _rows_dataset(df, split: Optional[str], *, block: int, shuffle: bool, seed: Optional[int] = None):
    """Dataset of (uri, label_id, video_idx) in blocks of ``block`` rows, so that every actor works."""
    import ray

    source = ManifestRows(split_frame(df, split), block=block, shuffle=shuffle, seed=seed)
    return ray.data.read_datasource(source, num_cpus=0)


def build_train_dataset(df, data_cfg, *, split: str = "train", seed: int = 0,
                        log_name: Optional[str] = None, decoder: type = ClipDecoder):
    """Training clips of ``split``: a new shuffle and new random clips every epoch (module doc).

    ``decoder``: the actor class, ClipDecoder or a subclass (bench_ingest.py times its batches).
    """
    import ray

    log_name = log_name or bad_video_log_name(split)
    bad_video_log(log_name)  # created on the driver: lives as long as the job
    ds = _rows_dataset(df, split, block=data_cfg.decode_batch, shuffle=True, seed=data_cfg.shuffle_seed)
    kwargs = dict(frames=data_cfg.frames, stride=data_cfg.frame_stride,
                  short_side=tuple(data_cfg.train_short_side), crop_size=data_cfg.crop_size,
                  backend=data_cfg.backend, endpoint_url=data_cfg.s3_endpoint_url,
                  log_name=log_name, seed=seed)
    return ds.map_batches(decoder, fn_constructor_kwargs=kwargs, batch_size=data_cfg.decode_batch,
                          compute=ray.data.ActorPoolStrategy(size=data_cfg.decode_actors),
                          num_cpus=data_cfg.decode_cpus)


def build_eval_dataset(df, data_cfg, *, split: str = "val", num_clips: Optional[int] = None,
                       num_crops: Optional[int] = None, log_name: Optional[str] = None):
    """Every view (clip x crop) of every video of ``split``, in manifest order per decoder."""
    import ray

    log_name = log_name or bad_video_log_name(split)
    bad_video_log(log_name)
    kwargs = dict(frames=data_cfg.frames, stride=data_cfg.frame_stride,
                  short_side=data_cfg.eval_short_side, crop_size=data_cfg.eval_crop_size,
                  num_clips=num_clips or data_cfg.eval_num_clips,
                  num_crops=num_crops or data_cfg.eval_num_crops, backend=data_cfg.backend,
                  endpoint_url=data_cfg.s3_endpoint_url, log_name=log_name)
    if kwargs["crop_size"] > kwargs["short_side"]:
        raise ValueError(f"data.eval_crop_size={kwargs['crop_size']} must be <= "
                         f"data.eval_short_side={kwargs['short_side']}")
    return _rows_dataset(df, split, block=data_cfg.decode_batch, shuffle=False).map_batches(
        EvalClipDecoder, fn_constructor_kwargs=kwargs, batch_size=data_cfg.decode_batch,
        compute=ray.data.ActorPoolStrategy(size=data_cfg.decode_actors), num_cpus=data_cfg.decode_cpus)
