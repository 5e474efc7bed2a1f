"""nlray.models.inflate: on a clip of identical frames the inflated C2D / I3D networks give torchvision's
2D ResNet logits (random weights, nothing downloaded); clear errors for weights of another network."""
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from nlray.config import ModelConfig
from nlray.models import build_model, c2d_resnet, i3d3x3x3_resnet, i3d_resnet, inflate_from_2d
from nlray.train.weights import load_pretrained


def calibrated(net2d: nn.Module, size: int = 64) -> nn.Module:
    """Random weights, BN affine randomised and running statistics from a batch: a plausible 2D net."""
    torch.manual_seed(0)
    net2d = net2d.double()
    with torch.no_grad():
        for m in net2d.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.momentum = None  # cumulative average: one batch sets the statistics
        net2d.train()(torch.randn(4, 3, size, size, dtype=torch.float64))
    return net2d.eval()


@pytest.fixture(scope="module")
def resnet50_2d():
    return calibrated(torchvision.models.resnet50())


@pytest.mark.parametrize("builder, padding", [(c2d_resnet, "zeros"), (i3d_resnet, "replicate"),
                                              (i3d3x3x3_resnet, "replicate")])
def test_identical_frames_give_the_2d_logits(resnet50_2d, builder, padding):
    """Exact with replicated temporal borders; C2D has no temporal conv, so its zero padding is exact too."""
    torch.manual_seed(1)
    model = builder(depth=50, num_classes=1000, nonlocal_blocks=5, temporal_padding=padding).double()
    report = inflate_from_2d(model, resnet50_2d.state_dict(), load_fc=True)
    assert "fc.weight" in report.loaded and any("nl_blocks" in k for k in report.left_initialised)
    image = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    clip = image[:, :, None].expand(-1, -1, 8, -1, -1)  # [1, 3, 8, 64, 64], all frames the same
    with torch.no_grad():
        want, got = resnet50_2d(image), model.eval()(clip)
    assert want.abs().max() > 1  # the logits are not trivially small
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-4)


def test_each_temporal_plane_is_the_2d_weight_over_t():
    net2d = tiny_2d()
    model = i3d_resnet(stage_depths=(1, 1, 1, 1), num_classes=10)
    inflate_from_2d(model, net2d.state_dict())
    assert model.conv1.weight.shape == (64, 3, 5, 7, 7)
    for t in range(5):
        torch.testing.assert_close(model.conv1.weight[:, :, t], net2d.conv1.weight / 5)
    assert model.layer1.blocks[0].conv1.weight.shape[2] == 3
    torch.testing.assert_close(model.layer1.blocks[0].conv1.weight.sum(2), net2d.layer1[0].conv1.weight)
    torch.testing.assert_close(model.layer3.blocks[0].bn2.running_var, net2d.layer3[0].bn2.running_var)
    torch.testing.assert_close(model.layer4.blocks[0].downsample[0].weight[:, :, 0],
                               net2d.layer4[0].downsample[0].weight)


def test_zero_temporal_padding_changes_only_the_border_frames():
    """Why the exactness test replicates borders: with zeros, the first/last output frames differ."""
    conv2d = tiny_2d().conv1.double()
    conv3d = nn.Conv3d(3, 64, (5, 7, 7), stride=(2, 2, 2), padding=(2, 3, 3), bias=False).double()
    with torch.no_grad():
        conv3d.weight.copy_(conv2d.weight[:, :, None].expand(-1, -1, 5, -1, -1) / 5)
        image = torch.randn(1, 3, 32, 32, dtype=torch.float64)
        out3d = conv3d(image[:, :, None].expand(-1, -1, 16, -1, -1))  # [1, 64, 8, 16, 16]
        out2d = conv2d(image)
    for t in range(8):  # output t sees input frames 2t-2 .. 2t+2: -2, -1 and 16 are zero padding
        assert torch.allclose(out3d[:, :, t], out2d) == (1 <= t <= 6), t


def test_report_and_classifier_handling():
    net2d = tiny_2d()  # 10 classes
    model = i3d_resnet(stage_depths=(1, 1, 1, 1), num_classes=5, nonlocal_placement=[[4, 0]])
    report = inflate_from_2d(model, net2d.state_dict(), load_fc=True)  # 10 classes: not loaded
    assert "fc.weight" in report.skipped and "fc.weight" in report.left_initialised
    assert sorted(k for k in report.left_initialised if "nl_blocks" not in k) == ["fc.bias", "fc.weight"]
    assert any(k.startswith("layer3.nl_blocks.0.") for k in report.left_initialised)
    assert len(report.loaded) == len(net2d.state_dict()) - 2
    assert inflate_from_2d(model, net2d.state_dict()).skipped["fc.weight"].startswith("classifier not requested")
    model = i3d_resnet(stage_depths=(1, 1, 1, 1), num_classes=10)
    assert "fc.weight" in inflate_from_2d(model, net2d.state_dict(), load_fc=True).loaded
    torch.testing.assert_close(model.fc.weight, net2d.fc.weight)


def test_weights_of_another_network_fail_naming_a_key():
    with torch.device("meta"):
        r50, r101 = torchvision.models.resnet50().state_dict(), torchvision.models.resnet101().state_dict()
        with pytest.raises(ValueError, match=r"lacks .* 'layer3\.6\..*another depth"):
            inflate_from_2d(i3d_resnet(depth=101), r50)
        with pytest.raises(ValueError, match=r"no place .* 'layer3\.6\."):
            inflate_from_2d(i3d_resnet(depth=50), r101)
        with pytest.raises(ValueError, match=r"'conv1.weight'.*\(64, 3, 7, 7\).*\(32, 3, 5, 7, 7\)"):
            inflate_from_2d(i3d_resnet(depth=50, width=32), r50)


def tiny_2d() -> nn.Module:
    """A torchvision ResNet with one bottleneck per stage: the 2D twin of stage_depths [1, 1, 1, 1]."""
    torch.manual_seed(2)
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10)


def test_pretrained_weights_load_from_a_path_and_a_file_uri(tmp_path):
    net2d = tiny_2d()
    path = tmp_path / "resnet.pt"
    torch.save(net2d.state_dict(), path)
    for source in (str(path), path.as_uri()):
        model = build_model(ModelConfig(arch="c2d", stage_depths=[1, 1, 1, 1]), num_classes=5)
        load_pretrained(model, source)
        torch.testing.assert_close(model.conv1.weight[:, :, 0], net2d.conv1.weight)
        assert model.fc.out_features == 5
    with pytest.raises(FileNotFoundError, match="no-such.pt"):
        load_pretrained(build_model(ModelConfig(), num_classes=5), str(tmp_path / "no-such.pt"))


def test_pretrained_weights_load_from_s3(s3_bucket):
    import io

    import boto3

    net2d = tiny_2d()
    buf = io.BytesIO()
    torch.save(net2d.state_dict(), buf)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="weights/r.pt", Body=buf.getvalue())
    model = build_model(ModelConfig(arch="i3d", stage_depths=[1, 1, 1, 1]), num_classes=5)
    load_pretrained(model, f"s3://{s3_bucket}/weights/r.pt")
    torch.testing.assert_close(model.conv1.weight.sum(2), net2d.conv1.weight)
