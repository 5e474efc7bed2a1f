"""ImageNet 2D ResNet -> 3D network (docs/paper.md "Inflation"; I3D, Carreira & Zisserman 2017).

A t×k×k kernel starts as t copies of the 2D k×k kernel, each divided by t, so on a clip whose
frames are all the same image every temporal conv computes the 2D conv: the inflated network gives
the 2D network's answer (exactly so with ``temporal_padding="replicate"``; with zero padding the
border frames differ). BN is copied, the classifier only when asked (and shapes match), non-local
blocks keep their own initialisation (an identity).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import torch
from torch import Tensor, nn

_STAGE_BLOCK = re.compile(r"^(layer\d)\.blocks\.")
FC_KEYS = ("fc.weight", "fc.bias")


@dataclasses.dataclass
class InflationReport:
    """What ``inflate_from_2d`` did, by 3D key (``skipped``: 2D keys that were not used, with why)."""

    loaded: list[str]
    left_initialised: list[str]
    skipped: dict[str, str]

    def __str__(self) -> str:
        return (f"inflated {len(self.loaded)} tensors from 2D, left {len(self.left_initialised)} as initialised, "
                f"skipped {len(self.skipped)} 2D tensors: {self.skipped}")


def key_2d(key_3d: str) -> str:
    """``layer2.blocks.1.conv1.weight`` -> torchvision's ``layer2.1.conv1.weight``; others unchanged."""
    return _STAGE_BLOCK.sub(r"\1.", key_3d)


def inflate_weight(w2d: Tensor, frames: int) -> Tensor:
    """[O, I, k, k] -> [O, I, t, k, k], each temporal plane = w2d / t."""
    return w2d.unsqueeze(2).expand(-1, -1, frames, -1, -1) / frames  # [O, I, 1, k, k] -> [O, I, t, k, k]


def _is_backbone(key_2d_: str) -> bool:
    return key_2d_ not in FC_KEYS and "nl_blocks" not in key_2d_ and not key_2d_.endswith("num_batches_tracked")


def inflate_from_2d(model3d: nn.Module, state_dict_2d: Mapping[str, Tensor], *,
                    load_fc: bool = False) -> InflationReport:
    """Load a torchvision ResNet state dict into ``model3d`` (a ResNet3D), inflating its convs.

    Raises ValueError naming the key on a shape mismatch, on backbone tensors the 2D state dict lacks
    (e.g. ResNet-50 weights for a ResNet-101) and on 2D backbone tensors the 3D model has no place for.
    """
    target = model3d.state_dict()
    new, loaded, left, skipped = {}, [], [], {}
    missing = [k for k in target if _is_backbone(k) and key_2d(k) not in state_dict_2d]
    if missing:
        raise ValueError(f"the 2D state dict lacks {len(missing)} backbone tensors of the 3D model, e.g. "
                         f"{key_2d(missing[0])!r} (for {missing[0]!r}): a ResNet of another depth?")
    for key, want in target.items():
        src = state_dict_2d.get(key_2d(key))
        if src is None or (key in FC_KEYS and not load_fc):
            left.append(key)
            continue
        value = inflate_weight(src, want.shape[2]) if src.dim() == 4 and want.dim() == 5 else src
        if value.shape != want.shape:
            if key in FC_KEYS:  # a classifier for other classes: keep ours
                skipped[key_2d(key)] = f"shape {tuple(src.shape)} != {tuple(want.shape)}"
                left.append(key)
                continue
            raise ValueError(f"{key!r}: 2D tensor {key_2d(key)!r} of shape {tuple(src.shape)} does not fit "
                             f"the 3D shape {tuple(want.shape)}")
        new[key] = value.to(want.dtype)
        loaded.append(key)
    used = {key_2d(k) for k in loaded}
    unused = [k for k in state_dict_2d if k not in used and k not in skipped]
    extra = [k for k in unused if _is_backbone(k)]
    if extra:
        raise ValueError(f"{len(extra)} 2D backbone tensors have no place in the 3D model, e.g. {extra[0]!r}: "
                         "a ResNet of another depth?")
    skipped.update({k: "classifier not requested (load_fc=False)" for k in unused if k in FC_KEYS})
    skipped.update({k: "not in the 3D model" for k in unused if k not in FC_KEYS})
    with torch.no_grad():
        model3d.load_state_dict(new, strict=False)
    return InflationReport(loaded=loaded, left_initialised=left, skipped=skipped)
