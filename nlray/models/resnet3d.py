"""C2D and I3D ResNet-50/101 with non-local blocks (Wang et al., CVPR 2018, docs/paper.md Table 1).

One generic ``ResNet3D``; the architectures are data (the tables in ``resnet_layout``) and short builders
(``c2d_resnet``, ``i3d_resnet``, ``i3d3x3x3_resnet``). Module names follow torchvision's ResNet
(conv1, bn1, layer1..layer4, fc; a stage's residual blocks in ``layerK.blocks``, its non-local
blocks in ``layerK.nl_blocks``), so ImageNet weights map over one to one (``inflate.py``).

Stages are named as in the paper: res2..res5 = layer1..layer4. For a 32×224×224 clip the outputs are
conv1 16×112×112, pool1 8×56×56, res2 8×56×56, pool2 4×56×56, res3 4×28×28, res4 4×14×14, res5 4×7×7
(``pool_variant="caffe2"``: pool1, res2 and pool2 are 55×55, as in the released code; res3 on as above).
No weight depends on the number of frames: a 32-frame model's state dict loads into a 128-frame one.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nlray.choices import POOL_VARIANTS, TEMPORAL_PADDING, TEST_HEADS, check_choice
from nlray.models.nonlocal_block import NonLocalBlock
from nlray.models.resnet_layout import (EXPANSION, HEAD_WINDOW, POOLS, STAGE_WIDTH, STAGES, check_placement,
                                        nonlocal_placement, stage_depths_for, temporal_kernels)


class ReplicateTimeConv3d(nn.Conv3d):
    """Conv3d that repeats the first/last frame for its temporal padding (space: zeros, as usual).

    With it, an inflated network sees a clip of identical frames as one image at every frame,
    borders included; zero padding (the paper's, Caffe2's) makes the border frames differ.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int], *,
                 stride: Any = 1, padding: tuple[int, int, int] = (0, 0, 0), bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=(0, padding[1], padding[2]), bias=bias)
        self.time_pad = padding[0]

    def forward(self, x: Tensor) -> Tensor:
        if self.time_pad:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, self.time_pad), mode="replicate")  # T + 2·pad frames
        return super().forward(x)


def _conv(conv_cls: type, cin: int, cout: int, kernel: tuple[int, int, int], stride: Any = 1) -> nn.Conv3d:
    """A bias-free conv with 'same' padding for odd kernels."""
    return conv_cls(cin, cout, kernel, stride=stride, padding=tuple(k // 2 for k in kernel), bias=False)


class Bottleneck(nn.Module):
    """1×1, 3×3, 1×1 (+ shortcut), stride on the 3×3 (torchvision's ResNet v1.5).

    ``temporal_kernels`` = (first, middle): (1, 1) C2D, (3, 1) I3D₃ₓ₁ₓ₁, (1, 3) I3D₃ₓ₃ₓ₃.
    """

    def __init__(self, in_channels: int, inner: int, *, stride: int = 1,
                 temporal_kernels: tuple[int, int] = (1, 1), conv_cls: type = nn.Conv3d):
        super().__init__()
        kt1, kt2 = temporal_kernels
        out = inner * EXPANSION
        self.conv1 = _conv(conv_cls, in_channels, inner, (kt1, 1, 1))
        self.bn1 = nn.BatchNorm3d(inner)
        self.conv2 = _conv(conv_cls, inner, inner, (kt2, 3, 3), stride=(1, stride, stride))
        self.bn2 = nn.BatchNorm3d(inner)
        self.conv3 = _conv(nn.Conv3d, inner, out, (1, 1, 1))
        self.bn3 = nn.BatchNorm3d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(_conv(nn.Conv3d, in_channels, out, (1, 1, 1), (1, stride, stride)),
                                            nn.BatchNorm3d(out))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + shortcut)


@contextlib.contextmanager
def _keep_bn_statistics(module: nn.Module) -> Iterator[None]:
    """Recomputation under checkpointing must not update BN running statistics a second time."""
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def _checkpoint_contexts(module: nn.Module) -> tuple[Any, Any]:
    return contextlib.nullcontext(), _keep_bn_statistics(module)


class ResStage(nn.Module):
    """Residual blocks of one stage, each optionally followed by a non-local block."""

    def __init__(self, blocks: Sequence[nn.Module], nonlocal_blocks: Mapping[int, nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.nl_blocks = nn.ModuleDict({str(i): m for i, m in sorted(nonlocal_blocks.items())})
        self.activation_checkpointing = False

    def _run(self, module: nn.Module, x: Tensor) -> Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False,
                              context_fn=functools.partial(_checkpoint_contexts, module))
        return module(x)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = self._run(block, x)
            if str(i) in self.nl_blocks:
                x = self._run(self.nl_blocks[str(i)], x)
        return x


class ResNet3D(nn.Module):
    """A bottleneck ResNet on clips [B, 3, T, H, W] -> logits [B, num_classes] (docs/paper.md Table 1).

    ``temporal_kernels[s][b]`` = (first, middle) temporal kernel of block b of stage res(s+2): its
    lengths are the stage depths. ``nonlocal_placement`` lists (stage 2..5, block index) pairs; each
    non-local block gets ``nonlocal_options`` (NonLocalBlock keywords), and res3's also
    ``res3_temporal_groups``. ``pool_variant``: "paper" (Table 1) or "caffe2" pools.
    ``temporal_padding``: "zeros" (paper, Caffe2) or "replicate" (ReplicateTimeConv3d).
    ``activation_checkpointing``: recompute each residual / non-local block in the backward.
    ``zero_init_residual``: each bottleneck's last BN gamma starts at 0; ``fc_init_std`` > 0: classifier
    N(0, std), zero bias (both as the released code). ``test_head``: "pool" (global average, fc) or "conv"
    (in eval mode only: ``fully_conv_log_probs``, the released code's fully convolutional test).
    """

    def __init__(self, *, temporal_kernels: Sequence[Sequence[tuple[int, int]]], conv1_t: int = 1,
                 width: int = 64, num_classes: int = 400, nonlocal_placement: Sequence[tuple[int, int]] = (),
                 nonlocal_options: Optional[Mapping[str, Any]] = None, res3_temporal_groups: int = 1,
                 pool_variant: str = "paper", dropout: float = 0.5, temporal_padding: str = "zeros",
                 activation_checkpointing: bool = False, zero_init_residual: bool = False,
                 fc_init_std: float = 0.0, test_head: str = "pool"):
        super().__init__()
        _check_options(temporal_kernels=temporal_kernels, pool_variant=pool_variant,
                       temporal_padding=temporal_padding, test_head=test_head, fc_init_std=fc_init_std)
        placement = check_placement(nonlocal_placement, [len(s) for s in temporal_kernels])
        conv_cls = ReplicateTimeConv3d if temporal_padding == "replicate" else nn.Conv3d
        pool1, pool2 = POOLS[pool_variant]
        self.conv1 = conv_cls(3, width, (conv1_t, 7, 7), stride=(2, 2, 2), padding=(conv1_t // 2, 3, 3),
                              bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool3d(*pool1)
        self.pool2 = nn.MaxPool3d(*pool2)
        in_ch, stages = width, []
        for s, (stage, kernels) in enumerate(zip(STAGES, temporal_kernels)):
            options = dict(nonlocal_options or {})
            if stage == 3:  # Caffe2's 128-frame trick applies to res3 only
                options["temporal_groups"] = res3_temporal_groups
            stages.append(_make_stage(in_ch, width * STAGE_WIDTH[s], kernels, stride=1 if s == 0 else 2,
                                      conv_cls=conv_cls, nonlocal_at=[b for st, b in placement if st == stage],
                                      nonlocal_options=options))
            in_ch = width * STAGE_WIDTH[s] * EXPANSION
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)
        self.test_head = test_head
        self._init_weights(zero_init_residual=zero_init_residual, fc_init_std=fc_init_std)
        self.set_activation_checkpointing(activation_checkpointing)

    def _init_weights(self, *, zero_init_residual: bool, fc_init_std: float) -> None:
        """torchvision's ResNet init for the backbone; non-local blocks keep their own (zero BN gamma).

        ``zero_init_residual``: every residual block starts as relu(shortcut) (Caffe2's BN_INIT_GAMMA 0);
        ``fc_init_std`` > 0: Caffe2's FC_INIT_STD, else nn.Linear's own init.
        """
        nl = {id(m) for stage in self.stages() for blk in stage.nl_blocks.values() for m in blk.modules()}
        for m in self.modules():
            if id(m) in nl:
                continue
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for stage in self.stages():
                for block in stage.blocks:
                    nn.init.zeros_(block.bn3.weight)  # the BN before the sum with the shortcut
        if fc_init_std > 0:
            nn.init.normal_(self.fc.weight, std=fc_init_std)
            nn.init.zeros_(self.fc.bias)

    def stages(self) -> tuple[ResStage, ...]:
        """res2..res5."""
        return self.layer1, self.layer2, self.layer3, self.layer4

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each residual / non-local block in the backward (training mode only)."""
        for stage in self.stages():
            stage.activation_checkpointing = enabled

    def forward_features(self, x: Tensor) -> Tensor:
        """[B, 3, T, H, W] -> res5 features [B, 32·width, T/8, H/32, W/32]."""
        x = self.pool1(self.relu(self.bn1(self.conv1(x))))  # [B, width, T/4, H/4, W/4]
        x = self.pool2(self.layer1(x))  # [B, 4·width, T/8, H/4, W/4]
        return self.layer4(self.layer3(self.layer2(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, num_classes]; with test_head="conv" in eval mode, log-probabilities (softmax-compatible)."""
        features = self.forward_features(x)  # [B, 32·width, T', H', W']
        if self.test_head == "conv" and not self.training:
            return fully_conv_log_probs(features, self.fc)
        x = features.mean(dim=(2, 3, 4))  # global average pool: [B, 32·width]
        return self.fc(self.dropout(x))  # [B, num_classes]


def fully_conv_log_probs(features: Tensor, fc: nn.Linear, window: int = HEAD_WINDOW) -> Tensor:
    """The released code's fully convolutional test: log of the class probabilities averaged over positions.

    res5 [B, C, T, H, W] is average-pooled with kernel (T, window, window), stride 1 (the window clamped to
    a smaller map), ``fc`` is applied at every pooled position (its weights as a 1×1×1 conv), softmax per
    position, mean over positions. Returned as a log so that softmax of it (what callers do with logits)
    is exactly that mean; cross-entropy on it is the mean's negative log-likelihood. [B, classes], float32+.
    """
    t, h, w = features.shape[-3:]
    pooled = F.avg_pool3d(features, (t, min(window, h), min(window, w)), stride=1)  # [B, C, 1, H', W']
    logits = fc(pooled.flatten(2).transpose(1, 2))  # [B, C, P] -> [B, P, classes]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 under autocast: sum in float32
    log_probs = logits.log_softmax(dim=-1)  # softmax per position: [B, P, classes]
    return log_probs.logsumexp(dim=1) - math.log(log_probs.shape[1])  # log mean_P softmax: [B, classes]


def _check_options(*, temporal_kernels: Sequence[Sequence[tuple[int, int]]], pool_variant: str,
                   temporal_padding: str, test_head: str, fc_init_std: float) -> None:
    """ResNet3D's keyword checks: ValueError naming the bad value and the allowed ones."""
    check_choice("pool_variant", pool_variant, POOL_VARIANTS)
    check_choice("temporal_padding", temporal_padding, TEMPORAL_PADDING)
    check_choice("test_head", test_head, TEST_HEADS)
    if not fc_init_std >= 0:
        raise ValueError(f"fc_init_std={fc_init_std!r} must be >= 0 (0: nn.Linear's init; released code: 0.01)")
    if len(temporal_kernels) != len(STAGES) or min(map(len, temporal_kernels)) < 1:
        raise ValueError(f"temporal_kernels needs 4 stages of >= 1 block, got depths "
                         f"{[len(s) for s in temporal_kernels]}")


def _make_stage(in_ch: int, inner: int, kernels: Sequence[tuple[int, int]], *, stride: int, conv_cls: type,
                nonlocal_at: Sequence[int], nonlocal_options: Mapping[str, Any]) -> ResStage:
    blocks = [Bottleneck(in_ch if i == 0 else inner * EXPANSION, inner, stride=stride if i == 0 else 1,
                         temporal_kernels=tuple(k), conv_cls=conv_cls) for i, k in enumerate(kernels)]
    nl = {i: NonLocalBlock(inner * EXPANSION, **nonlocal_options) for i in nonlocal_at}
    return ResStage(blocks, nl)


def _build(*, conv1_t: int, inflate: Optional[int], depth: int, stage_depths: Optional[Sequence[int]],
           nonlocal_blocks: int, nonlocal_placement_: Optional[Sequence[Sequence[int]]],
           **kwargs: Any) -> ResNet3D:
    kernels = temporal_kernels(stage_depths_for(depth, stage_depths), inflate)
    placement = nonlocal_placement_ if nonlocal_placement_ is not None else nonlocal_placement(depth, nonlocal_blocks)
    return ResNet3D(temporal_kernels=kernels, conv1_t=conv1_t, nonlocal_placement=placement, **kwargs)


def c2d_resnet(*, depth: int = 50, stage_depths: Optional[Sequence[int]] = None, nonlocal_blocks: int = 0,
               nonlocal_placement: Optional[Sequence[Sequence[int]]] = None, **kwargs: Any) -> ResNet3D:
    """C2D ResNet (docs/paper.md "C2D"): every conv 1×k×k (conv1 1×7×7); only pooling mixes time.

    ``nonlocal_blocks`` 1 / 5 / 10 places them as the paper does (``resnet_layout.NONLOCAL_PLACEMENTS``), or
    ``nonlocal_placement`` lists [stage, block] pairs. Other keywords go to ``ResNet3D``.
    """
    return _build(conv1_t=1, inflate=None, depth=depth, stage_depths=stage_depths,
                  nonlocal_blocks=nonlocal_blocks, nonlocal_placement_=nonlocal_placement, **kwargs)


def i3d_resnet(*, depth: int = 50, stage_depths: Optional[Sequence[int]] = None, nonlocal_blocks: int = 0,
               nonlocal_placement: Optional[Sequence[Sequence[int]]] = None, **kwargs: Any) -> ResNet3D:
    """I3D₃ₓ₁ₓ₁ ResNet (docs/paper.md "I3D"): conv1 5×7×7; a bottleneck's first 1×1
    becomes 3×1×1 where the I3D mask says so (every other block, Caffe2's masks). Keywords as c2d_resnet.
    """
    return _build(conv1_t=5, inflate=0, depth=depth, stage_depths=stage_depths,
                  nonlocal_blocks=nonlocal_blocks, nonlocal_placement_=nonlocal_placement, **kwargs)


def i3d3x3x3_resnet(*, depth: int = 50, stage_depths: Optional[Sequence[int]] = None, nonlocal_blocks: int = 0,
                    nonlocal_placement: Optional[Sequence[Sequence[int]]] = None, **kwargs: Any) -> ResNet3D:
    """I3D₃ₓ₃ₓ₃ ResNet (docs/paper.md "I3D", "Table 2e"): as i3d_resnet but the masked blocks inflate the
    3×3 to 3×3×3 instead of the first 1×1 (about 1.8x the FLOPs of C2D). Keywords as c2d_resnet.
    """
    return _build(conv1_t=5, inflate=1, depth=depth, stage_depths=stage_depths,
                  nonlocal_blocks=nonlocal_blocks, nonlocal_placement_=nonlocal_placement, **kwargs)


BUILDERS = {"c2d": c2d_resnet, "i3d": i3d_resnet, "i3d3x3x3": i3d3x3x3_resnet}
