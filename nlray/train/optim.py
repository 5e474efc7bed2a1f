"""SGD and the step schedule of docs/paper.md "Training recipe", with the lr scaled linearly in the global batch
(Goyal et al.; the paper's two settings, 0.01 at 64 clips and 0.0025 at 16, follow that rule)."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from nlray.config import TrainConfig

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def accumulation_steps(tcfg: TrainConfig, per_worker_batch: int) -> int:
    """Micro-batches per optimizer step so that a step sees ``global_batch`` clips."""
    per_step = tcfg.num_workers * per_worker_batch
    return max(1, tcfg.global_batch // per_step) if tcfg.global_batch else 1


def global_batch(tcfg: TrainConfig, per_worker_batch: int) -> int:
    return tcfg.num_workers * per_worker_batch * accumulation_steps(tcfg, per_worker_batch)


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
