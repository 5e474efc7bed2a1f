"""nlray: Non-local Neural Networks (Wang et al., CVPR 2018) for video, trained on Ray, tracked in MLflow.

Where things are:
    nlray/models/nonlocal_block.py   the non-local operation (theta^T phi, the block, its zero-init BN)
    nlray/models/resnet3d.py         C2D / I3D ResNet-50/101 (PAPER.md Table 1) and non-local placements
    nlray/models/inflate.py          ImageNet 2D -> 3D inflation
    nlray/data/                      storage, manifests, samplers, decoding, the Ray Data pipeline
    nlray/train/                     the per-worker loop, the TorchTrainer, checkpoints, evaluation
    nlray/tracking.py                everything MLflow
    nlray/config.py                  typed config + presets in nlray/configs/
"""

__version__ = "0.1.0"
