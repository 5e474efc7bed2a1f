"""The per-worker training loop that Ray Train runs on every worker (DDP).

Rank 0 alone writes: MLflow step metrics (into the run the driver made) and checkpoints.
"""
from __future__ import annotations

import logging
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from nlray.config import Config, from_yaml
from nlray.data.pipeline import bad_video_counts, bad_video_log_name
from nlray.data.transforms import normalize_on_device
from nlray.models import build_model, freeze_batchnorm
from nlray.progress import progress_line, quiet_train_reports
from nlray.secrets import adopt_credential_env
from nlray.tracking import Run
from nlray.train import checkpoint, elastic
from nlray.train.metrics import Meter, epoch_audit
from nlray.train.precise_bn import update_bn_stats
from nlray.train.speedups import as_input, speed_up, unwrap
from nlray.train.optim import StepPlan, build_optimizer, global_batch, lr_at, peak_lr

log = logging.getLogger("nlray")
NO_DATA_TAG = "nlray.no_data_epoch"  # set by rank 0 when an epoch gave no batch; the driver then fails the run


def build_worker_model(cfg: Config) -> nn.Module:
    """The bare model a worker trains (pretrained weights come from the driver, not a download per worker)."""
    return build_model(cfg.model, num_classes=cfg.model.num_classes,
                       activation_checkpointing=cfg.train.activation_checkpointing)


class TrainBatch(NumpyBatchCollateFn):
    """collate_fn: the training columns as tensors with memory of their own: uint8 clips as they are (4x less
    than float), labels, and the manifest row of each clip (``video_idx``) for the epoch's audit.

    Ray hands over read-only views of the object store. Ray's own conversion hides torch's warning about
    them with ``warnings.catch_warnings``, which is not thread-safe: from its conversion threads the
    warning still shows. A read-only column is copied instead, in Ray's prefetch threads (one memcpy of
    the batch, beside the step)."""

    COLUMNS = {"video": np.uint8, "label": np.int64, "video_idx": np.int64}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.require(batch[k], dtype, requirements="W"))  # (B, T, H, W, C) / (B,)
                for k, dtype in self.COLUMNS.items()}


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


def forward_loss(model: nn.Module, batch: dict, device: torch.device, bf16: bool,
                 channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip's cross-entropy (B,) float32 and whether its top-1 was right (B,) bool."""
    video = batch["video"].to(device, non_blocking=True)  # (B, T, H, W, C) uint8
    x = as_input(normalize_on_device(video, dtype=torch.float32), channels_last)  # (B, C, T, H, W) float
    y = batch["label"].to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)  # (B, K)
    return F.cross_entropy(logits.float(), y, reduction="none"), logits.argmax(1) == y


def restore(model: nn.Module, cfg: Config, init_ref) -> tuple[Optional[dict], dict, list[str]]:
    """Load the newest checkpoint of this run that loads (resume) or else the driver's initial weights.

    The run's folder is looked at as well as the checkpoint Ray Train registered: a node lost right after
    an upload leaves a whole checkpoint that the controller never heard of.
    Returns (optimizer state or None, the checkpoint's meta (step, epoch, world_size, ...) or {}, checkpoints
    skipped because they did not load).
    """
    reported, stored = ray.train.get_checkpoint(), checkpoint.stored_checkpoints(cfg)
    if reported is not None and reported.path not in {c.path for c in stored}:
        stored = [reported, *stored]  # a storage outside the run folder: trust the controller first
    if stored:
        state, skipped = checkpoint.load_latest_good(stored)
        model.load_state_dict(state["model"])
        return state["optimizer"], state["meta"], skipped
    if init_ref is not None:
        model.load_state_dict(ray.get(init_ref))
    return None, {}, []


def save_and_report(model: nn.Module, optimizer, *, cfg: Config, meta: dict, metrics: dict,
                    suffix: str = "") -> None:
    """Every rank reports; rank 0 alone writes the checkpoint directory ``step_<step>[suffix]``."""
    name = f"step_{meta['step']:08d}{suffix}"
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics, checkpoint_dir_name=name)
        return
    bare = unwrap(model)
    with tempfile.TemporaryDirectory() as d:
        checkpoint.save(d, model_state=bare.state_dict(), optimizer_state=optimizer.state_dict(),
                        meta=meta, cfg=cfg)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)


def bad_video_metrics(cfg: Config) -> dict[str, float]:
    """This run's bad training videos by reason, counted by its BadVideoLog actor (rank 0 logs them)."""
    counts = bad_video_counts(bad_video_log_name(cfg.name, cfg.data.train_split))
    return {f"data/bad_videos/{reason}": n for reason, n in counts.items()} | {
        "data/bad_videos_total": sum(counts.values())}


@dataclass
class Loop:
    """What one worker's training loop holds between steps."""

    cfg: Config
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    run: Run
    meta: dict  # saved in every checkpoint beside step and epoch
    peak_lr: float
    plan: StepPlan  # how this world size makes each step's global batch
    logged_upto: int  # steps up to here are in MLflow already (a restart replays them: not logged again)
    # after falling back past a checkpoint that did not load, new checkpoints of the same steps get their own
    # folders: Ray Train's retention would otherwise delete the new one with the bad one it replaces
    dir_suffix: str = ""
    meter: Meter = None  # type: ignore[assignment]
    start_step: int = 0  # the step this session (re)started at: the console's eta counts from here
    rank: int = 0  # this worker's world rank

    def __post_init__(self):
        self.meter = Meter(self.device)
        self.t_start = time.perf_counter()
        self.bf16 = self.cfg.train.bf16 and self.device.type == "cuda"
        self.micro = 0
        self.notice = None  # Ray Train's PreemptionInfo once a notice came (the checkpoint is saved; asked no more)


def train_func(config: dict) -> None:
    """Ray Train entry point. config: cfg (YAML), labels, run (tracking.Run), init_ref (ObjectRef of a
    state dict or None)."""
    loop, step, epoch = setup(config)
    ctx = ray.train.get_context()  # one monitor a node: it samples the whole machine, its GPUs included
    with loop.run.system_metrics(node_id=f"node{ctx.get_node_rank()}",
                                 interval_s=loop.cfg.tracking.system_metrics_interval_s if ctx.get_local_rank() == 0 else 0):
        train_steps(loop, step, epoch)


def train_steps(loop: Loop, step: int, epoch: int) -> None:
    """Precise BN where due, the epochs up to train.steps, the final checkpoint."""
    shard = ray.train.get_dataset_shard("train")
    if step == 0 and loop.cfg.train.freeze_bn and loop.cfg.train.precise_bn_batches:
        precise_bn(loop, shard, step)  # the frozen statistics: of these clips, not of the ones before
    last_saved = step
    while step < loop.cfg.train.steps:
        step, batches, last_saved = train_epoch(loop, shard, step, epoch, last_saved)
        if batches == 0:  # every worker sees it: an epoch with no clip would repeat forever
            if ray.train.get_context().get_world_rank() == 0:
                loop.run.set_tags({NO_DATA_TAG: str(epoch)})  # the driver raises, naming the reasons
            return
        epoch += 1
    if last_saved != step:  # the final checkpoint (or resumed at or past the end: report once)
        if precise_at_end(loop.cfg.train):
            precise_bn(loop, shard, step)
        save(loop, step, epoch)


def setup(config: dict) -> tuple[Loop, int, int]:
    """The model (restored or initialised), optimizer and logging state of one worker: (loop, step, epoch)."""
    cfg, run = from_yaml(config["cfg"]), config["run"]
    adopt_credential_env(ray.get(config["credentials"]))  # the driver's MLflow credentials, never in cfg
    tcfg, rank = cfg.train, ray.train.get_context().get_world_rank()
    worker_logging()
    torch.manual_seed(tcfg.seed + rank)
    model = build_worker_model(cfg)
    opt_state, restored, skipped = restore(model, cfg, config["init_ref"])
    step, epoch = int(restored.get("step", 0)), int(restored.get("epoch", 0))
    if tcfg.freeze_bn:
        model = freeze_batchnorm(model)
    model = speed_up(model, channels_last=tcfg.channels_last, compile=tcfg.compile)  # compiled before DDP: see there
    model = ray.train.torch.prepare_model(model)
    plan = StepPlan(global_batch(tcfg, cfg.data.batch_size), ray.train.get_context().get_world_size(),
                    cfg.data.batch_size)
    peak = peak_lr(tcfg, plan.clips)  # the same at every world size
    optimizer = build_optimizer(model, tcfg, peak)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    meta = {"labels": config["labels"], "mlflow_run_id": run.id, "world_size": plan.world, "schedule": {
        "peak_lr": peak, "milestones": tcfg.lr_milestones, "gamma": tcfg.lr_gamma, "warmup": tcfg.warmup_steps}}
    logged = note_start(run, step, skipped) if rank == 0 else 0
    if rank == 0:
        elastic.note_world(run, step, plan, restored)
    model.train()
    return Loop(cfg, model, optimizer, ray.train.torch.get_device(), run, meta, peak, plan, logged,
                f"_from{step:08d}" if skipped else "", start_step=step, rank=rank), step, epoch


def worker_logging() -> None:
    """INFO of the "nlray" logger to this worker's stderr, which Ray forwards to the driver's console
    (a worker process starts with no handler: only warnings would show); Ray Train's line per report, not."""
    quiet_train_reports()
    if not log.handlers:
        handler = logging.StreamHandler()  # stderr
        handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
        log.addHandler(handler)
        log.propagate = False  # once, whatever the worker's root logger has
    log.setLevel(logging.INFO)


def note_start(run: Run, step: int, skipped: list[str]) -> int:
    """Rank 0 at a (re)start: mark in MLflow where training resumed and which checkpoints did not load;
    return the last step already logged, so that steps replayed after a restart are not logged twice."""
    logged = max((s for s, _ in run.metric_history("train/loss")), default=0)
    if step > 0:
        restarts = len(run.metric_history("train/resumed_from_step")) + 1
        run.log_metrics({"train/resumed_from_step": step}, step)
        run.set_tags({"nlray.restarts": str(restarts)})
    if skipped:
        log.warning("skipped checkpoints that do not load: %s", "; ".join(skipped))
        run.set_tags({"nlray.skipped_checkpoints": "; ".join(skipped)[:5000]})
    return logged


def epoch_batches(loop: Loop, shard):
    """One pass over this worker's shard as torch batches (uint8 clips, labels, training rows)."""
    return shard.iter_torch_batches(batch_size=loop.cfg.data.batch_size, collate_fn=TrainBatch(),
                                    drop_last=True, prefetch_batches=2)


def train_epoch(loop: Loop, shard, step: int, epoch: int, last_saved: int) -> tuple[int, int, int]:
    """One pass over this worker's shard: (step, batches seen, last step saved)."""
    tcfg, batches, seen = loop.cfg.train, 0, []
    for batch, waited in synced_batches(epoch_batches(loop, shard), loop.device):
        batches += 1
        seen.append(batch["video_idx"])
        if not micro_step(loop, batch, waited):
            continue
        step += 1
        lr = optimizer_step(loop, step)
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            log_interval(loop, step, epoch, lr)
        if preempted(loop, step, epoch):  # a notice: saved at once
            last_saved = step
        elif save_due(tcfg, step):
            save(loop, step, epoch)
            last_saved = step
        if step >= tcfg.steps:
            return step, batches, last_saved  # a partial epoch: no audit
    audit = epoch_audit(seen, loop.device)
    if ray.train.get_context().get_world_rank() == 0 and step > loop.logged_upto and batches:
        loop.run.log_metrics(audit, step)
    return step, batches, last_saved


def precise_at_end(tcfg) -> bool:
    """Precise BN runs after training, on the final weights; with frozen BN (long clips) it runs before
    fine-tuning instead: the weights then adapt to the statistics of the clips they train on, and
    statistics recomputed after that would no longer match them."""
    return bool(tcfg.precise_bn_batches) and not tcfg.freeze_bn


def save_due(tcfg, step: int) -> bool:
    """A checkpoint every ``checkpoint_every`` steps and at the end; with precise BN at the end the final
    one waits for the statistics (train_steps)."""
    if step == tcfg.steps:
        return not precise_at_end(tcfg)
    return step % tcfg.checkpoint_every == 0


def precise_bn(loop: Loop, shard, step: int) -> None:
    """Recompute BN statistics over ``train.precise_bn_batches`` batches a worker (one pass of the training
    data, the weights fixed); the count used goes to MLflow at ``step``."""
    bare = unwrap(loop.model)  # eager, not compiled: precise BN swaps the BN layers' forward
    inputs = (as_input(normalize_on_device(b["video"].to(loop.device), dtype=torch.float32),  # (B, C, T, H, W)
                       loop.cfg.train.channels_last)
              for b, _ in synced_batches(epoch_batches(loop, shard), loop.device))
    with torch.autocast(device_type=loop.device.type, dtype=torch.bfloat16, enabled=loop.bf16):
        used = update_bn_stats(bare, inputs, max_batches=loop.cfg.train.precise_bn_batches)
    if ray.train.get_context().get_world_rank() == 0 and (step > loop.logged_upto or step == 0):
        loop.run.log_metrics({"train/precise_bn_batches": used}, step)


def micro_step(loop: Loop, batch: dict, waited: float) -> bool:
    """Forward and backward of one batch, its clips weighted as the step plan says (the first ``used`` enter
    the loss); True when the accumulated gradients are due for a step."""
    index = loop.micro % loop.plan.accum  # this micro-batch's place in the step
    loop.micro += 1
    sync = index == loop.plan.accum - 1
    used = loop.plan.used(loop.rank, index)
    with (loop.model.no_sync() if not sync and hasattr(loop.model, "no_sync") else nullcontext()):
        losses, hits = forward_loss(loop.model, batch, loop.device, loop.bf16, loop.cfg.train.channels_last)
        loss_sum = losses[:used].sum()  # losses (B,): the clips beyond ``used`` count 0
        (loss_sum * loop.plan.weight).backward()  # DDP averages over the world: the mean over the step's clips
    loop.meter.add(loss_sum.item(), int(hits[:used].sum()), used, waited)
    return sync


def optimizer_step(loop: Loop, step: int) -> float:
    """SGD at the schedule's lr for the step being taken (step - 1 done so far); returns the lr."""
    t = loop.cfg.train
    lr = lr_at(step - 1, peak=loop.peak_lr, milestones=t.lr_milestones, gamma=t.lr_gamma,
               warmup_steps=t.warmup_steps)
    for group in loop.optimizer.param_groups:
        group["lr"] = lr
    loop.optimizer.step()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.meter.step()
    return lr


def save(loop: Loop, step: int, epoch: int) -> None:
    save_and_report(loop.model, loop.optimizer, cfg=loop.cfg, meta={**loop.meta, "step": step, "epoch": epoch},
                    metrics={"step": step, "epoch": epoch}, suffix=loop.dir_suffix)


def preempted(loop: Loop, step: int, epoch: int) -> bool:
    """On the first preemption notice (nlray.train.elastic.ask), a checkpoint now, recording the notice; then
    training goes on until the node goes. True when that checkpoint was saved."""
    info = elastic.ask(loop.cfg.train, step, loop.notice is not None)
    if info is None:
        return False
    loop.notice, t0 = info, time.perf_counter()
    loop.meta.update(elastic.notice_meta(info, step))  # this and later checkpoints of this worker group
    save(loop, step, epoch)
    if loop.rank == 0:
        elastic.note_notice(loop.run, info, step, time.perf_counter() - t0)
    return True


def log_interval(loop: Loop, step: int, epoch: int, lr: float) -> None:
    metrics = loop.meter.reduce()  # a collective: every rank calls it
    loop.meter.reset()
    if ray.train.get_context().get_world_rank() != 0:
        return
    log.info("%s", progress_line(step, loop.cfg.train.steps, epoch, metrics, lr,
                                 time.perf_counter() - loop.t_start, step - loop.start_step))
    if step > loop.logged_upto:
        metrics.update({"train/lr": lr, "train/epoch": epoch, **bad_video_metrics(loop.cfg)})
        loop.run.log_metrics(metrics, step)
