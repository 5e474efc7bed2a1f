"""What a preset's network costs: parameters, multiply-adds per clip, non-local positions.

Everything is measured on the meta device (shapes only, no memory, no arithmetic), so a 128×224²
NL-I3D summary costs a second. Multiply-adds are torch.utils.flop_counter FLOPs / 2 (convolutions,
matmuls, attention; BN, ReLU and pooling are not counted). mmaction2's "59.3 G" for NL-I3D R50 is
measured at 32×256×256; at 32×224×224 the same network is ~44 G (``python -m nlray.models
nl_i3d_r50_32f data.crop_size=256`` shows the 256² figure).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch
from torch.utils.flop_counter import FlopCounterMode

from nlray.config import Config, load_config
from nlray.models import build_model
from nlray.models.nonlocal_block import NonLocalBlock
from nlray.models.resnet3d import ResNet3D

PAPER_NAMES = {"conv1": "conv1", "pool1": "pool1", "res2": "layer1", "pool2": "pool2", "res3": "layer2",
               "res4": "layer3", "res5": "layer4"}  # Table 1 row -> module
SUMMARY_CLASSES = 400  # Kinetics-400, when the config leaves num_classes to the dataset


@dataclasses.dataclass
class NonLocalSite:
    """One non-local block at a given clip size: N query and N' key positions per sequence."""

    name: str  # res4[3]: after residual block 3 of res4
    channels: int
    input_thw: tuple[int, int, int]
    mode: str
    sequences: int  # independent softmax/sum groups per clip (frames, locations, temporal groups)
    n: int  # positions i per sequence
    n_prime: int  # positions j per sequence (after subsampling)


@dataclasses.dataclass
class ModelSummary:
    name: str
    clip: tuple[int, int, int]  # T, H, W
    parameters: int
    macs: int
    stage_outputs: dict[str, tuple[int, ...]]  # Table 1 row -> (C, T, H, W)
    nonlocal_sites: list[NonLocalSite]


def _site(name: str, block: NonLocalBlock, thw: tuple[int, int, int]) -> NonLocalSite:
    t, h, w = thw
    hk, wk = ((h + 1) // 2, (w + 1) // 2) if block.subsample else (h, w)
    tg, groups = t // block.temporal_groups, block.temporal_groups
    per_mode = {  # (sequences, N, N')
        "spacetime": (groups, tg * h * w, tg * hk * wk),
        "space": (t, h * w, hk * wk),
        "time": (groups * h * w, tg, tg),
    }
    seqs, n, n_prime = per_mode[block.mode]
    return NonLocalSite(name, block.out.out_channels, thw, block.mode, seqs, n, n_prime)


def summarize(model: ResNet3D, *, clip: tuple[int, int, int], name: str = "") -> ModelSummary:
    """Run ``model`` (built on the meta device, or moved there) on one meta clip [1, 3, T, H, W]."""
    outputs: dict[str, tuple[int, ...]] = {}
    sites: list[NonLocalSite] = []
    hooks = []
    for paper_name, mod_name in PAPER_NAMES.items():
        hooks.append(getattr(model, mod_name).register_forward_hook(
            lambda _m, _i, out, key=paper_name: outputs.__setitem__(key, tuple(out.shape[1:]))))
    for stage, mod_name in zip(("res2", "res3", "res4", "res5"), ("layer1", "layer2", "layer3", "layer4")):
        for idx, block in getattr(model, mod_name).nl_blocks.items():
            hooks.append(block.register_forward_hook(
                lambda m, inp, _o, key=f"{stage}[{idx}]": sites.append(_site(key, m, tuple(inp[0].shape[-3:])))))
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model.eval()(torch.empty(1, 3, *clip, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return ModelSummary(name, clip, params, counter.get_total_flops() // 2, outputs, sites)


def summarize_config(cfg: Union[Config, str], overrides: Optional[list[str]] = None) -> ModelSummary:
    """Summary of a preset / Config at its clip size (data.frames × data.crop_size²)."""
    name = cfg if isinstance(cfg, str) else cfg.name
    if isinstance(cfg, str):
        cfg = load_config(cfg, overrides)
    with torch.device("meta"):  # shapes only
        model = build_model(cfg.model, num_classes=cfg.model.num_classes or SUMMARY_CLASSES)
    return summarize(model, clip=(cfg.data.frames, cfg.data.crop_size, cfg.data.crop_size), name=name)


def format_summary(s: ModelSummary) -> str:
    t, h, w = s.clip
    lines = [f"{s.name}: clip {t}x{h}x{w}",
             f"  parameters      {s.parameters / 1e6:.2f} M",
             f"  multiply-adds   {s.macs / 1e9:.2f} G per clip",
             "  stage outputs   " + ", ".join(f"{k} {'x'.join(map(str, v[1:]))}" for k, v in s.stage_outputs.items()),
             f"  non-local blocks {len(s.nonlocal_sites)}"]
    for site in s.nonlocal_sites:
        lines.append(f"    {site.name:<8} C={site.channels:<5} input {'x'.join(map(str, site.input_thw)):<10} "
                     f"{site.mode:<9} {site.sequences} x (N={site.n}, N'={site.n_prime})")
    return "\n".join(lines)
