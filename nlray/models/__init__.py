"""Non-local C2D / I3D ResNets (Wang et al., CVPR 2018) and the one place that turns config into models.

Building a model is not loading weights: ``build_model`` makes the architecture only (random init);
pretrained ImageNet weights are inflated in by ``nlray.train.weights`` on the driver.

    >>> import torch
    >>> from nlray.config import load_config
    >>> from nlray.models import build_model
    >>> model = build_model(load_config("demo").model, num_classes=6)
    >>> model(torch.zeros(1, 3, 16, 64, 64)).shape          # (B, C, T, H, W) -> (B, classes)
    torch.Size([1, 6])

With ``model.test_head: conv`` (the paper presets) an eval-mode model returns the log of the class
probabilities averaged over the fully convolutional test's positions: softmax of it is that average.

    python -m nlray.models nl_i3d_r50_128f         # parameters, multiply-adds, non-local positions
"""
from __future__ import annotations

from nlray.config import ModelConfig
from nlray.models.frozen_batchnorm import FrozenBatchNorm3d, freeze_batchnorm
from nlray.models.inflate import InflationReport, inflate_from_2d, inflate_weight, key_2d
from nlray.models.nonlocal_block import NonLocalBlock, nonlocal_core
from nlray.models.resnet3d import BUILDERS, ResNet3D, c2d_resnet, i3d3x3x3_resnet, i3d_resnet
from nlray.models.resnet_layout import NONLOCAL_PLACEMENTS

__all__ = ["NonLocalBlock", "nonlocal_core", "ResNet3D", "c2d_resnet", "i3d_resnet", "i3d3x3x3_resnet",
           "BUILDERS", "NONLOCAL_PLACEMENTS", "build_model", "freeze_batchnorm", "FrozenBatchNorm3d",
           "inflate_from_2d", "inflate_weight", "key_2d", "InflationReport"]


def build_model(m: ModelConfig, *, num_classes: int, activation_checkpointing: bool = False) -> ResNet3D:
    """The network the ``model`` section describes, randomly initialised (no weights are loaded).

    ``num_classes``: the classifier's outputs (``model.num_classes`` 0 means "from the dataset's label
    map", so the caller passes ``len(labels)``, or 400 for Kinetics-400). ``model.test_head="conv"``:
    in eval mode the output is log-probabilities (``resnet3d.fully_conv_log_probs``), softmax-compatible.
    """
    if num_classes <= 0:
        raise ValueError(f"num_classes={num_classes!r} must be > 0 (e.g. len(labels), 400 for Kinetics-400)")
    if m.arch not in BUILDERS:
        raise ValueError(f"model.arch={m.arch!r} is not one of {list(BUILDERS)}")
    return BUILDERS[m.arch](
        depth=m.depth, stage_depths=m.stage_depths, width=m.width, num_classes=num_classes,
        nonlocal_blocks=m.nonlocal_blocks, nonlocal_placement=m.nonlocal_placement,
        nonlocal_options=dict(instantiation=m.nl_instantiation, mode=m.nl_mode, subsample=m.nl_subsample,
                              subsample_where=m.nl_subsample_where, softmax_scale=m.nl_softmax_scale,
                              init_std=m.nl_init_std),
        res3_temporal_groups=m.nl_temporal_groups, pool_variant=m.pool_variant, dropout=m.dropout,
        temporal_padding=m.temporal_padding, activation_checkpointing=activation_checkpointing,
        zero_init_residual=m.zero_init_residual, fc_init_std=m.fc_init_std, test_head=m.test_head)
