"""The per-worker training loop that Ray Train runs on every worker (DDP).

Rank 0 alone writes: MLflow step metrics (into the run the driver made) and checkpoints.
"""
from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
from typing import Iterator, Optional

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nlray.config import Config, from_yaml
from nlray.data.pipeline import bad_video_counts, bad_video_log_name
from nlray.data.transforms import normalize_on_device
from nlray.models import build_model, freeze_batchnorm
from nlray.tracking import Run
from nlray.train import checkpoint
from nlray.train.optim import accumulation_steps, build_optimizer, global_batch, lr_at, peak_lr


def build_worker_model(cfg: Config) -> nn.Module:
    """The bare model a worker trains (pretrained weights come from the driver, not a download per worker)."""
    return build_model(cfg.model, num_classes=cfg.model.num_classes,
                       activation_checkpointing=cfg.train.activation_checkpointing)


def pick_video_label(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """collate_fn: uint8 clips travel as they are (4x less than float); labels as int64."""
    return {"video": torch.as_tensor(batch["video"]), "label": torch.as_tensor(batch["label"], dtype=torch.int64)}


def synced_batches(batches, device: torch.device) -> Iterator[tuple[dict, float]]:
    """Yield (batch, seconds waited for it) until ANY worker runs out, so DDP never hangs on a straggler."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        waited = time.perf_counter() - t0
        done = torch.tensor([float(batch is None)], device=device)
        if dist.is_initialized():
            dist.all_reduce(done, op=dist.ReduceOp.MAX)
        if done.item():
            return
        yield batch, waited


def forward_loss(model: nn.Module, batch: dict, device: torch.device, bf16: bool) -> tuple[torch.Tensor, int]:
    video = batch["video"].to(device, non_blocking=True)  # (B, T, H, W, C) uint8
    x = normalize_on_device(video, dtype=torch.float32)  # (B, C, T, H, W) float
    y = batch["label"].to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)  # (B, K)
    loss = F.cross_entropy(logits.float(), y)
    return loss, int((logits.argmax(1) == y).sum())


class Meter:
    """Sums over a logging interval, reduced across workers: loss, correct, clips, data wait, wall time."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64)  # loss*clips, correct, clips, data-wait seconds
        self.t0 = time.perf_counter()

    def add(self, loss: float, correct: int, clips: int, waited: float) -> None:
        self.sums += torch.tensor([loss * clips, correct, clips, waited], dtype=torch.float64)

    def reduce(self) -> dict[str, float]:
        s = self.sums.to(self.device)
        if dist.is_initialized():
            dist.all_reduce(s)
        loss_sum, correct, clips, waited = s.tolist()
        elapsed = time.perf_counter() - self.t0
        world = dist.get_world_size() if dist.is_initialized() else 1
        return {"train/loss": loss_sum / max(clips, 1), "train/clip_top1": correct / max(clips, 1),
                "train/clips_per_s": clips / max(elapsed, 1e-9),
                "train/data_wait_share": waited / world / max(elapsed, 1e-9)}


def restore(model: nn.Module, init_ref) -> tuple[Optional[dict], int, int]:
    """Load the latest Ray Train checkpoint (resume) or else the driver's initial weights.

    Returns (optimizer state or None, step, epoch).
    """
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = checkpoint.load(d)
        model.load_state_dict(state["model"])
        return state["optimizer"], int(state["meta"]["step"]), int(state["meta"].get("epoch", 0))
    if init_ref is not None:
        model.load_state_dict(ray.get(init_ref))
    return None, 0, 0


def save_and_report(model: nn.Module, optimizer, *, cfg: Config, meta: dict, metrics: dict) -> None:
    """Every rank reports; rank 0 alone writes the checkpoint directory."""
    name = f"step_{meta['step']:08d}"
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics, checkpoint_dir_name=name)
        return
    bare = model.module if hasattr(model, "module") else model
    with tempfile.TemporaryDirectory() as d:
        checkpoint.save(d, model_state=bare.state_dict(), optimizer_state=optimizer.state_dict(),
                        meta=meta, cfg=cfg)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)


def bad_video_metrics(cfg: Config) -> dict[str, float]:
    """This run's bad training videos by reason, counted by its BadVideoLog actor (rank 0 logs them)."""
    counts = bad_video_counts(bad_video_log_name(cfg.name, cfg.data.train_split))
    return {f"data/bad_videos/{reason}": n for reason, n in counts.items()} | {
        "data/bad_videos_total": sum(counts.values())}


def train_func(config: dict) -> None:
    """Ray Train entry point. config: cfg (YAML), labels, run (tracking.Run), init_ref (ObjectRef of a
    state dict or None)."""
    cfg = from_yaml(config["cfg"])
    tcfg, rank = cfg.train, ray.train.get_context().get_world_rank()
    torch.manual_seed(tcfg.seed + rank)
    device = ray.train.torch.get_device()
    model = build_worker_model(cfg)
    opt_state, step, epoch = restore(model, config["init_ref"])
    if tcfg.freeze_bn:
        model = freeze_batchnorm(model)
    model = ray.train.torch.prepare_model(model)
    accum = accumulation_steps(tcfg, cfg.data.batch_size)
    peak = peak_lr(tcfg, global_batch(tcfg, cfg.data.batch_size))
    optimizer = build_optimizer(model, tcfg, peak)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    bf16 = tcfg.bf16 and device.type == "cuda"
    shard = ray.train.get_dataset_shard("train")
    meter, micro, last_saved = Meter(device), 0, step
    meta = {"labels": config["labels"], "mlflow_run_id": config["run"].id, "schedule": {
        "peak_lr": peak, "milestones": tcfg.lr_milestones, "gamma": tcfg.lr_gamma, "warmup": tcfg.warmup_steps}}
    model.train()
    while step < tcfg.steps:
        batches = shard.iter_torch_batches(batch_size=cfg.data.batch_size, collate_fn=pick_video_label,
                                           drop_last=True, prefetch_batches=2)
        for batch, waited in synced_batches(batches, device):
            micro += 1
            sync = micro % accum == 0
            with (model.no_sync() if not sync and hasattr(model, "no_sync") else nullcontext()):
                loss, correct = forward_loss(model, batch, device, bf16)
                (loss / accum).backward()
            meter.add(loss.item(), correct, len(batch["label"]), waited)
            if not sync:
                continue
            lr = lr_at(step, peak=peak, milestones=tcfg.lr_milestones, gamma=tcfg.lr_gamma,
                       warmup_steps=tcfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % tcfg.log_every == 0 or step == tcfg.steps:
                log_interval(cfg, config["run"], meter, step, epoch, lr)
            if step % tcfg.checkpoint_every == 0 or step == tcfg.steps:
                save_and_report(model, optimizer, cfg=cfg, meta={**meta, "step": step, "epoch": epoch},
                                metrics={"step": step, "epoch": epoch})
                last_saved = step
            if step >= tcfg.steps:
                break
        epoch += 1
    if last_saved != step:  # resumed at or past the end: report once so the run has a final checkpoint
        save_and_report(model, optimizer, cfg=cfg, meta={**meta, "step": step, "epoch": epoch},
                        metrics={"step": step, "epoch": epoch})


def log_interval(cfg: Config, run: Run, meter: Meter, step: int, epoch: int, lr: float) -> None:
    metrics = meter.reduce()  # a collective: every rank calls it
    meter.reset()
    if ray.train.get_context().get_world_rank() == 0:
        metrics.update({"train/lr": lr, "train/epoch": epoch, **bad_video_metrics(cfg)})
        run.log_metrics(metrics, step)
