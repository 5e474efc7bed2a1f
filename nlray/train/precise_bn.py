"""Precise BN: every BN layer's statistics recomputed over many batches of the final weights.

Training leaves an exponential moving average of batch statistics taken while the weights were still
moving; the released Caffe2 code (``COMPUTE_PRECISE_BN``) and PySlowFast (``BN.USE_PRECISE_STATS``)
replace it before a checkpoint is evaluated. A long-clip stage, whose BN layers are frozen during
training, runs it before fine-tuning (``nlray.train.loop.train_steps`` at step 0; ``precise_at_end`` says
which): the frozen statistics are then
those of the clips the model now sees (128×1 instead of 32×2), and the weights adapt to them.

During the passes each BN layer, frozen or not, normalises by its batch's own statistics (as BN does in
training) and adds them up; the result is the average over batches and workers:
running_mean = E[x], running_var = E[x²] - E[x]².
"""
from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nlray.models import FrozenBatchNorm3d

BN_TYPES = (nn.BatchNorm3d, FrozenBatchNorm3d)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, BN_TYPES)]


@contextmanager
def recording(layers: list[nn.Module]) -> Iterator[Tensor]:
    """Inside, each layer normalises by batch statistics and adds [Σ mean, Σ E[x²]] of each batch to
    row i of the yielded sums [layers, 2, C_max] (zero-padded to the widest layer)."""
    width = max(m.running_mean.numel() for m in layers)
    sums = torch.zeros(len(layers), 2, width, dtype=torch.float64, device=layers[0].running_mean.device)

    def forward(i: int):
        def run(m: nn.Module, x: Tensor) -> Tensor:  # x [B, C, T, H, W]
            xf = x.detach().float()
            dims = [0, *range(2, x.dim())]
            c = xf.shape[1]
            sums[i, 0, :c] += xf.mean(dims).double()  # [C]
            sums[i, 1, :c] += (xf * xf).mean(dims).double()  # [C]
            return F.batch_norm(x, None, None, m.weight, m.bias, training=True, eps=m.eps)
        return run

    for i, m in enumerate(layers):
        m.forward = types.MethodType(forward(i), m)
    try:
        yield sums
    finally:
        for m in layers:
            del m.forward  # the class's forward again


def update_bn_stats(model: nn.Module, batches: Iterable[Tensor], *, max_batches: int) -> int:
    """Recompute the running statistics of every BN layer of ``model`` from up to ``max_batches`` inputs
    [B, C, T, H, W] per worker, averaged over all workers (a collective: every rank calls it with the same
    count). Returns the batches used on this worker."""
    layers = bn_layers(model)
    if not layers:
        return 0
    used = 0
    with recording(layers) as sums, torch.no_grad():
        for x in batches:
            if used == max_batches:
                break
            model(x)
            used += 1
        total = torch.tensor([float(used)], dtype=torch.float64, device=sums.device)
        if dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(total)
    if total.item() == 0:
        return 0
    for i, m in enumerate(layers):
        c = m.running_mean.numel()
        mean, sq = sums[i, 0, :c] / total, sums[i, 1, :c] / total  # [C] each
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_((sq - mean * mean).clamp(min=0).to(m.running_var.dtype))
    return used
