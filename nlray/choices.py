"""The allowed values of every string or enumerated setting, in one torch-free module.

The config validates against these, the models and decoders check their keyword arguments against
them, and the jobs (benchmarks, --help) list them from here: one list per setting, never a copy.
"""
from __future__ import annotations

ARCHS = ("c2d", "i3d", "i3d3x3x3")  # 1xkxk convs | I3D 3x1x1 (Table 1) | the 3x3 inflated
STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}  # ResNet depth -> residual blocks of res2..res5
DEPTHS = tuple(STAGE_DEPTHS)
NONLOCAL_BLOCKS = (0, 1, 5, 10)  # the paper's placements (docs/paper.md "Placement")
INSTANTIATIONS = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")  # docs/paper.md "Instantiations"
SOFTMAX_INSTANTIATIONS = ("gaussian", "embedded_gaussian")  # C(x) = sum_j f: a softmax over j
NL_MODES = ("spacetime", "space", "time")  # Table 2d
SUBSAMPLE_WHERE = ("after", "before")  # paper: pool phi/g outputs | Caffe2: pool x before them
POOL_VARIANTS = ("paper", "caffe2")  # pool1 3x3x3 / pool2 3x1x1 | 2x3x3 / 2x1x1
TEMPORAL_PADDING = ("zeros", "replicate")
DECODE_BACKENDS = ("pyav", "decord")
SYNTHETIC_SETS = ("demo", "tiny", "longrange")  # nlray.data.synthetic SPECS: DEMO_SPEC | TINY_SPEC | long-range relation
TEST_HEADS = ("pool", "conv")  # average the res5 map then classify | released code's fully convolutional test
PRETRAINED_NAMES = ("none", "imagenet")  # model.pretrained: no weights | torchvision's; anything else is a path/URI
# Why a video was dropped (nlray/data/badvideo.py); the last four are the limits of untrusted input
# (README "Security"): a row outside the dataset root, too many bytes, a frame too large or too thin, a
# packet flood.
BAD_VIDEO_REASONS = ("missing", "empty", "truncated", "undecodable", "unreachable", "timeout",
                     "outside_root", "too_large", "frame_size", "too_many_packets")


def check_choice(name: str, value: object, allowed: tuple) -> None:
    """ValueError naming the argument, the bad value and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


def check_stage_depths(depths: object) -> None:
    """ValueError unless ``depths`` is four residual-block counts >= 1 (res2..res5)."""
    if not isinstance(depths, (list, tuple)) or len(depths) != 4 or min(depths) < 1:
        raise ValueError(f"stage_depths={depths!r} must be 4 depths >= 1 (res2..res5)")
