"""The non-local operation exactly as the paper writes it, with the N×N' matrix of f materialised.

This is the yardstick for ``nlray.models.nonlocal_block`` (tests compare outputs and gradients with
it; jobs/bench_nonlocal.py measures the shipped code against it). It is written independently of the
shipped code: positions are flattened once over T·H·W, and which pairs (i, j) interact is a boolean
[N, N'] mask built from coordinates. Memory grows with N·N': not for training.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nlray.choices import SOFTMAX_INSTANTIATIONS as SOFTMAX


def allowed_pairs(query_size: tuple[int, int, int], key_size: tuple[int, int, int], *, mode: str,
                  temporal_groups: int = 1, device: Optional[torch.device] = None) -> Optional[Tensor]:
    """[N, N'] bool: key positions j that query position i sums over; None when it is all of them."""
    if mode == "spacetime" and temporal_groups == 1:
        return None
    (t, h, w), (tk, hk, wk) = query_size, key_size

    def coords(tt: int, hh: int, ww: int) -> tuple[Tensor, ...]:
        grid = torch.meshgrid(*(torch.arange(n, device=device) for n in (tt, hh, ww)), indexing="ij")
        return tuple(c.flatten() for c in grid)  # three [tt·hh·ww] coordinate vectors

    (qt, qh, qw), (kt, kh, kw) = coords(t, h, w), coords(tk, hk, wk)
    span = t // temporal_groups
    mask = (qt // span)[:, None] == (kt // span)[None, :]  # same group of frames
    if mode == "space":
        mask &= qt[:, None] == kt[None, :]  # same frame
    elif mode == "time":  # same location (time mode never subsamples its keys spatially)
        if (hk, wk) != (h, w):
            raise ValueError(f"time mode: key map {key_size} must have the query map's {query_size} H and W")
        mask &= (qh[:, None] == kh[None, :]) & (qw[:, None] == kw[None, :])
    return mask


def plain_pairwise(q: Tensor, k: Tensor, v: Tensor, *, instantiation: str, scale: float = 1.0,
                   concat_weight: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
    """q [B, N, Cq], k [B, N', Cq], v [B, N', Cv] -> [B, N, Cv] through the [B, N, N'] matrix of f."""
    if instantiation == "concatenation":  # w_fᵀ[θ_i, φ_j] = w_θᵀθ_i + w_φᵀφ_j
        w_q, w_k = concat_weight.split([q.shape[-1], k.shape[-1]])
        f = torch.relu((q @ w_q)[:, :, None] + (k @ w_k)[:, None, :])  # [B, N, 1] + [B, 1, N'] -> [B, N, N']
    else:
        f = q @ k.transpose(1, 2)  # θᵀφ: [B, N, Cq] x [B, Cq, N'] -> [B, N, N']
    if instantiation in SOFTMAX:  # f = exp(θᵀφ), C(x) = Σ_j f: a softmax over j
        if scale != 1.0:
            f = f * scale
        if mask is not None:
            f = f.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(f, dim=-1)  # [B, N, N']
    elif mask is None:  # C(x) = N', the number of positions j
        weights = f / k.shape[1]
    else:
        weights = f * mask / mask.sum(dim=-1, keepdim=True)  # [B, N, N']
    return weights @ v  # [B, N, N'] x [B, N', Cv] -> [B, N, Cv]


def reference_core(theta: Tensor, phi: Tensor, g: Tensor, *, instantiation: str, mode: str = "spacetime",
                   scale: float = 1.0, temporal_groups: int = 1,
                   concat_weight: Optional[Tensor] = None) -> Tensor:
    """Same contract as ``nonlocal_block.nonlocal_core``: [B, Cq|Cv, T, H(') , W(')] maps -> [B, Cv, T, H, W]."""
    b, cv = g.shape[:2]
    size = tuple(theta.shape[-3:])
    mask = allowed_pairs(size, tuple(phi.shape[-3:]), mode=mode, temporal_groups=temporal_groups,
                         device=theta.device)
    q = theta.flatten(2).transpose(1, 2)  # [B, Cq, T, H, W] -> [B, T·H·W, Cq]
    k = phi.flatten(2).transpose(1, 2)  # [B, Cq, T, H', W'] -> [B, T·H'·W', Cq]
    v = g.flatten(2).transpose(1, 2)  # [B, Cv, T, H', W'] -> [B, T·H'·W', Cv]
    y = plain_pairwise(q, k, v, instantiation=instantiation, scale=scale, concat_weight=concat_weight,
                       mask=mask)
    return y.transpose(1, 2).reshape(b, cv, *size)  # [B, N, Cv] -> [B, Cv, T, H, W]


def reference_embed(block, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """θ, φ, g of a ``NonLocalBlock``'s parameters, computed here with F.conv3d / F.max_pool3d."""
    def pool(t: Tensor) -> Tensor:
        return F.max_pool3d(t, (1, 2, 2), (1, 2, 2), ceil_mode=True) if block.subsample else t

    def conv(m, t: Tensor) -> Tensor:
        return F.conv3d(t, m.weight, m.bias)

    if block.theta is None:  # gaussian: raw features
        theta, phi = x, pool(x)
    elif block.subsample_where == "before":  # Caffe2: pool x, then embed
        theta, phi = conv(block.theta, x), conv(block.phi, pool(x))
    else:  # paper: embed, then pool
        theta, phi = conv(block.theta, x), pool(conv(block.phi, x))
    g = conv(block.g, pool(x)) if block.subsample_where == "before" else pool(conv(block.g, x))
    return theta, phi, g


def reference_block(block, x: Tensor) -> Tensor:
    """z = BN(W_z · y) + x with y from the plain formula, using ``block``'s parameters."""
    theta, phi, g = reference_embed(block, x)
    y = reference_core(theta, phi, g, instantiation=block.instantiation, mode=block.mode, scale=block.scale,
                       temporal_groups=block.temporal_groups, concat_weight=block.concat_weight)
    return x + block.bn(F.conv3d(y, block.out.weight))
