"""Spatial transforms of uint8 clips [T, H, W, C] (docs/paper.md "Training recipe", "Inference").

Train: shorter side scaled to a random size in ``data.train_short_side``, a random ``crop_size``
square crop, a horizontal flip with probability 1/2 (``data.flip``). The pipeline's decoder does the
scale and the crop while decoding (a ``Crop``: the PyAV backend converts only the kept square to RGB)
and then ``flip_with_label``; ``short_side_scale`` / ``random_crop`` / ``train_crop_flip`` are the
same steps on frames already decoded (the decord backend scales with ``short_side_scale``).

A mirror changes what some classes mean (a mirrored "moving_left" clip is a "moving_right" clip):
``flip_label_permutation`` turns ``data.flip_label_map``'s name pairs into label ids, and
``flip_with_label`` gives a mirrored clip its partner's label.

Eval: shorter side ``eval_short_side``, then ``num_crops`` squares of ``eval_crop_size`` spread
evenly along the longer side (3: left/centre/right for landscape, top/centre/bottom for
portrait; 1: centre).

Crop geometry (``Crop``, ``scaled_size``, ``crop_origin``, ``even_box``) is shared by the decoders,
which scale and crop while decoding, and by the transforms here, which do it on decoded frames.

Everything here stays uint8 on the CPU. Conversion to float and ImageNet normalisation happen on the
training device, after the 4x smaller uint8 batch has travelled: ``normalize_on_device``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Crop", "CropError", "scaled_size", "crop_origin", "even_box",
           "short_side_scale", "random_crop", "random_flip", "flip_label_permutation", "flip_with_label",
           "train_crop_flip", "crop_corners",
           "spatial_crops", "normalize_on_device"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, RGB
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------- crop geometry


class CropError(ValueError):
    """A crop larger than the (scaled) frame: the caller's sizes are wrong, not the video."""


@dataclass(frozen=True)
class Crop:
    """A ``size`` x ``size`` square of the frame scaled to the short side; ``fy``/``fx`` in [0, 1] place
    it from top/left (0) to bottom/right (1) of the room left around it."""

    size: int
    fy: float = 0.5
    fx: float = 0.5

    def __post_init__(self):
        if self.size < 1 or not (0.0 <= self.fy <= 1.0 and 0.0 <= self.fx <= 1.0):
            raise ValueError(f"{self!r}: size must be >= 1 and fy, fx in [0, 1]")


def scaled_size(width: int, height: int, *, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``short_side`` and the aspect ratio kept."""
    if short_side < 1:
        raise ValueError(f"short_side={short_side!r} must be >= 1")
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def crop_origin(width: int, height: int, crop: Crop) -> tuple[int, int]:
    """(y, x) of ``crop`` in a ``width`` x ``height`` frame; ValueError if the square does not fit."""
    if crop.size > min(width, height):
        raise CropError(f"crop size {crop.size} does not fit frames of {height}x{width} (H x W)")
    room_y, room_x = height - crop.size, width - crop.size
    # uniform fy/fx in [0, 1) -> every integer position equally likely; 1.0 -> the far edge
    return min(int(crop.fy * (room_y + 1)), room_y), min(int(crop.fx * (room_x + 1)), room_x)


def even_box(width: int, height: int, short_side: Optional[int], crop: Crop) -> tuple[int, int, int, int]:
    """(x, y, w, h) in the decoded frame of the square ``crop`` takes of the scaled frame.

    Corner even, side a multiple of 4 (within 1 / 2 px of the exact square)."""
    sw, sh = (width, height) if short_side is None else scaled_size(width, height, short_side=short_side)
    y, x = crop_origin(sw, sh, crop)
    s = sw / width  # scaled / decoded
    # side a multiple of 4: 4:2:0 chroma of even size, packed two half-rows per row (decode_pyav)
    side = max(4, min(int(round(crop.size / s / 4)) * 4, width - width % 4, height - height % 4))
    x0 = min(int(round(x / s / 2)) * 2, (width - side) // 2 * 2)  # nearest even: within 1 px
    y0 = min(int(round(y / s / 2)) * 2, (height - side) // 2 * 2)
    return x0, y0, side, side


# ----------------------------------------------------------------------------- frame transforms


def _check_clip(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"expected a uint8 clip [T, H, W, C]; got {frames.dtype} {frames.shape}")


def short_side_scale(frames: np.ndarray, *, size: int) -> np.ndarray:
    """uint8 [T, H, W, C] -> [T, H', W', C] with min(H', W') == size (bilinear, antialiased)."""
    _check_clip(frames)
    t, h, w, c = frames.shape
    new_w, new_h = scaled_size(w, h, short_side=size)
    if (new_h, new_w) == (h, w):
        return frames
    import torch  # here, not at import: decoder actors that never resize start faster

    x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, C, H, W), a view in channels-last
    y = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear",
                                        antialias=new_h < h, align_corners=False)  # uint8 kernel
    return y.permute(0, 2, 3, 1).contiguous().numpy()  # (T, H', W', C)


def _crop_fits(frames: np.ndarray, size: int) -> None:
    if size < 1 or size > min(frames.shape[1:3]):
        raise ValueError(f"crop size {size} does not fit frames of {frames.shape[1]}x{frames.shape[2]} "
                         "(H x W); crop size must be between 1 and the shorter side")


def random_crop(frames: np.ndarray, *, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` window at a uniformly random position (a view, no copy)."""
    _check_clip(frames)
    _crop_fits(frames, size)
    y = int(rng.integers(0, frames.shape[1] - size + 1))
    x = int(rng.integers(0, frames.shape[2] - size + 1))
    return frames[:, y:y + size, x:x + size]


def random_flip(frames: np.ndarray, *, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror left-right with probability ``p`` (a view, no copy)."""
    return frames[:, :, ::-1] if rng.random() < p else frames


def flip_label_permutation(labels: Sequence[str], pairs: Sequence[Sequence[str]]) -> np.ndarray:
    """int64 [len(labels)]: the label id of each class's mirror image (``pairs`` swapped, others kept).

    ``labels``: class names, index = label id. ``pairs``: [a, b] name pairs that a left-right mirror
    swaps (``data.flip_label_map``); ValueError naming an unknown or repeated name.
    """
    ids = {name: i for i, name in enumerate(labels)}
    perm = np.arange(len(labels), dtype=np.int64)  # (num_labels,): identity
    paired: set[str] = set()
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"flip label pair {list(pair)!r} must be two different label names [a, b]")
        for name in pair:
            if name not in ids:
                raise ValueError(f"flip label pair {list(pair)!r}: {name!r} is not a label; "
                                 f"labels: {list(labels)}")
            if name in paired:  # a class has one mirror image: a second pair would be ambiguous
                raise ValueError(f"flip label pair {list(pair)!r}: {name!r} is already in another pair")
            paired.add(name)
        a, b = ids[pair[0]], ids[pair[1]]
        perm[a], perm[b] = b, a
    return perm


def flip_with_label(frames: np.ndarray, label: int, *, rng: np.random.Generator,
                    permutation: Optional[np.ndarray] = None, p: float = 0.5) -> tuple[np.ndarray, int]:
    """Mirror left-right with probability ``p``; a mirrored clip's label becomes ``permutation[label]``
    (``flip_label_permutation``; None: labels unchanged; -1, unlabelled, stays). Frames: a view."""
    if rng.random() >= p:
        return frames, label
    keep = permutation is None or label < 0
    return frames[:, :, ::-1], (label if keep else int(permutation[label]))


def train_crop_flip(frames: np.ndarray, *, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random crop then random horizontal flip; a contiguous uint8 [T, size, size, C] copy."""
    return np.ascontiguousarray(random_flip(random_crop(frames, size=size, rng=rng), rng=rng))


def crop_corners(height: int, width: int, *, size: int, num_crops: int) -> list[tuple[int, int]]:
    """Top-left (y, x) of ``num_crops`` squares spread evenly along the longer side, centred across."""
    if size < 1 or size > min(height, width):
        raise ValueError(f"crop size {size} does not fit frames of {height}x{width} "
                         "(H x W); crop size must be between 1 and the shorter side")
    if num_crops < 1:
        raise ValueError(f"num_crops={num_crops!r} must be >= 1")
    slack_y, slack_x = height - size, width - size
    fractions = [0.5] if num_crops == 1 else np.linspace(0.0, 1.0, num_crops)  # along the long side
    if width >= height:  # landscape: left .. right, centred in y
        return [(slack_y // 2, int(round(f * slack_x))) for f in fractions]
    return [(int(round(f * slack_y)), slack_x // 2) for f in fractions]  # portrait: top .. bottom


def spatial_crops(frames: np.ndarray, *, size: int, num_crops: int) -> np.ndarray:
    """uint8 [num_crops, T, size, size, C]: squares spread evenly along the longer side."""
    _check_clip(frames)
    corners = crop_corners(frames.shape[1], frames.shape[2], size=size, num_crops=num_crops)
    return np.stack([frames[:, y:y + size, x:x + size] for y, x in corners])  # (crops, T, s, s, C)


def normalize_on_device(batch: "torch.Tensor", *, dtype: Optional["torch.dtype"] = None,
                        mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD) -> "torch.Tensor":
    """uint8 [B, T, H, W, C] on any device -> ``dtype`` (float32) [B, C, T, H, W], (x/255 - mean)/std.

    Call it on the training device so that only uint8 crosses processes and the PCIe bus.
    """
    import torch

    dtype = dtype or torch.float32
    if batch.dtype != torch.uint8 or batch.dim() != 5:
        raise ValueError(f"expected a uint8 batch [B, T, H, W, C]; got {batch.dtype} {tuple(batch.shape)}")
    c = batch.shape[-1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean {mean} and std {std} must have one value per channel ({c})")
    x = batch.permute(0, 4, 1, 2, 3).to(dtype, memory_format=torch.contiguous_format)  # (B,C,T,H,W)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=x.device, dtype=torch.float32)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=x.device, dtype=torch.float32)
    # x * 1/(255 std) - mean/std == (x/255 - mean)/std, in one fused pass per op
    return x.mul_(scale.to(dtype).view(1, c, 1, 1, 1)).add_(shift.to(dtype).view(1, c, 1, 1, 1))
