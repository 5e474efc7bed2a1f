"""nlray.models.resnet3d / build_model: docs/paper.md Table 1 sizes, parameter counts, I3D masks, non-local
placements, frame-count-free weights, activation checkpointing and frozen BN; the released code's pools,
inits and fully convolutional test head."""
import dataclasses

import pytest
import torch
from torch import nn

from nlray.config import ModelConfig, load_config
from nlray.models import (FrozenBatchNorm3d, NonLocalBlock, ResNet3D, build_model, c2d_resnet,
                          freeze_batchnorm, i3d3x3x3_resnet, i3d_resnet)

# docs/paper.md Table 1, R50 on a 32x224x224 clip: (C, T, H, W) after each row.
TABLE_1 = {"conv1": (64, 16, 112, 112), "pool1": (64, 8, 56, 56), "layer1": (256, 8, 56, 56),
           "pool2": (256, 4, 56, 56), "layer2": (512, 4, 28, 28), "layer3": (1024, 4, 14, 14),
           "layer4": (2048, 4, 7, 7)}


def meta_model(preset: str, *overrides: str) -> ResNet3D:
    with torch.device("meta"):
        return build_model(load_config(preset, list(overrides)).model, num_classes=400)


def stage_shapes(model: nn.Module, clip: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))) for name in TABLE_1]
    model(torch.empty(1, 3, *clip, device="meta"))
    for h in hooks:
        h.remove()
    return shapes


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset, overrides", [
    ("c2d_r50_32f", ()), ("i3d_r50_32f", ()), ("i3d3x3x3_r50_32f", ()), ("nl_i3d_r50_32f", ()),
    ("c2d_r101_32f", ())])
def test_stage_outputs_match_table_1(preset, overrides):
    assert stage_shapes(meta_model(preset, *overrides), (32, 224, 224)) == TABLE_1


def test_caffe2_pools_leave_res2_at_55_as_the_released_code():
    """resnet_video_org.py: pool1 2x3x3 stride 2 without padding, 112 -> 55; res3 on is Table 1's again."""
    shapes = stage_shapes(meta_model("nl_i3d_r50_32f,caffe2"), (32, 224, 224))
    assert shapes["pool1"] == (64, 8, 55, 55) and shapes["layer1"] == (256, 8, 55, 55)
    assert shapes["pool2"] == (256, 4, 55, 55)
    assert {k: shapes[k] for k in ("conv1", "layer2", "layer3", "layer4")} == {
        k: TABLE_1[k] for k in ("conv1", "layer2", "layer3", "layer4")}
    assert stage_shapes(meta_model("nl_i3d_r50_32f"), (32, 224, 224))["layer1"] == (256, 8, 56, 56)  # paper


def test_128_frames_keep_16_frames_at_res3_as_the_paper_says():
    shapes = stage_shapes(meta_model("nl_i3d_r50_128f"), (128, 224, 224))
    assert shapes["layer2"] == (512, 16, 28, 28)  # 16x28x28 = 12,544 positions


@pytest.mark.parametrize("preset, millions", [("nl_i3d_r50_32f", 35.4), ("c2d_r101_32f", 43.2)])
def test_parameter_counts_match_the_published_ones(preset, millions):
    assert n_params(meta_model(preset)) / 1e6 == pytest.approx(millions, rel=0.02)


def temporal_kernels(model: ResNet3D, conv: str) -> list[tuple[int, ...]]:
    return [tuple(getattr(b, conv).weight.shape[2] for b in stage.blocks) for stage in model.stages()]


def test_i3d_masks_are_caffe2s():
    caffe2 = [(3, 3, 3), (3, 1, 3, 1), (3, 1, 3, 1, 3, 1), (1, 3, 1)]
    i3d = meta_model("i3d_r50_32f")
    assert i3d.conv1.weight.shape[2:] == (5, 7, 7)
    assert temporal_kernels(i3d, "conv1") == caffe2 and set(sum(temporal_kernels(i3d, "conv2"), ())) == {1}
    i3d333 = meta_model("i3d3x3x3_r50_32f")
    assert temporal_kernels(i3d333, "conv2") == caffe2 and set(sum(temporal_kernels(i3d333, "conv1"), ())) == {1}
    c2d = meta_model("c2d_r50_32f")
    assert c2d.conv1.weight.shape[2:] == (1, 7, 7)
    assert all(m.kernel_size[0] == 1 for m in c2d.modules() if isinstance(m, nn.Conv3d))
    r101 = temporal_kernels(meta_model("i3d_r101_32f"), "conv1")
    assert r101[2] == (3, 1) * 11 + (3,) and r101[3] == (1, 3, 1)


def nonlocal_positions(model: ResNet3D) -> list[tuple[int, int]]:
    return [(stage_no, int(i)) for stage_no, stage in zip((2, 3, 4, 5), model.stages()) for i in stage.nl_blocks]


@pytest.mark.parametrize("preset, want", [
    ("nl_c2d_r50_32f_1block", [(4, 4)]),  # just before the last of res4's 6 blocks
    ("nl_c2d_r50_32f", [(3, 1), (3, 3), (4, 1), (4, 3), (4, 5)]),
    ("nl_c2d_r50_32f_10block", [(3, i) for i in range(4)] + [(4, i) for i in range(6)]),
    ("nl_i3d_r101_32f", [(3, 1), (3, 3), (4, 6), (4, 13), (4, 20)]),
    ("nl_c2d_r101_32f_1block", [(4, 21)]),
])
def test_nonlocal_placements_follow_the_paper(preset, want):
    model = meta_model(preset)
    assert nonlocal_positions(model) == want
    channels = {3: 512, 4: 1024}
    for stage_no, i in want:
        block = model.stages()[stage_no - 2].nl_blocks[str(i)]
        assert isinstance(block, NonLocalBlock) and block.out.out_channels == channels[stage_no]


def test_ten_blocks_in_r101_and_explicit_placements():
    assert len(nonlocal_positions(meta_model("nl_c2d_r101_32f_10block"))) == 10
    model = meta_model("c2d_r50_32f", "model.nonlocal_placement=[[2,0],[5,2]]")
    assert nonlocal_positions(model) == [(2, 0), (5, 2)]


@pytest.mark.parametrize("placement, words", [
    ([[6, 0]], ["stage 6", "[2, 3, 4, 5]"]), ([[4, 6]], ["res4", "0..5"]), ([[3, 1], [3, 1]], ["repeats"])])
def test_bad_placements_name_the_pair(placement, words):
    with pytest.raises(ValueError) as err:
        c2d_resnet(nonlocal_placement=placement, width=8)
    assert all(w in str(err.value) for w in words)


def test_unknown_options_name_the_allowed_values():
    with pytest.raises(ValueError, match="pool_variant='odd'.*paper.*caffe2"):
        c2d_resnet(pool_variant="odd", width=8)
    with pytest.raises(ValueError, match=r"depth=34.*\[50, 101\]"):
        c2d_resnet(depth=34, width=8)
    with pytest.raises(ValueError, match="no placement table for 3"):
        c2d_resnet(nonlocal_blocks=3, width=8)
    with pytest.raises(ValueError, match="num_classes=0"):
        build_model(ModelConfig(), num_classes=0)
    with pytest.raises(ValueError, match="test_head='fc'.*pool.*conv"):
        c2d_resnet(test_head="fc", width=8)
    with pytest.raises(ValueError, match=r"fc_init_std=-0.1 must be >= 0"):
        c2d_resnet(fc_init_std=-0.1, width=8)


def small(**kwargs) -> ResNet3D:
    kw = dict(stage_depths=(1, 2, 1, 1), width=4, num_classes=7, nonlocal_placement=[[3, 1], [4, 0]])
    return i3d_resnet(**{**kw, **kwargs})


def test_a_32_frame_state_dict_loads_into_a_128_frame_model():
    short, long = meta_model("nl_i3d_r50_32f"), meta_model("nl_i3d_r50_128f")
    assert {k: v.shape for k, v in short.state_dict().items()} == {k: v.shape for k, v in long.state_dict().items()}
    torch.manual_seed(0)
    a = small().eval()
    b = small(res3_temporal_groups=2).eval()
    b.load_state_dict(a.state_dict())  # strict
    assert b(torch.randn(1, 3, 32, 32, 32)).shape == (1, 7)
    assert a(torch.randn(2, 3, 8, 32, 32)).shape == (2, 7)


def test_build_model_builds_the_architecture_only():
    cfg = load_config("demo")
    models = [build_model(cfg.model, num_classes=6), build_model(dataclasses.replace(cfg.model, num_classes=6),
                                                                 num_classes=6)]
    shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in models]
    assert shapes[0] == shapes[1]
    assert models[0].fc.out_features == 6 and models[0].dropout.p == cfg.model.dropout
    long_cfg = load_config("demo_128f")
    full = build_model(long_cfg.model, num_classes=6, activation_checkpointing=True)
    assert full.layer1.activation_checkpointing
    # freezing BN is the trainer's step (train.freeze_bn), not the builder's: the model is unchanged
    assert any(isinstance(m, nn.BatchNorm3d) for m in full.modules())
    assert not any(isinstance(m, nn.BatchNorm3d) for m in freeze_batchnorm(full).modules())
    assert not build_model(ModelConfig(), num_classes=3).layer1.activation_checkpointing
    assert i3d_resnet(width=8).dropout.p == 0.5  # the paper's default


def test_the_package_docstring_example_runs():
    import doctest

    import nlray.models

    result = doctest.testmod(nlray.models, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0


def test_activation_checkpointing_changes_nothing_but_memory():
    torch.manual_seed(1)
    plain = small(nonlocal_options=dict(instantiation="dot_product")).double().train()
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, NonLocalBlock):
                m.bn.weight.normal_()
    ckpt = small(nonlocal_options=dict(instantiation="dot_product"), activation_checkpointing=True).double().train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 32, 32, dtype=torch.float64)
    outs = []
    for model in (plain, ckpt):
        torch.manual_seed(2)  # same dropout mask
        out = model(x)
        out.square().sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    for (name, b), c in zip(plain.named_buffers(), ckpt.buffers()):
        torch.testing.assert_close(b, c, msg=name)  # BN statistics updated once, not twice


def test_frozen_batchnorm_is_a_fixed_affine_with_nothing_to_train():
    torch.manual_seed(3)
    model = small(dropout=0.0).train()
    for _ in range(2):  # move the running statistics away from their defaults
        model(torch.randn(2, 3, 8, 32, 32))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.normal_()
                m.bias.normal_()
    model.eval()
    x = torch.randn(2, 3, 8, 32, 32)
    want, state = model(x), model.state_dict()
    n_bn = sum(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    frozen = freeze_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in frozen.modules())
    assert sum(isinstance(m, FrozenBatchNorm3d) for m in frozen.modules()) == n_bn == 22  # 3/block+4+1+2 NL
    assert not [n for n, _ in frozen.named_parameters() if "bn" in n or "downsample.1" in n]
    torch.testing.assert_close(frozen.train()(x), want, rtol=1e-5, atol=1e-5)  # train mode: still fixed
    assert frozen.state_dict().keys() == state.keys()
    fresh = small()
    fresh.load_state_dict(frozen.state_dict())  # frozen checkpoint -> trainable model
    freeze_batchnorm(small()).load_state_dict(state)  # and back


def test_builders_make_the_three_architectures():
    for builder, conv1_t in ((c2d_resnet, 1), (i3d_resnet, 5), (i3d3x3x3_resnet, 5)):
        model = builder(width=8, stage_depths=(1, 1, 1, 1), num_classes=3)
        assert model.conv1.kernel_size == (conv1_t, 7, 7) and model.conv1.stride == (2, 2, 2)
        assert model.eval()(torch.randn(1, 3, 8, 32, 32)).shape == (1, 3)


def test_paper_presets_and_the_caffe2_overlay_reach_the_model():
    nl = meta_model("nl_i3d_r50_32f")
    block = nl.layer3.nl_blocks["1"]
    assert nl.test_head == "conv" and block.init_std == 0.01 and block.scale == pytest.approx(512 ** -0.5)
    assert meta_model("c2d_r50_32f").test_head == "conv" and meta_model("nl_i3d_r50_128f").test_head == "conv"
    demo = build_model(load_config("demo").model, num_classes=6)
    assert demo.test_head == "pool" and demo.layer2.nl_blocks["0"].init_std == 0.01
    caffe2 = build_model(load_config("demo,caffe2").model, num_classes=6)
    assert caffe2.pool1.padding == (0, 0, 0) and caffe2.pool1.kernel_size == (2, 3, 3)
    assert caffe2.layer2.nl_blocks["0"].subsample_where == "before"
    assert all(torch.all(b.bn3.weight == 0) for st in caffe2.stages() for b in st.blocks)
    assert torch.all(caffe2.fc.bias == 0) and caffe2.fc.weight.std().item() < 0.02


def test_zero_init_residual_starts_every_residual_block_at_its_shortcut():
    """Caffe2's BN_INIT_GAMMA 0: with the last BN's gamma at 0 a residual block is relu(shortcut(x))."""
    torch.manual_seed(4)
    model = small(zero_init_residual=True).eval()
    blocks = [b for stage in model.stages() for b in stage.blocks]
    assert [b.downsample is None for b in blocks] == [False, False, True, False, False]
    for block in blocks:
        assert torch.all(block.bn3.weight == 0) and torch.all(block.bn1.weight == 1)
        x = torch.relu(torch.randn(1, block.conv1.in_channels, 2, 8, 8))
        shortcut = x if block.downsample is None else block.downsample(x)
        torch.testing.assert_close(block(x), torch.relu(shortcut))
    assert all(torch.all(b.bn3.weight == 1) for st in small().stages() for b in st.blocks)  # default: off


def test_fc_init_std_draws_the_classifier_from_a_small_gaussian():
    torch.manual_seed(5)
    model = i3d_resnet(width=8, stage_depths=(1, 1, 1, 1), num_classes=400, fc_init_std=0.01)
    assert model.fc.weight.shape == (400, 256)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.02) and torch.all(model.fc.bias == 0)
    default = i3d_resnet(width=8, stage_depths=(1, 1, 1, 1), num_classes=400).fc
    assert not torch.all(default.bias == 0)  # nn.Linear's own init: uniform(±1/sqrt(256))
    assert default.weight.abs().max().item() <= 256 ** -0.5


def conv_head_model() -> ResNet3D:
    torch.manual_seed(6)
    return small(test_head="conv", dropout=0.0, num_classes=5).double().eval()


def head_output(model: ResNet3D, features: torch.Tensor) -> torch.Tensor:
    """The model's output when its backbone yields ``features`` (a res5 map of the size a test needs)."""
    model.forward_features = lambda _clip: features  # instance attribute: shadows the method
    with torch.no_grad():
        return model(torch.empty(0))


def softmax_of_fc(model: ResNet3D, pooled: torch.Tensor) -> torch.Tensor:
    """[B, C] -> [B, classes]: the classifier and its softmax, written out."""
    return torch.softmax(pooled @ model.fc.weight.T + model.fc.bias, dim=-1)


@pytest.mark.parametrize("size", [7, 2])
def test_conv_head_on_a_map_no_larger_than_the_window_is_softmax_of_fc_of_the_mean(size):
    """One pooled position (a 7x7 res5, or the demo's 2x2 with the window clamped): the pool head's softmax."""
    model = conv_head_model()
    features = torch.randn(2, 128, 2, size, size, dtype=torch.float64)  # res5 of small(): 32·4 channels
    out = head_output(model, features)
    want = softmax_of_fc(model, features.mean(dim=(2, 3, 4)))
    assert out.dtype == torch.float64
    torch.testing.assert_close(torch.softmax(out, dim=-1), want)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, dtype=torch.float64))  # log-probabilities


def test_conv_head_on_9x9_averages_the_softmax_over_3x3_windows():
    model = conv_head_model()
    features = torch.randn(2, 128, 2, 9, 9, dtype=torch.float64)
    windows = [features[..., i:i + 7, j:j + 7].mean(dim=(2, 3, 4)) for i in range(3) for j in range(3)]
    want = torch.stack([softmax_of_fc(model, w) for w in windows]).mean(0)  # [2, 5]
    torch.testing.assert_close(torch.softmax(head_output(model, features), dim=-1), want)
    assert not torch.allclose(want, softmax_of_fc(model, features.mean(dim=(2, 3, 4))))  # the heads differ here


def test_conv_head_is_for_evaluation_only_training_keeps_the_pooled_logits():
    model = conv_head_model()
    features = torch.randn(2, 128, 2, 9, 9, dtype=torch.float64)
    want = features.mean(dim=(2, 3, 4)) @ model.fc.weight.T + model.fc.bias  # global average, fc
    pool = small(dropout=0.0, num_classes=5).double().eval()  # test_head="pool", the default
    pool.load_state_dict(model.state_dict())
    torch.testing.assert_close(head_output(model.train(), features), want)  # dropout 0
    torch.testing.assert_close(head_output(pool, features), want)


def test_conv_head_model_runs_end_to_end_on_a_clip():
    model = conv_head_model().float()
    out = model(torch.randn(1, 3, 8, 64, 64))  # res5 2x2
    assert out.shape == (1, 5) and (out <= 0).all()  # log-probabilities
    torch.testing.assert_close(out.exp().sum(), torch.tensor(1.0))
