"""The training step's two speed settings, both off by default and exact in float32 (tests/test_train_options.py):

- ``train.channels_last``: the model's 5-D weights and each input clip in ``torch.channels_last_3d``
  (N, D, H, W, C strides), the layout cuDNN's 3-D convolutions prefer; the values are unchanged.
- ``train.compile``: ``torch.compile`` of the worker's model (inductor; the first step compiles).

Used by the worker loop (nlray.train.loop) and by ``jobs/bench_train.py``, so that the benchmark times the
same transformation the workers apply.
"""
from __future__ import annotations

import torch
from torch import nn


def speed_up(model: nn.Module, *, channels_last: bool, compile: bool) -> nn.Module:
    """The bare model (before ``ray.train.torch.prepare_model``) in channels_last_3d and/or compiled.

    Compiled BEFORE prepare_model: prepare_model takes any nn.Module, moves it to the device (a compiled
    module's ``.to`` moves the module it wraps; compilation itself waits for the first forward, on the
    device) and DDP-wraps it when there are several workers, so DDP stays the outermost wrapper the loop
    relies on (``no_sync`` under gradient accumulation, ``.module``) on one worker and on many. The cost:
    DDP's all-reduce then starts once the compiled backward has produced every gradient, without the
    bucket-by-bucket overlap that torch.compile(DDP(model)) gets from DDPOptimizer; PyTorch's DDP notes
    recommend that order for speed, which would put the compiled wrapper outside DDP on several workers
    and not on one. Measure on GPUs (jobs/bench_train.py --compile; no DDP there) before choosing it."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)  # 5-D parameters and buffers only
    if compile:
        model = torch.compile(model)
    return model


def as_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A clip batch (B, C, T, H, W) float in the model's memory format."""
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (``.module``) and torch.compile (``._orig_mod``): what a checkpoint saves
    (a compiled module's state_dict keys start with ``_orig_mod.``) and what precise BN runs eagerly."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)
