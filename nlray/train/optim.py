"""SGD and the step schedule of docs/paper.md "Training recipe", with the lr scaled linearly in the global batch
(Goyal et al.; the paper's two settings, 0.01 at 64 clips and 0.0025 at 16, follow that rule)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from nlray.config import TrainConfig

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def global_batch(tcfg: TrainConfig, per_worker_batch: int) -> int:
    """Clips one optimizer step sees: ``train.global_batch``, else ``train.num_workers`` (the most workers) x
    the per-worker batch. The same at every world size of an elastic run, so that the recipe (lr, schedule,
    steps) is that of the fixed-size run."""
    return tcfg.global_batch or tcfg.num_workers * per_worker_batch


@dataclass(frozen=True)
class StepPlan:
    """How ``world`` workers with micro-batches of ``batch`` clips make one optimizer step of ``clips`` clips.

    ``accum`` micro-batches a step, enough to hold the clips. When world x batch does not divide the clips
    (an elastic run at a world size that is not a divisor), the last micro-batch is weighted: each worker
    runs all of its clips forward, and only ``used(rank, accum - 1)`` of them enter the loss, together the
    clips the earlier micro-batches left, spread over the ranks. Each clip that counts has the loss weight
    world / clips and DDP averages the gradients over world, so the step's gradient is the mean over exactly
    ``clips`` clips' losses, as in one big batch (tests/test_optim.py). BN in training mode normalises each
    micro-batch with its own statistics, as with any accumulation."""

    clips: int
    world: int
    batch: int

    @property
    def accum(self) -> int:
        return -(-self.clips // (self.world * self.batch))  # ceil

    @property
    def weight(self) -> float:
        return self.world / self.clips

    def used(self, rank: int, micro: int) -> int:
        """Clips of this rank's micro-batch ``micro`` (0-based within the step) that enter the loss."""
        if micro < self.accum - 1:
            return self.batch
        rest = self.clips - self.world * self.batch * (self.accum - 1)  # 1 .. world x batch clips left
        return rest // self.world + int(rank < rest % self.world)


def peak_lr(tcfg: TrainConfig, batch: int) -> float:
    """Linear scaling (Goyal et al.): base_lr is right for base_batch clips a step."""
    return tcfg.base_lr * batch / tcfg.base_batch


def scaled_schedule(tcfg: TrainConfig, per_worker_batch: int) -> tuple[TrainConfig, dict]:
    """(train config to run, MLflow params of the paper's and the actual schedule).

    With ``train.scale_schedule`` the preset's steps, milestones and warm-up are for ``base_batch`` clips a
    step (the paper's global batch: 64 for 32-frame clips, 16 for 128-frame) and scale by base_batch /
    actual global batch, so that a run on fewer workers sees as many epochs; the lr scales linearly
    either way (``peak_lr``).
    """
    batch = global_batch(tcfg, per_worker_batch)
    factor = tcfg.base_batch / batch if tcfg.scale_schedule else 1.0
    run = dataclasses.replace(tcfg, steps=max(1, round(tcfg.steps * factor)),
                              lr_milestones=[round(m * factor) for m in tcfg.lr_milestones],
                              warmup_steps=round(tcfg.warmup_steps * factor))
    params = {"paper.global_batch": tcfg.base_batch, "paper.lr": tcfg.base_lr, "paper.steps": tcfg.steps,
              "paper.lr_milestones": tcfg.lr_milestones, "actual.global_batch": batch,
              "actual.lr": peak_lr(tcfg, batch), "actual.steps": run.steps,
              "actual.lr_milestones": run.lr_milestones, "actual.schedule_factor": round(factor, 6)}
    return run, params


def lr_at(step: int, *, peak: float, milestones: list[int], gamma: float, warmup_steps: int) -> float:
    """Step schedule: peak x gamma^(milestones passed), after a linear warm-up from 0."""
    lr = peak * gamma ** sum(step >= m for m in milestones)
    if step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr


def param_groups(model: nn.Module, weight_decay: float, decay_bn: bool) -> list[dict]:
    """Two groups so BN parameters can skip weight decay (Caffe2's recipe)."""
    bn_ids = {id(p) for m in model.modules() if isinstance(m, BN_TYPES) for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    bn = [p for p in params if id(p) in bn_ids]
    rest = [p for p in params if id(p) not in bn_ids]
    return [{"params": rest, "weight_decay": weight_decay},
            {"params": bn, "weight_decay": weight_decay if decay_bn else 0.0}]


def build_optimizer(model: nn.Module, tcfg: TrainConfig, lr: float) -> torch.optim.SGD:
    groups = param_groups(model, tcfg.weight_decay, tcfg.weight_decay_bn)
    return torch.optim.SGD(groups, lr=lr, momentum=tcfg.momentum, nesterov=tcfg.nesterov)
