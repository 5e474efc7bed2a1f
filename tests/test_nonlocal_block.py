"""nlray.models.nonlocal_block: every instantiation x mode x subsampling against the plain formula
(outputs and gradients, float64), the identity at initialisation, the released code's N(0, 0.01) init,
time mode without subsampling, temporal groups, bad arguments."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nlray.models.nonlocal_block import INSTANTIATIONS, MODES, NonLocalBlock, nonlocal_core
from nlray.models.reference import reference_block, reference_core

SUBSAMPLING = [(False, "after"), (True, "after"), (True, "before")]


def randomise_bn(block: NonLocalBlock) -> NonLocalBlock:
    """A trained-looking block: the zero-init BN would hide every path through the operation."""
    with torch.no_grad():
        block.bn.weight.normal_()
        block.bn.bias.normal_()
        block.bn.running_mean.normal_()
        block.bn.running_var.uniform_(0.5, 2.0)
    return block


def grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, upstream)


@pytest.mark.parametrize("instantiation, mode, sub",
                         list(itertools.product(INSTANTIATIONS, MODES, SUBSAMPLING)))
def test_block_matches_the_plain_formula(instantiation, mode, sub):
    torch.manual_seed(0)
    subsample, where = sub
    block = randomise_bn(NonLocalBlock(8, instantiation=instantiation, mode=mode, subsample=subsample,
                                       subsample_where=where).double())
    x = torch.randn(2, 8, 3, 5, 6, dtype=torch.float64, requires_grad=True)  # odd H: ceil pooling
    inputs = [x, *block.parameters()]
    out, want = block(x), reference_block(block, x)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    for got, exp in zip(grads(out, inputs), grads(want, inputs)):
        torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_core_with_one_long_sequence_matches_the_plain_formula(instantiation):
    """B=1 spacetime with more threads than sequences: the CPU query split of the fused attention."""
    torch.manual_seed(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        theta = torch.randn(1, 6, 2, 17, 23, dtype=torch.float64, requires_grad=True)  # N = 782: 3 parts + pad
        phi = torch.randn(1, 6, 2, 9, 12, dtype=torch.float64, requires_grad=True)
        g = torch.randn(1, 5, 2, 9, 12, dtype=torch.float64, requires_grad=True)
        w = torch.randn(12, dtype=torch.float64, requires_grad=True)
        kw = dict(instantiation=instantiation, scale=0.3, concat_weight=w)
        out, want = nonlocal_core(theta, phi, g, **kw), reference_core(theta, phi, g, **kw)
        inputs = [theta, phi, g] + ([w] if instantiation == "concatenation" else [])
        torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
        for got, exp in zip(grads(out, inputs), grads(want, inputs)):
            torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-10)
    finally:
        torch.set_num_threads(threads)


def test_concatenation_is_relu_of_w_f_on_the_concatenated_pair():
    """f(x_i, x_j) = ReLU(w_fᵀ[θ_i, φ_j]), C(x) = N', written out pair by pair."""
    torch.manual_seed(2)
    theta, phi, g = (torch.randn(1, 3, 1, 2, 3, dtype=torch.float64) for _ in range(3))
    w = torch.randn(6, dtype=torch.float64)
    q, k, v = (t.flatten(2)[0].T for t in (theta, phi, g))  # [N, 3]
    want = torch.stack([sum(torch.relu(w @ torch.cat([q[i], k[j]])) * v[j] for j in range(6)) / 6
                        for i in range(6)])  # [N, 3]
    out = nonlocal_core(theta, phi, g, instantiation="concatenation", concat_weight=w)
    torch.testing.assert_close(out.flatten(2)[0].T, want)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_softmax_scale_option(instantiation):
    block = NonLocalBlock(16, instantiation=instantiation, softmax_scale=True)
    d = 16 if instantiation == "gaussian" else 8  # channels of θᵀφ
    assert block.scale == pytest.approx(d ** -0.5)
    assert NonLocalBlock(16, instantiation=instantiation).scale == 1.0  # the paper: unscaled
    block = randomise_bn(block.double())
    x = torch.randn(1, 16, 2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(block(x), reference_block(block, x))


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_a_new_block_is_exactly_the_identity(instantiation):
    torch.manual_seed(3)
    block = NonLocalBlock(12, instantiation=instantiation)
    assert torch.all(block.bn.weight == 0) and torch.all(block.bn.bias == 0)
    x = torch.randn(2, 12, 4, 6, 6)
    assert torch.equal(block(x), x)  # training mode
    assert torch.equal(block.eval()(x), x)


def test_embeddings_are_half_the_channels_with_he_init():
    block = NonLocalBlock(512)
    for conv in (block.theta, block.phi, block.g):
        assert conv.weight.shape == (256, 512, 1, 1, 1)
    assert block.out.weight.shape == (512, 256, 1, 1, 1)
    fan_out = 256
    assert block.theta.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
    assert NonLocalBlock(512, instantiation="gaussian").theta is None
    assert NonLocalBlock(512, inner_channels=64).g.out_channels == 64


@pytest.mark.parametrize("mode", ["spacetime", "time"])
def test_temporal_groups_equal_the_block_run_on_each_group(mode):
    torch.manual_seed(4)
    grouped = randomise_bn(NonLocalBlock(8, mode=mode, temporal_groups=3).double()).eval()
    single = NonLocalBlock(8, mode=mode).double().eval()
    single.load_state_dict(grouped.state_dict())
    x = torch.randn(2, 8, 6, 4, 4, dtype=torch.float64)
    want = torch.cat([single(x[:, :, i:i + 2]) for i in range(0, 6, 2)], dim=2)
    torch.testing.assert_close(grouped(x), want)
    assert not torch.allclose(single(x), want)  # groups do change the answer


def test_temporal_groups_must_divide_the_frames():
    with pytest.raises(ValueError, match=r"temporal_groups=4 .*6 frames"):
        NonLocalBlock(8, temporal_groups=4)(torch.randn(1, 8, 6, 4, 4))


@pytest.mark.parametrize("kwargs, words", [
    (dict(instantiation="cosine"), ["cosine", "gaussian", "embedded_gaussian", "dot_product", "concatenation"]),
    (dict(mode="spacetimes"), ["spacetimes", "spacetime", "space", "time"]),
    (dict(subsample_where="during"), ["during", "after", "before"]),
    (dict(temporal_groups=0), ["temporal_groups=0"]),
])
def test_bad_arguments_name_the_value_and_the_choices(kwargs, words):
    with pytest.raises(ValueError) as err:
        NonLocalBlock(8, **kwargs)
    for word in words:
        assert word in str(err.value)


def test_bfloat16_is_close_to_float64():
    torch.manual_seed(5)
    for inst in INSTANTIATIONS:
        block = randomise_bn(NonLocalBlock(16, instantiation=inst)).eval()
        x = torch.randn(1, 16, 2, 8, 8)
        want = reference_block(block.double(), x.double())
        got = block.bfloat16()(x.bfloat16())
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.double(), want, rtol=0.05, atol=0.15)


def test_block_is_a_module_with_parameters_only_where_the_paper_has_them():
    names = {n for n, _ in NonLocalBlock(8, instantiation="concatenation").named_parameters()}
    assert names == {"theta.weight", "theta.bias", "phi.weight", "phi.bias", "g.weight", "g.bias",
                     "concat_weight", "out.weight", "bn.weight", "bn.bias"}
    assert isinstance(NonLocalBlock(8).bn, nn.BatchNorm3d)


@pytest.mark.parametrize("instantiation, mode, batch", [
    (i, m, b) for i in ("gaussian", "embedded_gaussian") for m in MODES for b in (1, 2)])
def test_softmax_instantiations_run_on_the_fused_kernel(instantiation, mode, batch):
    """No silent fallback to the math kernel (which would materialise N×N'), forward or backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    block = randomise_bn(NonLocalBlock(16, instantiation=instantiation, mode=mode, temporal_groups=2))
    x = torch.randn(batch, 16, 4, 16, 16, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if the fused kernel cannot take the inputs
        block(x).square().sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("where", ["after", "before"])
def test_time_mode_does_not_subsample(where):
    """Each location's keys are its own T frames: the plain formula on unpooled θ, φ, g, whatever subsample says."""
    torch.manual_seed(6)
    block = randomise_bn(NonLocalBlock(8, mode="time", subsample=True, subsample_where=where).double())
    x = torch.randn(2, 8, 3, 5, 6, dtype=torch.float64)
    theta, phi, g = (F.conv3d(x, conv.weight, conv.bias) for conv in (block.theta, block.phi, block.g))
    y = reference_core(theta, phi, g, instantiation="embedded_gaussian", mode="time")  # [2, 4, 3, 5, 6]
    want = x + block.bn(F.conv3d(y, block.out.weight))
    torch.testing.assert_close(block(x), want, rtol=1e-10, atol=1e-10)
    assert not block.subsample and "subsample=False" in repr(block)


def test_time_mode_refuses_subsampled_keys():
    theta = torch.randn(1, 4, 3, 6, 6)
    pooled = torch.randn(1, 4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"mode='time'.*\(3, 3, 3\).*\(3, 6, 6\)"):
        nonlocal_core(theta, pooled, pooled, instantiation="embedded_gaussian", mode="time")


def test_init_std_draws_the_released_codes_small_gaussians():
    torch.manual_seed(7)
    block = NonLocalBlock(512, init_std=0.01)
    for conv in (block.theta, block.phi, block.g, block.out):
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.02)
        assert abs(conv.weight.mean().item()) < 1e-3
        assert conv.bias is None or torch.all(conv.bias == 0)
    assert torch.all(block.bn.weight == 0) and torch.all(block.bn.bias == 0)  # still the identity
    x = torch.randn(1, 512, 2, 4, 4)
    assert torch.equal(block(x), x)
    assert "init_std=0.01" in repr(block)
    with pytest.raises(ValueError, match=r"init_std=-0.01 must be >= 0"):
        NonLocalBlock(8, init_std=-0.01)


def attention_at_init(*, init_std: float, softmax_scale: bool) -> tuple[float, float, int]:
    """A res4 block (C=1024, 4x14x14: 784 queries, 196 keys) on relu(N(0, 1)): the mean over queries
    of the largest softmax weight, the mean entropy, and the number of keys. Written out from θ, φ."""
    torch.manual_seed(0)
    block = NonLocalBlock(1024, init_std=init_std, softmax_scale=softmax_scale)
    x = torch.relu(torch.randn(1, 1024, 4, 14, 14))
    with torch.no_grad():
        q = F.conv3d(x, block.theta.weight, block.theta.bias).flatten(2)[0].T  # [784, 512]
        phi = F.max_pool3d(F.conv3d(x, block.phi.weight, block.phi.bias), (1, 2, 2))  # [1, 512, 4, 7, 7]
        k = phi.flatten(2)[0].T  # [196, 512]
        scale = 512 ** -0.5 if softmax_scale else 1.0
        p = torch.softmax(scale * q @ k.T, dim=-1)  # [784, 196]
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)  # [784]
    return p.max(-1).values.mean().item(), entropy.mean().item(), p.shape[1]


def test_he_init_gives_peaked_attention_the_released_init_a_uniform_one():
    """Measured: He, no scale: mean largest weight 0.93, entropy 0.18 of log 196 = 5.278 (each query sees
    about one key); N(0, 0.01) and the (C/2)^-0.5 scale: 0.0055 (1/196 = 0.0051), entropy 5.2777."""
    top, entropy, keys = attention_at_init(init_std=0.0, softmax_scale=False)
    assert keys == 196
    assert top > 0.5 and entropy < 0.25 * math.log(keys)
    top, entropy, keys = attention_at_init(init_std=0.01, softmax_scale=True)
    assert top < 2 / keys and entropy > 0.95 * math.log(keys)
