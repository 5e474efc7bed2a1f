"""Multi-view evaluation as a Ray Data batch-inference job: decode views on CPU actors, score them on model
actors (GPU or CPU), average softmax per video on the driver.

docs/paper.md: 10 clips evenly over the video x 3 spatial crops, shorter side 256; softmax averaged over the views.
Clip-level numbers score each view alone; video-level numbers score the average. Always say which.

Scoring is spread over a pool of ``actors`` ViewScorer actors (``scorer_pool``): one GPU each on GPUs, else
``cpus_per_actor`` CPUs each. The validation after training (trainer.validate) sizes it from
``train.val_actors`` (0: ``train.num_workers``) and gives each CPU scorer what a training worker had
(``train.cpus_per_worker``): the decoder pool is the same as in training, so the scorers and the decoders fit
where the training workers and the decoders did. Each scored view carries the process id of its scorer
(``VideoScores.scorers``: which actors did the work).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import ray
import torch

from nlray import plots, raycluster, tracking
from nlray.config import Config, ConfigError, TrackingConfig, env_layer, from_stored, from_yaml, to_yaml
from nlray.data import resolve_dataset
from nlray.data.pipeline import build_eval_dataset, split_frame
from nlray.data.transforms import normalize_on_device
from nlray.models import build_model
from nlray.secrets import move_userinfo_to_env
from nlray.train import checkpoint

log = logging.getLogger("nlray")


class ViewScorer:
    """map_batches actor: uint8 views -> softmax scores, with the model loaded once per actor."""

    def __init__(self, cfg_yaml: str, state_ref: list, use_gpu: bool):
        cfg = from_yaml(cfg_yaml)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = build_model(cfg.model, num_classes=cfg.model.num_classes)
        self.model.load_state_dict(ray.get(state_ref[0]))  # the ref is wrapped so Ray does not inline it
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # batches are read-only views of the object store: copied (only then) so torch may own the memory
        video = torch.from_numpy(np.require(batch["video"], requirements="W")).to(self.device)  # (B, T, H, W, C)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.model(normalize_on_device(video, dtype=torch.float32))  # (B, K)
        probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        scorer = np.full(len(probs), os.getpid(), dtype=np.int64)  # 8 bytes a view: which actor scored it
        return {"video_idx": batch["video_idx"], "label": batch["label"], "probs": probs, "scorer": scorer}


class VideoScores:
    """Accumulates view scores into per-video averages; clip-level and video-level top-k."""

    def __init__(self, num_classes: int, total_videos: int = 0):
        self.k = num_classes
        self.total = total_videos  # videos in the split, decoded or not (0: unknown, the decoded ones)
        self.sums: dict[int, np.ndarray] = {}
        self.labels: dict[int, int] = {}
        self.views: dict[int, int] = {}
        self.clip_hits = np.zeros(2)  # top-1, top-5 hits over views
        self.clip_count = 0
        self.scorers: set[int] = set()  # process ids of the actors that scored views

    def add(self, video_idx: np.ndarray, labels: np.ndarray, probs: np.ndarray,
            scorer: Optional[np.ndarray] = None) -> None:
        if scorer is not None:
            self.scorers.update(np.unique(scorer).tolist())
        top5 = np.argsort(-probs, axis=1)[:, :5]  # (B, 5)
        self.clip_hits += [(top5[:, 0] == labels).sum(), (top5 == labels[:, None]).any(1).sum()]
        self.clip_count += len(labels)
        for v, y, p in zip(video_idx.tolist(), labels.tolist(), probs):
            self.sums[v] = self.sums.get(v, 0) + p
            self.labels[v] = y
            self.views[v] = self.views.get(v, 0) + 1

    def metrics(self) -> dict[str, float]:
        vids = sorted(self.sums)
        if not vids:
            raise RuntimeError("evaluation scored no video: every video of the split was bad or missing")
        scores = np.stack([self.sums[v] / self.views[v] for v in vids])  # (V, K) mean softmax
        y = np.array([self.labels[v] for v in vids])
        top5 = np.argsort(-scores, axis=1)[:, :5]
        hits1, hits5 = float((top5[:, 0] == y).sum()), float((top5 == y[:, None]).any(1).sum())
        total = max(self.total, len(vids))
        # the released code divides by the split's size: a video that did not decode counts as wrong
        return {"clip_top1": self.clip_hits[0] / self.clip_count, "clip_top5": self.clip_hits[1] / self.clip_count,
                "video_top1": hits1 / total, "video_top5": hits5 / total,
                "video_top1_decoded": hits1 / len(vids), "video_top5_decoded": hits5 / len(vids),
                "videos": float(len(vids)), "videos_total": float(total),
                "videos_not_decoded": float(total - len(vids)), "views": float(self.clip_count)}

    def confusion(self) -> np.ndarray:
        conf = np.zeros((self.k, self.k), dtype=np.int64)  # rows: true class, columns: predicted
        for v, s in self.sums.items():
            conf[self.labels[v], int(np.argmax(s))] += 1
        return conf


def scorer_pool(actors: int, use_gpu: bool, cpus_per_actor: float = 1.0) -> dict:
    """map_batches arguments of the ViewScorer pool: ``actors`` actors (at least 1), each with one GPU
    (``use_gpu``; no CPU reserved: the GPU is the scorer's resource) or ``cpus_per_actor`` CPUs."""
    return {"compute": ray.data.ActorPoolStrategy(size=max(1, int(actors))),
            "num_gpus": 1 if use_gpu else 0, "num_cpus": 0 if use_gpu else cpus_per_actor}


def evaluate(cfg: Config, df: pd.DataFrame, model_state: dict, *, num_clips: Optional[int] = None,
             num_crops: Optional[int] = None, actors: int = 1, use_gpu: bool = False,
             cpus_per_actor: float = 1.0, scorer: type = ViewScorer) -> VideoScores:
    """Score every view of the validation split on ``actors`` scorer actors (a GPU each with ``use_gpu``,
else ``cpus_per_actor`` CPUs each); returns the accumulated VideoScores (video-level accuracy over every
video of the split, and over those that decoded). ``scorer``: the actor class, ViewScorer or a subclass."""
    views = build_eval_dataset(df, cfg.data, run_name=cfg.name, num_clips=num_clips, num_crops=num_crops,
                               resources=raycluster.decoder_resources(cfg))
    state_ref = [ray.put(model_state)]
    scored = views.map_batches(scorer, fn_constructor_kwargs={
        "cfg_yaml": to_yaml(cfg), "state_ref": state_ref, "use_gpu": use_gpu},
        batch_size=max(1, cfg.data.batch_size), **scorer_pool(actors, use_gpu, cpus_per_actor))
    scores = VideoScores(cfg.model.num_classes, total_videos=len(split_frame(df, cfg.data.val_split)))
    logged = 0
    for batch in scored.iter_batches(batch_size=256, batch_format="numpy"):
        scores.add(batch["video_idx"], batch["label"], batch["probs"], batch["scorer"])
        logged = log_progress(len(scores.sums), scores.total, logged)
    return scores


def log_progress(done: int, total: int, logged: int) -> int:
    """Log ``eval 40/100 videos`` each time another tenth of the split's videos has views scored; ``logged``:
    the tenths logged so far (returned updated)."""
    tenths = done * 10 // max(total, 1)
    if tenths > logged:
        log.info("eval %d/%d videos", done, total)
    return max(tenths, logged)


def run_evaluation(*, ref: str, data: Optional[str] = None, split: Optional[str] = None,
                   clips: Optional[int] = None, crops: Optional[int] = None, actors: int = 1,
                   use_gpu: bool = False, tracking_uri: Optional[str] = None,
                   overrides: Sequence[str] = (), preset: str = "demo") -> dict[str, float]:
    """jobs/evaluate.py: score a finished run / checkpoint and log clip- and video-level top-k to MLflow.

    The stored config gives only the model and the clips' shape (``config.from_stored``): the data, the
    tracking server, the cluster, credentials and the decoder pool are the caller's (``preset`` and
    ``overrides``)."""
    from_env = env_layer().get("tracking", {}).get("uri")  # MLFLOW_TRACKING_URI, as every job reads it
    uri = tracking.resolve_uri(move_userinfo_to_env(tracking_uri or from_env or TrackingConfig.uri))
    text, state, meta = checkpoint.fetch_trained(ref, tracking_uri=uri)
    cfg = from_stored(text, [*overrides, *([f"data.val_split={split}"] if split else [])], root=data,
                      preset=preset)
    cfg.tracking.uri = uri
    raycluster.connect(cfg.cluster.address, cfg.cluster.num_cpus, cfg.data.progress_interval_s)
    df, labels = resolve_dataset(cfg.data)
    if meta.get("labels") and meta["labels"] != labels:
        raise ConfigError(f"the model was trained on {len(meta['labels'])} classes that differ from the "
                          f"{len(labels)} of {cfg.data.root or 'the demo set'}; evaluate on the same label map")
    scores = evaluate(cfg, df, state, num_clips=clips, num_crops=crops, actors=actors, use_gpu=use_gpu)
    metrics = {f"eval/{k}": v for k, v in scores.metrics().items()}
    run_id = meta.get("mlflow_run_id") if checkpoint.is_run_ref(ref) else None
    if run_id is not None:  # into the training run, which keeps its status
        run = tracking.Run(run_id, uri)
        log_scores(run, scores, labels, metrics, int(meta.get("step", 0)))
        return {**metrics, "run_id": run.id}
    run, _ = tracking.start_or_resume_run(dataclasses.replace(cfg, name=f"eval-{cfg.name}"), labels,
                                          {"evaluated": ref})
    try:  # a run of its own: ended here, FINISHED or FAILED
        log_scores(run, scores, labels, metrics, int(meta.get("step", 0)))
    except BaseException:
        run.end("FAILED")
        raise
    run.end()
    return {**metrics, "run_id": run.id}


def log_scores(run: tracking.Run, scores: VideoScores, labels: list[str], metrics: dict, step: int) -> None:
    run.log_metrics(metrics, step)
    with tracking.tmpdir() as tmp:
        png = plots.per_class_accuracy_png(scores.confusion(), labels, Path(tmp) / "eval_per_class_accuracy.png")
        run.log_png(png)
    run.log_text(plots.per_class_accuracy_csv(scores.confusion(), labels), "eval_per_class_accuracy.csv")
