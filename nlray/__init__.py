"""nlray: Non-local Neural Networks (Wang et al., CVPR 2018) for video, trained on Ray, tracked in MLflow.

Where things are (README "Where things are" has a line a package):
    nlray/models/nonlocal_block.py   the non-local operation (theta^T phi, the block, its zero-init BN)
    nlray/models/resnet_layout.py    C2D / I3D ResNet-50/101 as data (docs/paper.md Table 1), non-local placements
    nlray/models/resnet3d.py         the ResNet modules built from those tables
    nlray/data/                      storage, manifests, samplers, decoding, the Ray Data pipeline
    nlray/train/                     the driver, the per-worker loop, checkpoints, evaluation
    nlray/tracking.py                everything MLflow (plots: nlray/plots.py)
    nlray/config_fields.py           every setting, declared once; presets in nlray/configs/
"""

__version__ = "0.1.0"
