"""Non-local C2D / I3D ResNets (Wang et al., CVPR 2018) and the one place that turns config into models.

    model = build_model("nl_i3d_r50_32f")          # a preset name, a Config or a ModelConfig
    python -m nlray.models nl_i3d_r50_128f         # parameters, multiply-adds, non-local positions
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union
from urllib.parse import unquote, urlparse

import torch

from nlray.config import Config, ModelConfig, load_config
from nlray.models.inflate import InflationReport, inflate_from_2d, inflate_weight, key_2d
from nlray.models.nonlocal_block import NonLocalBlock, nonlocal_core
from nlray.models.resnet3d import (BUILDERS, NONLOCAL_PLACEMENTS, FrozenBatchNorm3d, ResNet3D, c2d_resnet,
                                   freeze_batchnorm, i3d3x3x3_resnet, i3d_resnet)

__all__ = ["NonLocalBlock", "nonlocal_core", "ResNet3D", "c2d_resnet", "i3d_resnet", "i3d3x3x3_resnet",
           "BUILDERS", "NONLOCAL_PLACEMENTS", "build_model", "freeze_batchnorm", "FrozenBatchNorm3d",
           "inflate_from_2d", "inflate_weight", "key_2d", "InflationReport", "pretrained_state_dict",
           "load_pretrained"]

IMAGENET_DEPTHS = (50, 101)
log = logging.getLogger(__name__)


def build_model(cfg: Union[ModelConfig, Config, str], *, num_classes: Optional[int] = None,
                activation_checkpointing: Optional[bool] = None,
                overrides: Optional[list[str]] = None) -> ResNet3D:
    """The network a config describes, with ``model.pretrained`` weights loaded (inflated).

    ``cfg``: a ModelConfig, a full Config (then ``train.activation_checkpointing`` and
    ``train.freeze_bn`` apply too) or a preset name (+ ``overrides``, as ``load_config``).
    ``num_classes`` overrides ``model.num_classes`` (0 there means "from the dataset's labels").
    """
    if isinstance(cfg, str):
        cfg = load_config(cfg, overrides)
    train = cfg.train if isinstance(cfg, Config) else None
    m = cfg.model if isinstance(cfg, Config) else cfg
    classes = num_classes if num_classes is not None else m.num_classes
    if classes <= 0:
        raise ValueError(f"model.num_classes={classes!r}: 0 means 'from the dataset's label map', so pass "
                         "num_classes= (e.g. len(labels), 400 for Kinetics-400)")
    if m.arch not in BUILDERS:
        raise ValueError(f"model.arch={m.arch!r} is not one of {list(BUILDERS)}")
    if activation_checkpointing is None:
        activation_checkpointing = bool(train and train.activation_checkpointing)
    model = BUILDERS[m.arch](
        depth=m.depth, stage_depths=m.stage_depths, width=m.width, num_classes=classes,
        nonlocal_blocks=m.nonlocal_blocks, nonlocal_placement=m.nonlocal_placement,
        nonlocal_options=dict(instantiation=m.nl_instantiation, mode=m.nl_mode, subsample=m.nl_subsample,
                              subsample_where=m.nl_subsample_where, softmax_scale=m.nl_softmax_scale),
        res3_temporal_groups=m.nl_temporal_groups, pool_variant=m.pool_variant, dropout=m.dropout,
        temporal_padding=m.temporal_padding,
        activation_checkpointing=activation_checkpointing)
    if m.pretrained != "none":
        log.info("model.pretrained=%s: %s", m.pretrained, load_pretrained(model, m.pretrained, depth=m.depth))
    if train is not None and train.freeze_bn:
        freeze_batchnorm(model)
    return model


def pretrained_state_dict(source: str, *, depth: int = 50) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict: "imagenet" (torchvision download), a local path, file:// or s3:// URI."""
    if source == "imagenet":
        import torchvision

        if depth not in IMAGENET_DEPTHS:
            raise ValueError(f"pretrained='imagenet' needs depth in {list(IMAGENET_DEPTHS)}, got {depth}")
        net = getattr(torchvision.models, f"resnet{depth}")(weights="IMAGENET1K_V1")
        return net.state_dict()
    parsed = urlparse(source)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained={source!r}: no such file (expected 'none', 'imagenet', "
                                    "a path, file:// or s3:// URI of a torchvision ResNet state dict)")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        import io

        from nlray.data.storage import read_bytes  # only remote weights need the storage layer

        state = torch.load(io.BytesIO(read_bytes(source)), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"model.pretrained={source!r} holds a {type(state).__name__}, not a state dict")
    return state


def load_pretrained(model: ResNet3D, source: str, *, depth: int = 50) -> InflationReport:
    """Inflate the 2D weights of ``source`` (see pretrained_state_dict) into ``model``; fc is left alone."""
    return inflate_from_2d(model, pretrained_state_dict(source, depth=depth), load_fc=False)

