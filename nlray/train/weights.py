"""Where a run's initial weights come from, loaded once on the driver (workers get them via the object store).

    --init-from (a 32-frame run / checkpoint)  ->  checkpoint.fetch_weights, checked against the model
    model.pretrained (imagenet / path / URI)   ->  a torchvision 2D ResNet inflated to 3D (docs/paper.md "Inflation")
    neither                                     ->  None: random init
"""
from __future__ import annotations

import io
from typing import Optional

import torch
import torchvision

from nlray.config import Config
from nlray.data.storage import MissingObjectError, read_bytes
from nlray.models import InflationReport, ResNet3D, build_model, inflate_from_2d
from nlray.train import checkpoint

IMAGENET_DEPTHS = (50, 101)  # torchvision ships ImageNet ResNet-50 and -101


def pretrained_state_dict(source: str, *, depth: int = 50) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict: "imagenet" (torchvision download), a local path, file:// or s3:// URI."""
    if source == "imagenet":
        if depth not in IMAGENET_DEPTHS:
            raise ValueError(f"pretrained='imagenet' needs depth in {list(IMAGENET_DEPTHS)}, got {depth}")
        return getattr(torchvision.models, f"resnet{depth}")(weights="IMAGENET1K_V1").state_dict()
    try:
        data = read_bytes(source)
    except MissingObjectError:
        raise FileNotFoundError(f"model.pretrained={source!r}: no such file (expected 'none', 'imagenet', "
                                "a path, file:// or s3:// URI of a torchvision ResNet state dict)") from None
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"model.pretrained={source!r} holds a {type(state).__name__}, not a state dict")
    return state


def load_pretrained(model: ResNet3D, source: str, *, depth: int = 50) -> InflationReport:
    """Inflate the 2D weights of ``source`` (see pretrained_state_dict) into ``model``; fc is left alone."""
    return inflate_from_2d(model, pretrained_state_dict(source, depth=depth), load_fc=False)


def initial_weights(cfg: Config) -> Optional[dict]:
    """The state dict every worker starts from: a (32-frame) checkpoint / run, inflated ImageNet, or None."""
    if cfg.train.init_from:
        state = checkpoint.fetch_weights(cfg.train.init_from, tracking_uri=cfg.tracking.uri,
                                         endpoint_url=cfg.data.s3_endpoint_url)
        check_compatible(cfg, state)
        return state
    if cfg.model.pretrained != "none":
        model = build_model(cfg.model, num_classes=cfg.model.num_classes)
        load_pretrained(model, cfg.model.pretrained, depth=cfg.model.depth)
        return model.state_dict()
    return None


def check_compatible(cfg: Config, state: dict) -> None:
    """Fail on the driver, naming the keys, before workers start: same architecture, same classes."""
    want = build_model(cfg.model, num_classes=cfg.model.num_classes).state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = [k for k in want if k in state and want[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"--init-from {cfg.train.init_from!r} does not fit model {cfg.model.arch}-R"
                         f"{cfg.model.depth}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"shape mismatch {[(k, tuple(state[k].shape), tuple(want[k].shape)) for k in shapes[:5]]}")
