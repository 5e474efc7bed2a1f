"""Frozen BatchNorm, the long-clip recipe's (docs/paper.md "Long clips (128 frames)"): ``freeze_batchnorm``
turns every BatchNorm3d of a model into a ``FrozenBatchNorm3d``, a fixed affine map from its statistics."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenBatchNorm3d(nn.Module):
    """BatchNorm3d as a fixed affine map from its statistics: buffers only, nothing to train.

    Its state dict has BatchNorm3d's keys, so checkpoints load into either form.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm3d) -> "FrozenBatchNorm3d":
        frozen = cls(bn.num_features, bn.eps).to(device=bn.running_mean.device, dtype=bn.running_mean.dtype)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                src = getattr(bn, name)
                if src is not None:
                    getattr(frozen, name).copy_(src.detach())
        return frozen

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # [C]
        shift = self.bias - self.running_mean * scale  # [C]
        shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast over [B, C, T, H, W]
        return x * scale.to(x.dtype).view(shape) + shift.to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm3d by a FrozenBatchNorm3d in place (the paper's 128-frame recipe)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm3d):
                setattr(parent, name, FrozenBatchNorm3d.from_batchnorm(child))
    return model
