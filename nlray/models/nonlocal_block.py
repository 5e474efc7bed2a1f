"""The non-local block of Wang et al., CVPR 2018 (docs/paper.md "The non-local operation").

    y_i = 1/C(x) · Σ_j f(x_i, x_j) · g(x_j)          z_i = BN(W_z · y_i) + x_i

The pairwise part never builds the N×N' matrix of f (N query positions, N' key positions after
subsampling); each instantiation has its own exact shortcut:

- gaussian / embedded_gaussian: softmax over j, i.e. attention -> fused
  ``scaled_dot_product_attention`` with the scale given explicitly (1.0 = the paper's unscaled θᵀφ);
- dot_product: C(x) = N', no softmax, so y = θ (φᵀ g) / N' by associativity: linear in positions;
- concatenation: ReLU(w_fᵀ[θ_i, φ_j]) = ReLU(a_i + b_j) with w_f split; sorting the b_j turns the sum
  over j into two suffix sums, so no [N, N'] (let alone [N, N', C]) is ever formed.

Each is checked against the plain formula in ``nlray.models.reference`` (tests and jobs/bench_nonlocal.py).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlray.choices import INSTANTIATIONS, SUBSAMPLE_WHERE, check_choice
from nlray.choices import NL_MODES as MODES

SUBSAMPLE_KERNEL = (1, 2, 2)  # max-pool of φ and g: 4x fewer key positions, same output size


def subsample(x: Tensor) -> Tensor:
    """1×2×2 max pooling; ceil mode keeps an odd last row/column (a 7×7 map -> 4×4)."""
    return F.max_pool3d(x, SUBSAMPLE_KERNEL, SUBSAMPLE_KERNEL, ceil_mode=True)


def _unchanged(x: Tensor) -> Tensor:
    return x


def pointwise_conv(x: Tensor, conv: nn.Conv3d) -> Tensor:
    """A 1×1×1 conv as one batched matmul over positions, giving a channels-last [B, C', T, H, W].

    For a channels-last input (the pairwise part's output: positions × channels) this reads it in
    place, where Conv3d would first copy it to channels-first.
    """
    b, _, t, h, w = x.shape
    xs = x.flatten(2).transpose(1, 2)  # [B, C, T·H·W] -> [B, N, C] (a view in either layout)
    weight = conv.weight.flatten(1).t().expand(b, -1, -1)  # [C', C, 1, 1, 1] -> [B, C, C']
    if conv.bias is None:
        y = torch.bmm(xs, weight)  # [B, N, C] x [B, C, C'] -> [B, N, C']
    else:
        y = torch.baddbmm(conv.bias.expand(b, xs.shape[1], -1), xs, weight)  # [B, N, C']
    return y.view(b, t, h, w, -1).permute(0, 4, 1, 2, 3)  # [B, N, C'] -> [B, C', T, H, W] (view)


# --- layout: [B, C, T, H, W] maps <-> a batch of position sequences [S, L, C] -------------------

def to_sequences(x: Tensor, *, mode: str, temporal_groups: int = 1) -> Tensor:
    """[B, C, T, H, W] -> [S, L, C]: one sequence per set of positions that interact."""
    b, c, t, h, w = x.shape
    if t % temporal_groups:
        raise ValueError(f"temporal_groups={temporal_groups} does not divide the {t} frames of the input")
    gr, tg = temporal_groups, t // temporal_groups
    x = x.reshape(b, c, gr, tg, h, w)  # [B, C, G, T/G, H, W]
    if mode == "spacetime":
        return x.permute(0, 2, 3, 4, 5, 1).reshape(b * gr, tg * h * w, c)  # -> [B·G, T/G·H·W, C]
    if mode == "space":
        return x.permute(0, 2, 3, 4, 5, 1).reshape(b * t, h * w, c)  # -> [B·T, H·W, C]
    return x.permute(0, 2, 4, 5, 3, 1).reshape(b * gr * h * w, tg, c)  # time -> [B·G·H·W, T/G, C]


def from_sequences(y: Tensor, *, mode: str, temporal_groups: int, size: tuple[int, int, int]) -> Tensor:
    """[S, L, C] -> [B, C, T, H, W], the inverse of ``to_sequences`` for a T×H×W map."""
    t, h, w = size
    gr, tg, c = temporal_groups, t // temporal_groups, y.shape[-1]
    if mode == "time":
        y = y.reshape(-1, gr, h, w, tg, c)  # [B·G·H·W, T/G, C] -> [B, G, H, W, T/G, C]
        return y.permute(0, 5, 1, 4, 2, 3).reshape(-1, c, t, h, w)  # -> [B, C, T, H, W]
    y = y.reshape(-1, gr, tg, h, w, c)  # [B·G, T/G·H·W, C] or [B·T, H·W, C] -> [B, G, T/G, H, W, C]
    return y.permute(0, 5, 1, 2, 3, 4).reshape(-1, c, t, h, w)  # -> [B, C, T, H, W]


# --- the pairwise part on sequences: q [S, L, Cq], k [S, L', Cq], v [S, L', Cv] -> [S, L, Cv] -----

def _query_parts(q: Tensor, k: Tensor, v: Tensor) -> int:
    """CPU fused attention parallelises its backward over the batch only: split long queries."""
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type != "cpu" or not needs_grad:
        return 1
    return max(1, min(torch.get_num_threads() // q.shape[0], q.shape[1] // 256))


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float = 1.0, **_: object) -> Tensor:
    """softmax_j(scale · θ_iᵀφ_j) · g_j, fused: no [L, L'] matrix is kept for the backward."""
    cv, (s, n, cq) = v.shape[-1], q.shape
    if cv != cq:  # fused kernels want one head size: pad g with zero channels, drop them after
        v = F.pad(v, (0, cq - cv))
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))  # fused kernels need it
    parts = _query_parts(q, k, v)
    if parts > 1:  # queries are independent: cut them into `parts` batch entries sharing k and v
        pad = -n % parts
        q = F.pad(q, (0, 0, 0, pad)).reshape(s * parts, (n + pad) // parts, cq)  # -> [S·P, L/P, Cq]
        k = k[:, None].expand(s, parts, *k.shape[1:]).reshape(s * parts, *k.shape[1:])  # -> [S·P, L', Cq]
        v = v[:, None].expand(s, parts, *v.shape[1:]).reshape(s * parts, *v.shape[1:])  # -> [S·P, L', Cq]
    # θᵀφ, its softmax over j and the weighted sum of g, fused in one kernel (one "head": fused
    # kernels want 4-D inputs):
    y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0]  # [S(·P), L(/P), Cq]
    return y.reshape(s, -1, cq)[:, :n, :cv]  # -> [S, L, Cv]


def dot_product_attention(q: Tensor, k: Tensor, v: Tensor, **_: object) -> Tensor:
    """(1/N') Σ_j (θ_iᵀφ_j) g_j = θ_i (φᵀ g) / N': two thin matmuls, linear in positions."""
    kv = torch.einsum("sjc,sjd->scd", k, v) / k.shape[1]  # φᵀg: [S, L', Cq] x [S, L', Cv] -> [S, Cq, Cv]
    return torch.einsum("sic,scd->sid", q, kv)  # [S, L, Cq] x [S, Cq, Cv] -> [S, L, Cv]


def concatenation_attention(q: Tensor, k: Tensor, v: Tensor, *, concat_weight: Tensor,
                            **_: object) -> Tensor:
    """(1/N') Σ_j ReLU(a_i + b_j) g_j with a = θ·w_θ, b = φ·w_φ (w_f = [w_θ, w_φ]).

    ReLU(a_i + b_j) is non-zero exactly where b_j > -a_i, a suffix of the b's in sorted order, so
    y_i = (a_i · Σ_suffix g_j + Σ_suffix b_j g_j) / N': suffix sums gathered at each i's cut.
    """
    dtype = torch.promote_types(v.dtype, torch.float32)  # sums over L' positions: at least float32
    w_q, w_k = concat_weight.to(dtype).split([q.shape[-1], k.shape[-1]])
    a = q.to(dtype) @ w_q  # [S, L, Cq] x [Cq] -> [S, L]
    b = k.to(dtype) @ w_k  # [S, L', Cq] x [Cq] -> [S, L']
    order = b.detach().argsort(dim=-1)  # [S, L']
    b_sorted = b.gather(1, order)  # [S, L']
    v_sorted = v.to(dtype).gather(1, order[..., None].expand(-1, -1, v.shape[-1]))  # [S, L', Cv]
    terms = torch.cat([v_sorted, b_sorted[..., None] * v_sorted], dim=-1)  # [S, L', 2·Cv]: g_j, b_j·g_j
    suffix = terms.flip(1).cumsum(1).flip(1)  # suffix[m] = Σ_{j >= m}: [S, L', 2·Cv]
    suffix = F.pad(suffix, (0, 0, 0, 1))  # row L' = the empty sum: [S, L'+1, 2·Cv]
    cut = torch.searchsorted(b_sorted.detach().contiguous(), -a.detach().contiguous(), right=True)  # [S, L]
    picked = suffix.gather(1, cut[..., None].expand(-1, -1, suffix.shape[-1]))  # [S, L, 2·Cv]
    sum_g, sum_bg = picked.split(v.shape[-1], dim=-1)  # [S, L, Cv] each
    return ((a[..., None] * sum_g + sum_bg) / k.shape[1]).to(v.dtype)  # [S, L, Cv]


PAIRWISE: dict[str, Callable[..., Tensor]] = {
    "gaussian": softmax_attention,
    "embedded_gaussian": softmax_attention,
    "dot_product": dot_product_attention,
    "concatenation": concatenation_attention,
}


def nonlocal_core(theta: Tensor, phi: Tensor, g: Tensor, *, instantiation: str, mode: str = "spacetime",
                  scale: float = 1.0, temporal_groups: int = 1,
                  concat_weight: Optional[Tensor] = None) -> Tensor:
    """y = 1/C(x) Σ_j f(θ_i, φ_j) g_j: θ [B, Cq, T, H, W], φ [B, Cq, T, H', W'], g [B, Cv, T, H', W'].

    Returns [B, Cv, T, H, W]. j runs over the key positions in the same frame (space), at the same
    location (time: φ, g are not subsampled, H' = H) or everywhere (spacetime), within the same group of
    T/temporal_groups frames.
    """
    check_choice("instantiation", instantiation, INSTANTIATIONS)
    check_choice("mode", mode, MODES)
    t, h, w = theta.shape[-3:]
    if mode == "time" and (phi.shape[-3:] != theta.shape[-3:] or g.shape[-3:] != theta.shape[-3:]):
        raise ValueError(f"mode='time' pairs each location with itself across frames: φ {tuple(phi.shape[-3:])} "
                         f"and g {tuple(g.shape[-3:])} must be θ's {(t, h, w)} (time mode does not subsample)")
    seq = dict(mode=mode, temporal_groups=temporal_groups)
    q, k, v = to_sequences(theta, **seq), to_sequences(phi, **seq), to_sequences(g, **seq)
    y = PAIRWISE[instantiation](q, k, v, scale=scale, concat_weight=concat_weight)  # [S, L, Cv]
    return from_sequences(y, size=(t, h, w), **seq)


class NonLocalBlock(nn.Module):
    """z = BN(W_z · y) + x, y the non-local operation; input and output [B, C, T, H, W].

    A new block is the identity (its BN's gamma starts at zero), so it can be dropped into a
    pre-trained network. ``temporal_groups`` > 1 restricts j to groups of T/groups consecutive
    frames (Caffe2's 128-frame res3 trick, not in the paper). ``mode="time"`` never subsamples:
    the keys of a location are its T frames either way, so pooling would only change the operation.
    ``init_std`` > 0 draws θ, φ, g and W_z from N(0, init_std) as the released code does (0.01);
    0 keeps the paper's He init.
    """

    def __init__(self, channels: int, *, instantiation: str = "embedded_gaussian", mode: str = "spacetime",
                 subsample: bool = True, subsample_where: str = "after", softmax_scale: bool = False,
                 temporal_groups: int = 1, inner_channels: Optional[int] = None, init_std: float = 0.0):
        super().__init__()
        check_choice("instantiation", instantiation, INSTANTIATIONS)
        check_choice("mode", mode, MODES)
        check_choice("subsample_where", subsample_where, SUBSAMPLE_WHERE)
        if temporal_groups < 1:
            raise ValueError(f"temporal_groups={temporal_groups!r} must be >= 1")
        if not init_std >= 0:
            raise ValueError(f"init_std={init_std!r} must be >= 0 (0: He init; the released code: 0.01)")
        inner = inner_channels or channels // 2  # the paper's bottleneck: C/2
        embedded = instantiation != "gaussian"  # gaussian compares raw x: no θ, φ
        self.instantiation, self.mode, self.temporal_groups = instantiation, mode, temporal_groups
        self.subsample, self.subsample_where = subsample and mode != "time", subsample_where
        self.init_std = init_std
        self.theta = nn.Conv3d(channels, inner, 1) if embedded else None
        self.phi = nn.Conv3d(channels, inner, 1) if embedded else None
        self.g = nn.Conv3d(channels, inner, 1)
        self.concat_weight = nn.Parameter(torch.empty(2 * inner)) if instantiation == "concatenation" else None
        self.out = nn.Conv3d(inner, channels, 1, bias=False)  # W_z (bias: the BN's beta)
        self.bn = nn.BatchNorm3d(channels)
        # Caffe2's USE_SCALE: 1/sqrt(d) for the d channels of θᵀφ; the paper uses no scale.
        self.scale = (inner if embedded else channels) ** -0.5 if softmax_scale else 1.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """1×1×1 convs He (docs/paper.md) or N(0, init_std) (Caffe2); BN gamma = 0, so the block starts as the identity."""
        for conv in (self.theta, self.phi, self.g, self.out):
            if conv is None:
                continue
            if self.init_std > 0:  # Caffe2's NONLOCAL.CONV_INIT_STD: small θᵀφ, near-uniform attention
                nn.init.normal_(conv.weight, std=self.init_std)
            else:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        if self.concat_weight is not None:  # w_f: a 1×1 conv from 2·C/2 channels to 1
            nn.init.normal_(self.concat_weight, std=(2.0 / self.concat_weight.numel()) ** 0.5)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """θ(x), φ(x̂), g(x̂) with x̂ subsampled after the convs (paper) or before them (Caffe2)."""
        pool = subsample if self.subsample else _unchanged
        before = self.subsample_where == "before"
        keys_in = pool(x) if before else x  # [B, C, T, H', W'] or [B, C, T, H, W]
        after = _unchanged if before else pool
        theta = self.theta(x) if self.theta is not None else x
        phi = after(self.phi(keys_in)) if self.phi is not None else pool(x)
        return theta, phi, after(self.g(keys_in))

    def forward(self, x: Tensor) -> Tensor:
        theta, phi, g = self.embed(x)
        y = nonlocal_core(theta, phi, g, instantiation=self.instantiation, mode=self.mode, scale=self.scale,
                          temporal_groups=self.temporal_groups, concat_weight=self.concat_weight)
        # W_z as a matmul: y comes channels-last from the pairwise part, and stays so (no copy)
        return x + self.bn(pointwise_conv(y, self.out))  # [B, C, T, H, W]

    def extra_repr(self) -> str:
        return (f"instantiation={self.instantiation}, mode={self.mode}, subsample={self.subsample} "
                f"({self.subsample_where}), scale={self.scale:g}, temporal_groups={self.temporal_groups}, "
                f"init_std={self.init_std:g}")
