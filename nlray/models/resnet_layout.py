"""The C2D / I3D ResNet layouts as data (docs/paper.md Table 1): stages, I3D temporal kernels, non-local
placements, pools; and the checks and look-ups over them. No torch: ``resnet3d`` builds modules from these.

Stages are named as in the paper, res2..res5 (``STAGES``); a block index counts from 0 within its stage.
"""
from __future__ import annotations

from typing import Optional, Sequence

from nlray.choices import STAGE_DEPTHS, check_choice, check_stage_depths

STAGES = (2, 3, 4, 5)  # res2..res5
EXPANSION = 4  # bottleneck output = 4 x its inner width
STAGE_WIDTH = (1, 2, 4, 8)  # inner width of res2..res5 in units of `width` (64: 64, 128, 256, 512)

# I3D temporal-kernel masks: 1 = this block's temporal conv is 3 frames wide. Each stage's pattern is
# repeated to its depth, which gives Caffe2's R50 masks exactly and alternates in R101's 23-block res4.
I3D_TEMPORAL_PATTERN = {
    2: (1,),  # res2: (1, 1, 1)
    3: (1, 0),  # res3: (1, 0, 1, 0)
    4: (1, 0),  # res4: (1, 0, 1, 0, 1, 0); R101: 1, 0, ... 1 (12 of 23)
    5: (0, 1),  # res5: (0, 1, 0)
}

# Non-local placements: (stage, index of the residual block it follows), 0-based (docs/paper.md "Placement").
NONLOCAL_PLACEMENTS = {
    (50, 1): ((4, 4),),  # just before the last residual block of res4
    (50, 5): ((3, 1), (3, 3), (4, 1), (4, 3), (4, 5)),  # every other block of res3 (2) and res4 (3)
    (50, 10): tuple((3, i) for i in range(4)) + tuple((4, i) for i in range(6)),  # every res3/res4 block
    (101, 1): ((4, 21),),  # just before the last residual block of res4
    (101, 5): ((3, 1), (3, 3), (4, 6), (4, 13), (4, 20)),  # Caffe2: res4 every 7th block
    # Not given in docs/paper.md "Placement" for R101: every res3 block as in R50, and six
    # res4 blocks spread every 4th so that, as in R50's 10, the last one follows res4's last block.
    (101, 10): tuple((3, i) for i in range(4)) + ((4, 2), (4, 6), (4, 10), (4, 14), (4, 18), (4, 22)),
}

# Max pools after conv1 and after res2: (kernel, stride, padding) as (t, h, w).
POOLS = {
    "paper": (((3, 3, 3), (2, 2, 2), (1, 1, 1)), ((3, 1, 1), (2, 1, 1), (1, 0, 0))),  # Table 1
    # released code (resnet_video_org.py): no padding anywhere, so pool1 is 112 -> 55 (res2 55×55)
    "caffe2": (((2, 3, 3), (2, 2, 2), (0, 0, 0)), ((2, 1, 1), (2, 1, 1), (0, 0, 0))),
}

# The released code's test head: pool5 averages T_res5 × 7 × 7 with stride 1 (res5 is 7×7 at a 224 crop).
HEAD_WINDOW = 7


def check_placement(placement: Sequence[Sequence[int]], depths: Sequence[int]) -> list[tuple[int, int]]:
    """[(stage, block)] validated against the stage depths; ValueError names the bad pair."""
    out = []
    for pair in placement:
        if len(pair) != 2:
            raise ValueError(f"non-local placement {list(pair)!r} must be [stage, block]")
        stage, block = int(pair[0]), int(pair[1])
        if stage not in STAGES:
            raise ValueError(f"non-local placement {[stage, block]}: stage {stage} is not one of {list(STAGES)}")
        if not 0 <= block < depths[stage - 2]:
            raise ValueError(f"non-local placement {[stage, block]}: res{stage} has blocks "
                             f"0..{depths[stage - 2] - 1}")
        out.append((stage, block))
    if len(set(out)) != len(out):
        raise ValueError(f"non-local placement {[list(p) for p in placement]} repeats a position")
    return out


def nonlocal_placement(depth: int, blocks: int) -> tuple[tuple[int, int], ...]:
    """The paper's placement of 0 / 1 / 5 / 10 non-local blocks in ResNet-``depth``."""
    if blocks == 0:
        return ()
    if (depth, blocks) not in NONLOCAL_PLACEMENTS:
        raise ValueError(f"no placement table for {blocks} non-local blocks in ResNet-{depth}; tables: "
                         f"{sorted(NONLOCAL_PLACEMENTS)} (or give an explicit [[stage, block], ...])")
    return NONLOCAL_PLACEMENTS[(depth, blocks)]


def stage_depths_for(depth: int, stage_depths: Optional[Sequence[int]] = None) -> tuple[int, ...]:
    """The depth table's stages, or an explicit override of four depths."""
    if stage_depths is not None:
        check_stage_depths(stage_depths)
        return tuple(stage_depths)
    check_choice("depth", depth, tuple(STAGE_DEPTHS))
    return STAGE_DEPTHS[depth]


def i3d_masks(depths: Sequence[int]) -> list[tuple[int, ...]]:
    """Per stage, 1 where a block gets a 3-frame kernel (I3D_TEMPORAL_PATTERN repeated to the depth)."""
    return [tuple(I3D_TEMPORAL_PATTERN[st][i % len(I3D_TEMPORAL_PATTERN[st])] for i in range(d))
            for st, d in zip(STAGES, depths)]


def temporal_kernels(depths: Sequence[int], inflate: Optional[int]) -> list[list[tuple[int, int]]]:
    """Per stage, per block: the (first, middle) temporal kernel, 3 on the conv ``inflate`` names (0 the
    first 1×1, 1 the 3×3; None: neither, C2D) where the I3D mask has a 1, else 1."""
    return [[tuple(3 if inflate == pos and m else 1 for pos in (0, 1)) for m in stage] for stage in i3d_masks(depths)]
